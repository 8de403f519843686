"""test_long_context.py's quality mode as a user runs it (tiny model): the same greedy answers and KV figures as the
measured path, the same answers whatever the answer batch, per-sample resume, and quality records that say what
they are (run/quality.py)."""

import json

import pytest

import test_long_context
from conftest import one_line_error

GRID = ["--preset", "tiny", "--tasks", "niah,vt", "--contexts", "1024", "--samples", "2", "--max-new-tokens", "8",
        "--methods", "vanilla,knorm@0.5,streaming_llm@0.875,dms-8x"]


def run(path, *extra):
    assert test_long_context.main(GRID + ["--out", str(path), *extra]) == 0
    data = json.loads(path.read_text())
    return data, {(r["method"], r["prompt_id"], r["depth"]): r for r in data["results"]}


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    return run(tmp_path_factory.mktemp("quality") / "q.json")


def test_time_left_comes_from_whole_chunks_after_the_first(monkeypatch):
    """The first chunk pays the compiles and every method's shared prefill comes at a chunk's start: the time left is
    not guessed before a chunk ends, then taken from the first chunk, then from the chunks after it (before: the
    rate since the start, so a 6-minute RULER 4K run said "1h13m left" after its first batch)."""
    from kvcompress.run import quality as q

    now = [0.0]
    monkeypatch.setattr(q.time, "monotonic", lambda: now[0])
    state = q.Progress(0, 100, start=0.0)
    now[0] = 10.0
    state.count(10, 10)
    assert state.line() == "1.0 answers/s, time left after the first chunk"
    now[0] = 20.0
    state.count(10, 10)
    state.chunk_done()  # 20 answers in 20 s, the warm-up included
    now[0] = 25.0
    state.count(10, 10)
    assert state.line().endswith("1m10s left")  # 70 left at the first chunk's 1 answer/s
    now[0] = 30.0
    state.count(10, 10)
    state.chunk_done()  # the second chunk: 20 answers in 10 s
    assert state.line() == "1.3 answers/s, 0m30s left"  # 60 left at 2 answers/s; the shown rate is the run's
    finished = q.Progress(0, 10, start=0.0)
    finished.count(10, 10)  # a run of one chunk, its last line
    assert finished.line().endswith(" 0m00s left")


def test_check_holds_each_shared_prefill_against_the_flop_ideal(quality):
    """Issue 23's 32K target asks for the prefill per sample against the FLOP ideal: the header counts the shared
    prefills per context length (one per sample whose methods joined one; dms-8x runs its own), and `check` divides
    them out, summed over the processes of a resumed run."""
    from kvcompress.commands import checks
    from kvcompress.results import BenchmarkResult

    data, records = quality
    run = data["run"]
    joined = {r["prompt_id"]: r["context_tokens"] for r in records.values() if r["shared_prefill"]}
    tally = run["quality"]["shared_prefills"]["1024"]
    assert tally["count"] == len(joined) == 4 and tally["context_tokens"] == sum(joined.values())
    assert 0 < tally["seconds"] <= run["quality"]["phases_s"]["shared prefill"] + 1e-3
    earlier = {**run["quality"], "shared_prefills": {"1024": {"count": 2, "context_tokens": 1800, "seconds": 1.0}}}
    resumed = {**run, "quality": {**run["quality"], "earlier": [earlier]}}
    results = [BenchmarkResult.from_dict(r) for r in data["results"]]
    found = [c for c in checks.run_checks(resumed, results, flops=1e12, bandwidth=1e12, hardware=True)
             if c.name.startswith("4. Shared prefill")]
    count, tokens, seconds = 4 + 2, tally["context_tokens"] + 1800, tally["seconds"] + 1.0
    ideal = sum(checks.prefill_flops(run["architecture"], round(tokens / count))) / 1e12
    assert found and found[0].lines == [
        f"1024: {count} shared prefills of {tokens / count:,.0f} context tokens on average, {seconds / count:.3f} s "
        f"each (the presses' scoring included); ideal {ideal:.3f} s = x{seconds / count / ideal:.2f}"]


