"""Quality scores as the field reports them, from records: per task and per (method, context) the mean score with its
95 % interval, each method's difference from vanilla paired on the same samples, and the average over tasks (RULER's
average when the 11 synthetic tasks are there, as kvpress's leaderboard reports it). Pure functions of
BenchmarkResult (intervals from stats.py), below the report, the plots and the commands.

A sample is one answer: (context, depth, prompt_id, question_index) of one task; a method and vanilla are paired on
the samples both answered without error. Failed answers are counted apart, never as zeros.
"""

from __future__ import annotations

import statistics

from dataclasses import dataclass

from kvcompress import stats
from kvcompress.results import BenchmarkResult
from kvcompress.tasks import ruler

BASELINE = "vanilla"


def sample_key(r: BenchmarkResult) -> tuple:
    return (r.task_family or "niah", r.target_tokens, r.depth, r.prompt_id, r.question_index)


@dataclass
class QualityRow:
    task: str  # a task family, or "average" / "RULER average" over the tasks
    method: str
    context: int
    score: stats.Interval
    errors: int = 0
    vs_vanilla: stats.Interval | None = None  # method - vanilla on the same samples
    tasks: int = 1


def _scores(records: list[BenchmarkResult]) -> dict[tuple, float]:
    return {sample_key(r): float(r.score) for r in records if r.error is None and r.score is not None}


def quality_rows(records: list[BenchmarkResult]) -> list[QualityRow]:
    """One row per (task, method, context) in first-seen order, then one average row per (method, context)."""
    groups: dict[tuple, list[BenchmarkResult]] = {}
    for r in records:
        groups.setdefault((r.task_family or "niah", r.method, r.target_tokens), []).append(r)
    scored = {key: _scores(rs) for key, rs in groups.items()}
    rows = []
    for (task, method, context), rs in groups.items():
        mine = scored[(task, method, context)]
        if not mine:
            continue
        row = QualityRow(task, method, context, stats.score_interval(list(mine.values())),
                         errors=sum(r.error is not None for r in rs))
        base = scored.get((task, BASELINE, context), {})
        pairs = [k for k in mine if k in base]
        if method != BASELINE and pairs:
            row.vs_vanilla = stats.paired_difference([mine[k] for k in pairs], [base[k] for k in pairs])
        rows.append(row)
    return rows + average_rows(scored)


def average_rows(scored: dict[tuple, dict[tuple, float]]) -> list[QualityRow]:
    """Per (method, context): the mean over tasks of each task's mean (every task weighs the same, as RULER's)."""
    tasks = list(dict.fromkeys(t for t, _, _ in scored))
    if len(tasks) < 2:
        return []
    label = "RULER average" if set(ruler.TASKS) <= set(tasks) <= set(ruler.TASKS) | set(ruler.QA) else "average"
    rows = []
    for method, context in dict.fromkeys((m, c) for _, m, c in scored):
        mine = [scored.get((t, method, context), {}) for t in tasks]
        if not all(mine):
            continue  # a task without answers: no average (it would not be the suite's)
        row = QualityRow(label, method, context, stats.average_interval([list(g.values()) for g in mine]),
                         tasks=len(tasks))
        base = [scored.get((t, BASELINE, context), {}) for t in tasks]
        pairs = [[k for k in g if k in b] for g, b in zip(mine, base)]
        if method != BASELINE and all(pairs):
            row.vs_vanilla = stats.paired_average([[g[k] for k in p] for g, p in zip(mine, pairs)],
                                                  [[b[k] for k in p] for b, p in zip(base, pairs)])
        rows.append(row)
    return rows


def pareto_points(records: list[BenchmarkResult], kv_bytes) -> list[dict]:
    """Per (method, context): the task-averaged score with its 95 % interval and `kv_bytes(records)` (the median KV
    bytes held, from the caller): the points of plots.accuracy_vs_kv with their error bars."""
    points = []
    rows = quality_rows(records)
    averaged = {(r.method, r.context) for r in rows if r.tasks > 1}
    for row in rows:
        if row.tasks == 1 and (row.method, row.context) in averaged:
            continue  # several tasks: the average is the point
        measured = [r for r in records if r.method == row.method and r.target_tokens == row.context
                    and r.error is None]
        held = kv_bytes(measured)
        if held is not None:
            live = [r.kv_live_bytes for r in measured if r.kv_live_bytes is not None]
            points.append({"method": row.method, "target_tokens": row.context, "kv_bytes": held,
                           "kv_live_bytes": statistics.median(live) if live else None,
                           "score": row.score.estimate, "low": row.score.low, "high": row.score.high,
                           "n": row.score.n})
    return points
