"""Plain prompts for side-by-side runs (test_dms_inference.py): the built-in set, or the user's own from a file.

A prompts file is JSON Lines, one object per line: {"prompt": "...", "id": "optional-name", "thinking": false}
(a line that is not JSON is taken as one prompt, thinking off). Blank lines and lines starting with '#' are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from kvcompress.errors import UserError
from kvcompress.tasks.cell import Cell

CHAT = "In two sentences: what does the KV cache of a transformer language model store, and why does it grow?"
REASONING = ("A train leaves at 3:40 pm and arrives at 6:15 pm the same day; it stopped twice for 7 minutes each. "
             "How many minutes was it moving? Give the final answer as a number.")


def builtin_cells(contexts: list[int], seed: int, haystack: str) -> list[Cell]:
    """A short chat question, a needle prompt per context length, and a reasoning prompt with thinking on."""
    return ([Cell(None, text=CHAT, prompt_id="chat")]
            + [Cell(n, depth=0.5, needle_kind="single", needle_seed=seed, haystack=haystack, prompt_id=f"needle-{n}")
               for n in contexts]
            + [Cell(None, text=REASONING, thinking=True, prompt_id="reasoning")])


def load_cells(path: Path) -> list[Cell]:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"--prompts {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    cells, ids = [], set()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = _entry(line, path, number)
        prompt_id = str(entry.get("id") or f"prompt-{len(cells) + 1}")
        if prompt_id in ids:
            raise UserError(f"--prompts {path}:{number}: id {prompt_id!r} is used twice")
        ids.add(prompt_id)
        cells.append(Cell(None, text=entry["prompt"], thinking=bool(entry.get("thinking", False)), prompt_id=prompt_id))
    if not cells:
        raise UserError(f"--prompts {path}: no prompts in it")
    return cells


def _entry(line: str, path: Path, number: int) -> dict:
    if not line.startswith("{"):
        return {"prompt": line}
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"--prompts {path}:{number}: not valid JSON ({exc.msg})") from None
    if not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        raise UserError(f"--prompts {path}:{number}: needs a non-empty \"prompt\" string")
    unknown = set(entry) - {"prompt", "id", "thinking"}
    if unknown:
        raise UserError(f"--prompts {path}:{number}: unknown key {sorted(unknown)[0]!r} (use prompt, id, thinking)")
    if not isinstance(entry.get("thinking", False), bool):  # "false" as a string would turn thinking on
        raise UserError(f"--prompts {path}:{number}: \"thinking\" must be true or false (JSON booleans), got "
                        f"{json.dumps(entry['thinking'])}")
    return entry
