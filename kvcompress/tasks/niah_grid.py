"""The long-context grid of test_long_context.py: cells for contexts x depths x trials, and accuracy per cell.

A trial is one needle (its own key and values, from its own seed), placed at every depth of every context length,
so a row of the heatmap compares placements of the same needle. Accuracy per cell is a count: found / trials.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from kvcompress.errors import UserError
from kvcompress.readings import by_method
from kvcompress.results import BenchmarkResult, median_kv_bytes
from kvcompress.tasks import families, niah
from kvcompress.tasks.cell import Cell

DEFAULT_DEPTHS = "0.05,0.5,0.95"
THINKING_BUDGET = 4096  # default --max-new-tokens with --thinking: Qwen3's think blocks run to a few thousand tokens
MIN_THINKING_BUDGET = 1024  # below this a think block is routinely cut off and the cell measures the budget instead


def parse_depths(text: str) -> list[float]:
    """'0.05,0.5,0.95' or '5%,50%,95%' -> sorted distinct fractions in [0, 1]."""
    depths = []
    for part in filter(None, (s.strip() for s in text.split(","))):
        match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(%?)", part)
        if not match:
            raise UserError(f"depth {part!r} is not a number (write 0.5 or 50%)")
        value = float(match[1]) / (100 if match[2] else 1)
        if not 0 <= value <= 1:
            raise UserError(f"depth {part!r} is outside the context (use 0..1 or 0%..100%)")
        depths.append(round(value, 6))
    if not depths:
        raise UserError("--depths is empty")
    return sorted(set(depths))


def prompt_id(kind: str, count: int, haystack: str, thinking: bool, trial: int) -> str:
    """Everything that shapes a prompt beyond its length, depth and needle values (records' identity uses it)."""
    needles = f"{kind}x{count}" if kind in ("multikey", "multivalue") else kind
    return f"niah/{needles}/{haystack}/{'think' if thinking else 'no-think'}/trial{trial}"


def task_prompt_id(family: str, questions: int, haystack: str | None, thinking: bool, trial: int) -> str:
    """A tasks/families.py context; with --questions K each record adds /q<i>."""
    name = f"{family}x{questions}q" if questions > 1 else family
    haystack = haystack or ("ruler" if family in families.RULER.split(",") else "own-list")  # RULER's own haystacks
    return f"{name}/{haystack}/{'think' if thinking else 'no-think'}/trial{trial}"


def check_counts(trials: int, questions: int) -> None:
    """--trials and --questions, checked before any model (and again by grid_cells, for other callers)."""
    if trials < 1:
        raise UserError("--trials must be at least 1")
    if questions < 1:
        raise UserError("--questions must be at least 1")


def grid_cells(contexts: list[int], depths: list[float], trials: int, *, kind: str, count: int, haystack: str,
               thinking: bool, seed: int, tasks: tuple[str, ...] = ("niah",), questions: int = 1) -> list[Cell]:
    """Cells for every task x context x depth x trial (cwe and fwe have no haystack, hence one row, depth None)."""
    check_counts(trials, questions)
    niah.make_needle(kind, seed, count)  # a bad kind or count fails now, before any model is loaded
    cells = []
    for family in tasks:
        if family == "niah" and questions == 1:
            cells += [Cell(n, depth=d, needle_kind=kind, needle_seed=seed * 10_000 + t, needle_count=count,
                           haystack=haystack, thinking=thinking, prompt_id=prompt_id(kind, count, haystack, thinking, t))
                      for n in contexts for d in depths for t in range(trials)]
            continue
        families.make(family, seed, questions)  # --questions out of range fails now
        free = family in families.HAYSTACK_FREE
        cells += [Cell(n, depth=None if free else d, needle_seed=seed * 10_000 + t, haystack=haystack,
                       thinking=thinking, task_family=family, questions=questions,
                       prompt_id=task_prompt_id(family, questions, None if free else haystack, thinking, t))
                  for n in contexts for d in ([None] if free else depths) for t in range(trials)]
    return cells


def select(records: list[BenchmarkResult], cells: list[Cell], methods: list[str]) -> list[BenchmarkResult]:
    """The records of this grid (a resumed file may also hold other grids' records)."""
    wanted = {(m, c.target_tokens, c.depth, c.prompt_id) for m in methods for c in cells}
    return [r for r in records if (r.method, r.target_tokens, r.depth, _context_id(r.prompt_id)) in wanted]


def _context_id(prompt_id: str | None) -> str | None:
    """The cell's prompt_id of a record (a --questions record adds /q<i>)."""
    return re.sub(r"/q\d+$", "", prompt_id) if prompt_id else prompt_id


@dataclass
class CellSummary:
    """One heatmap cell: a method at one context length and depth, over its trials."""

    method: str
    target_tokens: int
    depth: float | None
    task_family: str = "niah"
    records: list[BenchmarkResult] = field(default_factory=list)

    @property
    def mean_score(self) -> float | None:
        """RULER's score (fraction of expected strings named) averaged over the trials; niah: values found."""
        scores = [r.score for r in self.measured if r.score is not None]
        return sum(scores) / len(scores) if scores else None

    @property
    def measured(self) -> list[BenchmarkResult]:
        return [r for r in self.records if r.error is None]

    @property
    def found(self) -> int:
        return sum(bool(r.correct) for r in self.measured)

    @property
    def total(self) -> int:
        return len(self.measured)

    @property
    def errors(self) -> int:
        return len(self.records) - self.total

    @property
    def accuracy(self) -> float | None:
        return self.found / self.total if self.total else None

    @property
    def counts(self) -> str:
        return f"{self.found}/{self.total}"

    def median(self, name: str) -> float | None:
        values = [getattr(r, name) for r in self.measured if getattr(r, name) is not None]
        return statistics.median(values) if values else None


def summarize(records: list[BenchmarkResult]) -> list[CellSummary]:
    """Group by (task, method, context, depth); tasks and methods in the order they first appear, then by length
    and depth."""
    cells: dict[tuple, CellSummary] = {}
    for r in records:
        key = (r.method, r.target_tokens, r.depth, r.task_family or "niah")
        cells.setdefault(key, CellSummary(*key)).records.append(r)
    order = {m: i for i, m in enumerate(dict.fromkeys(r.method for r in records))}
    tasks = {t: i for i, t in enumerate(dict.fromkeys(r.task_family or "niah" for r in records))}
    return sorted(cells.values(), key=lambda c: (tasks[c.task_family], order[c.method], c.target_tokens,
                                                 -1 if c.depth is None else c.depth))


def by_task(summaries: list[CellSummary]) -> dict[str, list[CellSummary]]:
    groups: dict[str, list[CellSummary]] = {}
    for s in summaries:
        groups.setdefault(s.task_family, []).append(s)
    return groups


def overall(summaries: list[CellSummary]) -> dict[str, tuple[int, int, int]]:
    """method -> (found, measured, errors) over the whole grid."""
    return {m: (sum(s.found for s in cells), sum(s.total for s in cells), sum(s.errors for s in cells))
            for m, cells in by_method(summaries).items()}


def pareto_points(summaries: list[CellSummary]) -> list[dict]:
    """Per method and context length: median KV bytes held and live (after the context, every method at the same
    positions) and mean score over every task, trial and question."""
    groups: dict[tuple, list[BenchmarkResult]] = {}
    for s in summaries:
        groups.setdefault((s.method, s.target_tokens), []).extend(s.measured)
    points = []
    for (method, n), records in groups.items():
        held = median_kv_bytes(records)
        scores = [r.score for r in records if r.score is not None]
        if held is not None and scores:
            points.append({"method": method, "target_tokens": n, "kv_bytes": held,
                           "kv_live_bytes": median_kv_bytes(records, "kv_live_bytes"),
                           "score": sum(scores) / len(scores), "n": len(scores)})
    return points
