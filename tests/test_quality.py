"""The quality output (quality.py, report.print_quality, samples.py, the Pareto error bars) from records as the
long-context path writes them, checked against sums done here."""

import json

from kvcompress import plots, quality, report, samples, stats
from kvcompress.results import BenchmarkResult
from kvcompress.tasks import ruler


def _record(method, task, trial, score, context=1024, error=None, kv=1000):
    return BenchmarkResult(model="m", weights="pretrained", method=method, task_family=task, target_tokens=context,
                           prompt_id=f"{task}/own-list/no-think/trial{trial}", score=None if error else score,
                           correct=None if error else score == 1.0, expected=["7"], answer=f"says {score}",
                           error=error, kv_cache_bytes=None if error else kv, scorer="string_match_all")


def _grid(tasks, n=40):
    """vanilla right on every sample; press right on 3 in 4 of task 0, on every sample of the others."""
    records = []
    for t_i, task in enumerate(tasks):
        for i in range(n):
            records.append(_record("vanilla", task, i, 1.0, kv=1000))
            records.append(_record("press@0.875", task, i, 0.0 if (t_i == 0 and i % 4 == 0) else 1.0, kv=125))
    return records


def test_rows_per_task_and_the_ruler_average_with_paired_differences():
    records = _grid(list(ruler.TASKS))
    records.append(_record("press@0.875", "ruler_cwe", 99, 0.0, error="CUDA OOM"))
    rows = quality.quality_rows(records)
    first = next(r for r in rows if r.task == "niah_single_1" and r.method == "press@0.875")
    assert first.score.estimate == 0.75 and first.score.method == "wilson"
    assert (first.score.low, first.score.high) == stats.wilson(30, 40)
    assert first.vs_vanilla.estimate == -0.25 and first.vs_vanilla.excludes_zero
    other = next(r for r in rows if r.task == "niah_single_2" and r.method == "press@0.875")
    assert other.vs_vanilla.estimate == 0.0 and not other.vs_vanilla.excludes_zero
    cwe = next(r for r in rows if r.task == "ruler_cwe" and r.method == "press@0.875")
    assert cwe.errors == 1 and cwe.score.n == 40  # a failure is counted apart, not scored as a zero
    avg = next(r for r in rows if r.task == "RULER average" and r.method == "press@0.875")
    assert avg.tasks == 11 and avg.score.estimate == (0.75 + 10) / 11
    assert avg.vs_vanilla.estimate == -0.25 / 11 and avg.vs_vanilla.excludes_zero


def test_pairs_are_the_samples_both_answered():
    records = [_record("vanilla", "vt", i, 1.0) for i in range(10)] + \
        [_record("knorm@0.5", "vt", i, 0.0) for i in range(5, 15)]
    row = next(r for r in quality.quality_rows(records) if r.method == "knorm@0.5")
    assert row.score.n == 10 and row.vs_vanilla.n == 5 and row.vs_vanilla.estimate == -1.0


def test_table_marks_measured_differences(capsys):
    rows = quality.quality_rows(_grid(["niah_single_1", "ruler_vt"]))
    report.print_quality(rows, "t")
    out = capsys.readouterr().out
    assert "75.0 [" in out and "-25.0 [" in out and " *" in out and "average (2 tasks)" in out
    assert "Wilson" in out and "paired bootstrap" in out


def test_samples_file_holds_every_answer(tmp_path):
    records = _grid(["niah_single_1"], n=3) + [_record("x", "niah_single_1", 0, 0.0, error="boom")]
    path = samples.write_samples(records, samples.samples_path(tmp_path / "run.json"))
    assert path.name == "run-samples.jsonl"
    lines = samples.read_samples(path)
    assert len(lines) == 7 and lines[0]["prediction"] == "says 1.0" and lines[0]["expected"] == ["7"]
    assert lines[-1]["error"] == "boom" and lines[-1]["score"] is None
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_pareto_points_carry_their_intervals(tmp_path):
    records = _grid(["niah_single_1", "ruler_vt"])
    points = quality.pareto_points(records, lambda rs: float(sorted(r.kv_cache_bytes for r in rs)[len(rs) // 2]))
    press = next(p for p in points if p["method"] == "press@0.875")
    assert press["kv_bytes"] == 125 and press["score"] == (0.75 + 1.0) / 2 and press["low"] < press["score"]
    assert len(points) == 2  # several tasks: one averaged point per (method, context)
    path = plots.accuracy_vs_kv(points, tmp_path / "p.png", "t")
    assert path.stat().st_size > 0
