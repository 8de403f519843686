"""kvcompress/stats.py against references computed here another way, in float64."""

import math
import random
import statistics

import pytest

from kvcompress import stats


def _wilson_by_quadratic(k, n, z=1.959963984540054):
    """The p whose normal test just rejects: (k/n - p)^2 = z^2 p (1 - p) / n, solved as a quadratic in p."""
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize("k,n", [(9, 10), (0, 20), (20, 20), (135, 150), (1, 3), (50, 100)])
def test_wilson_equals_the_root_of_the_score_test(k, n):
    assert stats.wilson(k, n) == pytest.approx(_wilson_by_quadratic(k, n), abs=1e-12)


def test_wilson_ends_hold_their_estimate_exactly():
    """At 0 of n the interval starts at 0 and at n of n it ends at 1, exactly: the closed forms are [0, z2 / (n + z2)]
    and [n / (n + z2), 1]. Rounding once left 0 of 6 at [2.8e-17, 0.39], an interval without its own estimate, and
    the accuracy-vs-KV plot then failed the whole --questions run (a negative error bar)."""
    z2 = 1.959963984540054 ** 2
    for n in range(1, 301):
        assert stats.wilson(0, n) == (0.0, pytest.approx(z2 / (n + z2), abs=1e-12)), n
        assert stats.wilson(n, n) == (pytest.approx(n / (n + z2), abs=1e-12), 1.0), n
        for k in range(n + 1):
            lo, hi = stats.wilson(k, n)
            assert lo <= k / n <= hi, (k, n)


def test_wilson_by_hand():
    # 9 of 10, z = 1.96 (z^2 = 3.8416): centre (0.9 + 3.8416 / 20) / (1 + 3.8416 / 10) = 1.09208 / 1.38416 = 0.788984,
    # spread 1.96 * sqrt(0.9 * 0.1 / 10 + 3.8416 / 400) / 1.38416 = 1.96 * sqrt(0.018604) / 1.38416 = 0.193140
    lo, hi = stats.wilson(9, 10, z=1.96)
    assert lo == pytest.approx(0.788984 - 0.193140, abs=2e-6) and hi == pytest.approx(0.788984 + 0.193140, abs=2e-6)


def test_default_samples_give_plus_minus_five_points_at_ninety():
    n = stats.samples_for(0.05, 0.9)
    lo, hi = stats.wilson(0.9 * n, n)
    assert max(0.9 - lo, hi - 0.9) <= 0.05
    lo, hi = stats.wilson(0.9 * (n - 1), n - 1)
    assert max(0.9 - lo, hi - 0.9) > 0.05
    assert n == 196 and stats.DEFAULT_SAMPLES >= n


def test_binary_scores_take_wilson_fractional_take_the_bootstrap():
    it = stats.score_interval([1.0] * 45 + [0.0] * 5)
    assert it.method == "wilson" and (it.low, it.high) == stats.wilson(45, 50) and it.estimate == 0.9
    scores = [random.Random(1).choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(400)]
    it = stats.score_interval(scores)
    assert it.method == "bootstrap"
    se = statistics.pstdev(scores) / math.sqrt(len(scores))  # large n: the bootstrap is the normal interval
    assert it.low == pytest.approx(it.estimate - 1.96 * se, abs=0.01)
    assert it.high == pytest.approx(it.estimate + 1.96 * se, abs=0.01)
    assert stats.score_interval(scores) == it  # fixed seed: the same table every run


def test_paired_difference_against_the_normal_reference_and_by_hand():
    base = [1.0] * 90 + [0.0] * 10
    same = stats.paired_difference(base, base)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero
    worse = base[:]
    for i in range(0, 60, 3):  # 20 samples lost, none gained: the difference is -0.2 on every resample's average
        worse[i] = 0.0
    d = stats.paired_difference(worse, base)
    diffs = [a - b for a, b in zip(worse, base)]
    se = statistics.pstdev(diffs) / math.sqrt(len(diffs))  # sqrt(0.2 * 0.8 / 100) = 0.04
    assert d.estimate == pytest.approx(-0.2) and se == pytest.approx(0.04)
    assert d.low == pytest.approx(-0.2 - 1.96 * se, abs=0.015) and d.high == pytest.approx(-0.2 + 1.96 * se, abs=0.015)
    assert d.excludes_zero and d.high <= -0.1
    mixed = base[:]
    mixed[0], mixed[95] = 0.0, 1.0  # one lost, one gained: no difference measured
    assert not stats.paired_difference(mixed, base).excludes_zero
    with pytest.raises(ValueError):
        stats.paired_difference([1.0], [1.0, 0.0])


def test_average_over_tasks_is_the_mean_of_task_means():
    tasks = [[1.0, 1.0, 0.0, 1.0], [0.5, 0.25], [1.0] * 10]
    it = stats.average_interval(tasks)
    assert it.estimate == pytest.approx((0.75 + 0.375 + 1.0) / 3)
    assert it.low <= it.estimate <= it.high and it.n == 16
    d = stats.paired_average(tasks, tasks)
    assert d.estimate == 0.0 and not d.excludes_zero
