"""Intervals for quality scores, pure Python (no numpy or scipy: the tables load none of them).

- A score over n samples, each 0 or 1 (niah's found, RULER's string_match_all on a one-answer task): the Wilson 95 %
  score interval (good coverage at small n and near 0 or 1, where the normal interval fails).
- Fractional per-sample scores (string_match_all over 4 values, cwe's 10 words, averages over tasks): the percentile
  bootstrap over samples, BOOTSTRAP resamples from a fixed seed (so a table is the same on every run).
- A method's difference from vanilla on the same samples: the paired bootstrap of the mean difference (resampling
  the pairs, fixed seed). `excludes_zero` says the difference is measured at 95 % (the tables mark it).

`DEFAULT_SAMPLES` = 200: the smallest n whose Wilson 95 % interval around a score of 90 % lies within +-5 points on
both sides is 196 (the lower side is the longer one; the normal approximation's 1.96 * sqrt(0.09 / n) <= 0.05 gives
139, and Wilson's (high - low) / 2 <= 0.05 gives 141). RULER's default is 500 a task, kvpress's leaderboard ~50.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

Z95 = 1.959963984540054  # the 97.5 % normal quantile
BOOTSTRAP = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int
    method: str  # "wilson" | "bootstrap" | "paired-bootstrap"

    @property
    def half_width(self) -> float:
        return max(self.estimate - self.low, self.high - self.estimate)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion successes / n."""
    if n <= 0:
        raise ValueError("an interval needs at least one sample")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 of n (n of n) centre - spread (centre + spread) is 0 (1) exactly, but rounds to either side of it: an
    # interval must hold its own estimate.
    low = 0.0 if successes <= 0 else max(0.0, centre - spread)
    high = 1.0 if successes >= n else min(1.0, centre + spread)
    return low, high


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default 'linear' method)."""
    position = q * (len(sorted_values) - 1)
    lo = math.floor(position)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (position - lo)


def _bootstrap(groups: list[list[float]], resamples: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of the mean of group means, each group resampled on its own (stratified)."""
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        total = 0.0
        for g in groups:
            total += sum(rng.choices(g, k=len(g))) / len(g)
        means.append(total / len(groups))
    means.sort()
    return _percentile(means, 0.025), _percentile(means, 0.975)


def score_interval(scores: list[float], resamples: int = BOOTSTRAP, seed: int = SEED) -> Interval:
    """The mean score of one (task, method, context) with its 95 % interval: Wilson for 0/1 scores, else bootstrap."""
    if not scores:
        raise ValueError("an interval needs at least one sample")
    mean = sum(scores) / len(scores)
    if all(s in (0.0, 1.0) for s in scores):
        return Interval(mean, *wilson(sum(scores), len(scores)), len(scores), "wilson")
    return Interval(mean, *_bootstrap([scores], resamples, seed), len(scores), "bootstrap")


def average_interval(scores_by_task: list[list[float]], resamples: int = BOOTSTRAP, seed: int = SEED) -> Interval:
    """The mean over tasks of each task's mean score (RULER's average), bootstrapped within each task."""
    if not scores_by_task or not all(scores_by_task):
        raise ValueError("every task needs at least one sample")
    mean = sum(sum(g) / len(g) for g in scores_by_task) / len(scores_by_task)
    return Interval(mean, *_bootstrap(scores_by_task, resamples, seed), sum(map(len, scores_by_task)), "bootstrap")


def paired_difference(method: list[float], baseline: list[float], resamples: int = BOOTSTRAP, seed: int = SEED
                      ) -> Interval:
    """mean(method - baseline) over the same samples (index i of both lists is one sample), paired bootstrap."""
    return paired_average([method], [baseline], resamples, seed)


def paired_average(method: list[list[float]], baseline: list[list[float]], resamples: int = BOOTSTRAP,
                   seed: int = SEED) -> Interval:
    """The difference of the task-averaged scores, pairs resampled within each task (one list per task)."""
    if len(method) != len(baseline) or any(len(a) != len(b) for a, b in zip(method, baseline)):
        raise ValueError("a paired difference needs the same samples on both sides")
    groups = [[a - b for a, b in zip(ga, gb)] for ga, gb in zip(method, baseline)]
    if not groups or not all(groups):
        raise ValueError("a paired difference needs at least one pair per task")
    mean = sum(sum(g) / len(g) for g in groups) / len(groups)
    if all(len(set(g)) == 1 for g in groups):  # no spread: every resample gives the same mean
        return Interval(mean, mean, mean, sum(map(len, groups)), "paired-bootstrap")
    return Interval(mean, *_bootstrap(groups, resamples, seed), sum(map(len, groups)), "paired-bootstrap")


def samples_for(half_width: float = 0.05, score: float = 0.9) -> int:
    """The smallest n whose Wilson 95 % interval around `score` (n * score successes) is at most +-half_width."""
    n = 1
    while True:
        lo, hi = wilson(score * n, n)
        if max(score - lo, hi - score) <= half_width:
            return n
        n += 1


DEFAULT_SAMPLES = 200  # samples_for(0.05, 0.9) = 196, rounded up (tests/test_stats.py)
