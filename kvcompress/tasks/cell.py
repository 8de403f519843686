"""A cell of a run grid: one prompt, described by parameters so any process can rebuild it token for token."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from kvcompress.errors import UserError
from kvcompress.prompt import Prompt, token_ids
from kvcompress.tasks import contract, families, niah


@dataclass
class Cell:
    target_tokens: int
    depth: float = 0.5
    needle_kind: str = "single"
    needle_seed: int = 0
    needle_count: int = 4
    haystack: str = "noise"
    thinking: bool = False
    text: str | None = None  # a plain user prompt instead of a needle prompt (test_dms_inference.py)
    prompt_id: str | None = None
    task_family: str = "niah"  # tasks/families.py; "niah" with one question is niah.py's needle
    questions: int = 1  # > 1: questions asked over one compressed context (prompt.meta["questions"])

    @property
    def uses_contract(self) -> bool:
        return self.text is None and (self.task_family != "niah" or self.questions > 1)

    def task(self):
        """The needle or task this cell asks about (rebuilt from its seed), None for a plain prompt."""
        if self.text is not None:
            return None
        if self.uses_contract:
            return families.make(self.task_family, self.needle_seed, self.questions, self.target_tokens)
        return niah.make_needle(self.needle_kind, self.needle_seed, self.needle_count)

    def build(self, tokenizer) -> tuple[Prompt, niah.Needle | None]:
        if self.uses_contract:
            task = self.task()
            built = contract.build_prompt(tokenizer, self.target_tokens, self.depth, task, self.haystack,
                                          self.thinking)
            built.prompt.meta["questions"] = built.question_ids
            return built.prompt, task
        if self.text is not None:
            context_ids, question_ids = niah.render(tokenizer, self.text, "", self.thinking)
            return Prompt(token_ids(context_ids), token_ids(question_ids)), None
        needle = niah.make_needle(self.needle_kind, self.needle_seed, self.needle_count)
        built = niah.build_prompt(tokenizer, self.target_tokens, self.depth, needle, self.haystack, self.thinking)
        return built.prompt, needle

    def build_batch(self, tokenizer, batch: int) -> tuple[list[Prompt], list[niah.Needle | None]]:
        """`batch` prompts of this cell's length, sequence b with needle seed needle_seed + b (distinct keys and
        values): what sequence b generates in a batch equals this cell run alone with --seed needle_seed + b."""
        built = [replace(self, needle_seed=self.needle_seed + b).build(tokenizer) for b in range(batch)]
        return [p for p, _ in built], [n for _, n in built]

    def to_dict(self) -> dict:
        return asdict(self)


def build_all(cells: list[Cell], tokenizer) -> list[tuple[Prompt, niah.Needle | None]]:
    """Every cell's prompt and needle, in order. One cell of each (task, length) is built first, so that every
    task too long for a context it is asked at is named in one line before the rest are built: not the first one
    alone, each after its own run (the byte tokenizer's ruler_vt needs ~2.2K tokens, its ruler_cwe ~7K)."""
    built, seen, too_small = {}, set(), []
    for index, cell in enumerate(cells):
        if (cell.task_family, cell.target_tokens) in seen:
            continue
        seen.add((cell.task_family, cell.target_tokens))
        try:
            built[index] = cell.build(tokenizer)
        except contract.ContextTooSmall as exc:
            too_small.append(exc)
    if too_small:
        by_family = {}
        for exc in too_small:
            by_family.setdefault(exc.family, []).append(exc)
        raise UserError("contexts too short for these tasks on this tokenizer: " + "; ".join(
            _needs(family, misses) for family, misses in by_family.items())
            + ": give longer --contexts or leave them out of --tasks")
    return [built[index] if index in built else cell.build(tokenizer) for index, cell in enumerate(cells)]


def _needs(family: str, misses: list[contract.ContextTooSmall]) -> str:
    """'ruler_vt needs at least 2,159 tokens (1,024 and 2,048 asked)'; where a task's configuration grows with the
    context (RULER's cwe), what each asked length needs."""
    if len({m.needed for m in misses}) == 1:
        return (f"{family} needs at least {misses[0].needed:,} tokens "
                f"({' and '.join(f'{m.asked:,}' for m in misses)} asked)")
    return f"{family} needs at least " + " and ".join(f"{m.needed:,} tokens at {m.asked:,}" for m in misses)
