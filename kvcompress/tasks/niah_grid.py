"""The long-context grid of test_long_context.py: cells for contexts x depths x trials, and accuracy per cell.

A trial is one needle (its own key and values, from its own seed), placed at every depth of every context length,
so a row of the heatmap compares placements of the same needle. Accuracy per cell is a count: found / trials.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from kvcompress.errors import UserError
from kvcompress.results import BenchmarkResult
from kvcompress.tasks import niah
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


def grid_cells(contexts: list[int], depths: list[float], trials: int, *, kind: str, count: int, haystack: str,
               thinking: bool, seed: int) -> list[Cell]:
    if trials < 1:
        raise UserError("--trials must be at least 1")
    niah.make_needle(kind, seed, count)  # a bad kind or count fails now, before any model is loaded
    return [Cell(n, depth=d, needle_kind=kind, needle_seed=seed * 10_000 + t, needle_count=count, haystack=haystack,
                 thinking=thinking, prompt_id=prompt_id(kind, count, haystack, thinking, t))
            for n in contexts for d in depths for t in range(trials)]


def select(records: list[BenchmarkResult], cells: list[Cell], methods: list[str]) -> list[BenchmarkResult]:
    """The records of this grid (a resumed file may also hold other grids' records)."""
    wanted = {(m, c.target_tokens, c.depth, c.prompt_id) for m in methods for c in cells}
    return [r for r in records if (r.method, r.target_tokens, r.depth, r.prompt_id) in wanted]


@dataclass
class CellSummary:
    """One heatmap cell: a method at one context length and depth, over its trials."""

    method: str
    target_tokens: int
    depth: float
    records: list[BenchmarkResult] = field(default_factory=list)

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
    """Group by (method, context, depth); methods in the order they first appear, then by length and depth."""
    cells: dict[tuple, CellSummary] = {}
    for r in records:
        key = (r.method, r.target_tokens, r.depth)
        cells.setdefault(key, CellSummary(*key)).records.append(r)
    order = {m: i for i, m in enumerate(dict.fromkeys(r.method for r in records))}
    return sorted(cells.values(), key=lambda c: (order[c.method], c.target_tokens, c.depth))


def by_method(summaries: list[CellSummary]) -> dict[str, list[CellSummary]]:
    groups: dict[str, list[CellSummary]] = {}
    for s in summaries:
        groups.setdefault(s.method, []).append(s)
    return groups


def overall(summaries: list[CellSummary]) -> dict[str, tuple[int, int, int]]:
    """method -> (found, measured, errors) over the whole grid."""
    return {m: (sum(s.found for s in cells), sum(s.total for s in cells), sum(s.errors for s in cells))
            for m, cells in by_method(summaries).items()}
