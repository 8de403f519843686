"""The samples file: every answer's prediction, expected strings and score, one JSON object a line, beside the
result file (`<stem>-samples.jsonl`, like lm-eval's samples file), so a reader can go through the misses.

Rewritten whole and atomically from the records (the result file stays the source of truth and resumes).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from kvcompress.results import BenchmarkResult

FIELDS = ("method", "task_family", "target_tokens", "depth", "prompt_id", "question_index", "needle", "scorer",
          "expected", "answer", "score", "correct", "chance", "input_tokens", "answer_tokens", "error")


def samples_path(result_path: Path) -> Path:
    result_path = Path(result_path)
    return result_path.with_name(f"{result_path.stem}-samples.jsonl")


def sample(r: BenchmarkResult) -> dict:
    """One answer: what was asked (task, context, prompt), the prediction, the expected strings and the score."""
    out = {name: getattr(r, name) for name in FIELDS}
    out["prediction"] = out.pop("answer")
    return out


def write_samples(records: list[BenchmarkResult], path: Path) -> Path:
    """Every record that carries an answer to a task (graded, or failed), in record order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            for r in records:
                if r.score is not None or r.expected is not None or r.error is not None:
                    f.write(json.dumps(sample(r), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_samples(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