def test_quality_records_say_what_they_are(quality):
    data, records = quality
    assert len(records) == 4 * 4 and all(r["error"] is None for r in records.values())
    assert data["run"]["mode"] == "quality" and data["run"]["quality"]["answers"] == 16
    # the decode's time, split at the engine's marks: its parts add up to it (each a lap of the same clock; the
    # header rounds each to the millisecond)
    phases = data["run"]["quality"]["phases_s"]
    parts = [phases[f"answers: decode: {p}"] for p in ("load", "first step", "steps")]
    assert all(p > 0 for p in parts) and sum(parts) - 0.003 <= phases["answers: decode"] <= sum(parts) + 0.05
    for r in records.values():
        assert r["run_mode"] == "quality" and r["ttft_s"] is None and r["tpot_ms"] is None
        assert r["peak_mem_prefill_bytes"] is None and r["repeats"] == 1
        assert r["shared_prefill"] == (r["method"] != "dms-8x")
        assert r["answer_batch"] == (1 if r["method"] == "dms-8x" else 4)  # niah and vt share length and budget
        assert r["kv_cache_bytes"] > 0 and r["score"] is not None


def test_quality_answers_equal_the_measured_paths(quality, tmp_path):
    _, fast = quality
    _, measured = run(tmp_path / "m.json", "--mode", "measured")
    assert measured.keys() == fast.keys()
    for key, m in measured.items():
        q = fast[key]
        assert m["run_mode"] is None and m["ttft_s"] is not None
        for name in ("answer", "answer_tokens", "output_tokens", "score", "kv_cache_bytes", "kv_tokens_kept",
                     "kv_live_bytes", "context_tokens", "input_tokens"):
            assert q[name] == m[name], (key, name)
    assert len({r["answer"] for r in measured.values()}) > 2  # the answers really differ


def test_answers_do_not_depend_on_the_answer_batch(quality, tmp_path):
    _, batched = quality
    _, alone = run(tmp_path / "one.json", "--answer-batch", "1")
    assert {k: r["answer"] for k, r in alone.items()} == {k: r["answer"] for k, r in batched.items()}
    assert {r["answer_batch"] for r in alone.values()} == {1}


def test_on_the_fast_engine_methods_of_about_one_length_decode_together_and_answer_as_alone(tmp_path):
    grid = ["--preset", "tiny", "--engine", "fast", "--tasks", "niah", "--contexts", "1024", "--samples", "2",
            "--max-new-tokens", "8", "--greedy", "--methods",
            "vanilla,knorm@0.5,snapkv@0.5,adakv+snapkv@0.5,knorm@0.875,expected_attention@0.875,dms-8x,knorm@0.5+fp8"]
    def answers(path, *extra):
        assert test_long_context.main(grid + ["--out", str(path), *extra]) == 0
        return {(r["method"], r["prompt_id"], r["depth"]): r for r in json.loads(path.read_text())["results"]}
    together, alone = answers(tmp_path / "together.json"), answers(tmp_path / "alone.json", "--answer-batch", "1")
    assert all(r["error"] is None for r in together.values())
    assert {k: r["answer"] for k, r in together.items()} == {k: r["answer"] for k, r in alone.items()}
    assert len({r["answer"] for r in together.values()}) > 2  # the answers really differ
    batch = {r["method"]: r["answer_batch"] for r in together.values()}
    # 2 samples, 2 rows a method; knorm@0.5 and snapkv@0.5 keep the same length (4 rows); adakv masks and keeps
    # every entry, as vanilla (4 rows); 0.875's two (4 rows); native DMS has its own prefill (alone); a quantized
    # cache joins the shared prefill and decodes with fp8 caches only (its own 2 rows)
    assert batch == {"vanilla": 4, "adakv+snapkv@0.5": 4, "knorm@0.5": 4, "snapkv@0.5": 4, "knorm@0.875": 4,
                     "expected_attention@0.875": 4, "dms-8x": 1, "knorm@0.5+fp8": 2}


def test_resume_answers_only_what_is_missing(quality, tmp_path):
    data, records = quality
    path = tmp_path / "resumed.json"
    kept = data["results"][:-5]  # as if killed five answers before the end
    path.write_text(json.dumps({**data, "results": kept}))
    again, resumed = run(path, "--resume")
    assert again["run"]["quality"]["answers"] == 5
    assert {k: r["answer"] for k, r in resumed.items()} == {k: r["answer"] for k, r in records.items()}


def test_a_quality_file_does_not_resume_as_a_measured_run(quality, tmp_path, capsys):
    data, _ = quality
    path = tmp_path / "q.json"
    path.write_text(json.dumps(data))
    assert test_long_context.main(GRID + ["--out", str(path), "--resume", "--mode", "measured"]) == 2
    assert "mode 'quality'" in one_line_error(capsys)


def test_quality_options_are_checked_before_any_model_loads(capsys):
    for argv in (["--mode", "measured", "--answer-batch", "4"], ["--questions", "2", "--answer-batch", "4"],
                 ["--samples", "0"],
                 ["--samples", "2", "--trials", "2"]):
        assert test_long_context.main(["--preset", "tiny", *argv]) == 2
        assert one_line_error(capsys)


def test_a_quality_file_is_rewritten_less_often_as_its_rewrites_grow_slow():
    """Rewrites wait SAVE_EVERY_S, or SAVE_COST_RATIO times the last rewrite's own time if longer (the journal holds
    the records in between), so rewriting a growing file stays a small share of the run."""
    import time

    from kvcompress.run.quality import SAVE_COST_RATIO, SAVE_EVERY_S, Progress

    state = Progress(0, 10)
    state.saved = time.monotonic() - SAVE_EVERY_S - 1
    assert state.save_due() and not state.save_due()  # due once, then the clock restarts
    state.save_seconds = 5.0  # a slow rewrite: the next waits 5 x SAVE_COST_RATIO seconds
    state.saved = time.monotonic() - SAVE_EVERY_S - 1
    assert 5.0 * SAVE_COST_RATIO > SAVE_EVERY_S + 1 and not state.save_due()
    state.saved = time.monotonic() - 5.0 * SAVE_COST_RATIO - 1
    assert state.save_due()


def test_a_stopped_quality_run_keeps_where_its_time_went(tmp_path, monkeypatch):
    """A run stopped between batches (^C here; SIGTERM and errors take the same path) saves its answers and the
    header's `quality` block (answers, answers/s, phases) for them: the figures a cut GPU run reports."""
    from kvcompress.run import quality as quality_run

    answer_chunk, calls = quality_run._answer_chunk, []

    def stop_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return answer_chunk(*args, **kwargs)

    monkeypatch.setattr(quality_run, "_answer_chunk", stop_at_the_second)
    path = tmp_path / "cut.json"
    assert test_long_context.main(GRID + ["--out", str(path), "--answer-batch", "2"]) != 0
    data = json.loads(path.read_text())
    answered = [r for r in data["results"] if r["error"] is None]
    assert 0 < len(answered) < 16
    header = data["run"]["quality"]
    assert header["answers"] == len(answered) and header["phases_s"]["shared prefill"] > 0
    # resumed, the file keeps the cut process's block beside the new one's, and their sums
    monkeypatch.setattr(quality_run, "_answer_chunk", answer_chunk)
    assert test_long_context.main(GRID + ["--out", str(path), "--answer-batch", "2", "--resume"]) == 0
    data = json.loads(path.read_text())
    resumed = data["run"]["quality"]
    assert resumed["earlier"] == [header]
    assert resumed["answers"] == 16 - len(answered)
    assert resumed["total"]["answers"] == 16 and resumed["total"]["processes"] == 2
    assert resumed["total"]["wall_s"] == pytest.approx(header["wall_s"] + resumed["wall_s"], abs=2e-3)
