"""The result file: every contract field present, written atomically, resumable, and refused cleanly when bad."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvcompress.errors import UserError
from conftest import held_by_another_process
from kvcompress.results import CONTRACT_FIELDS, BenchmarkResult, ResultFile, load, save

ROOT = Path(__file__).resolve().parents[1]

CONTRACT = ["model", "weights", "method", "press", "compression_ratio", "context_tokens", "input_tokens",
            "output_tokens", "ttft_s", "prefill_tokens_per_s", "tpot_ms", "decode_tokens_per_s", "e2e_s",
            "peak_mem_prefill_bytes", "peak_mem_decode_bytes", "weights_bytes", "kv_cache_bytes",
            "kv_cache_bytes_end", "kv_tokens_kept", "kv_compression_achieved", "kv_memory_saved", "repeats",
            "ttft_iqr_s", "tpot_iqr_ms", "answer", "error"]


def test_contract_field_names_are_the_documented_ones():
    assert CONTRACT_FIELDS == CONTRACT


def test_file_round_trip_and_resume(tmp_path, run_method):
    path = tmp_path / "r.json"
    f = ResultFile(path, {"command": "x"})
    record = run_method("knorm@0.5")
    f.add(record)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["run"] == {"command": "x"}
    assert set(CONTRACT) <= set(data["results"][0])
    resumed = ResultFile(path, {"command": "y"}, resume=True)
    assert resumed.done(record.identity())
    with pytest.raises(UserError, match="already exists: pass --resume"):
        ResultFile(path, {"command": "y"}, resume=False)  # no silent overwrite of a finished run


def test_result_files_are_readable_by_everyone(tmp_path):
    f = ResultFile(tmp_path / "r.json", {})
    f.add(BenchmarkResult(model="m", weights="random", method="vanilla"))
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_a_directory_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        ResultFile(tmp_path, {})


@pytest.mark.parametrize("change, message", [
    ({"task": "long_context"}, "another script"),
    ({"max_new_tokens": 64}, "max_new_tokens 32, this run has 64"),
    ({"sampling": "greedy"}, "sampling"),
    ({"engine": "fast"}, "engine"),
    ({"arguments": {"model": "smollm2", "random_weights": False}}, "--model 'tiny', this run has 'smollm2'"),
    ({"arguments": {"model": "tiny", "random_weights": True}}, "--random-weights"),
])
def test_resume_refuses_a_file_with_other_settings(tmp_path, change, message):
    header = {"task": "benchmark", "engine": "hf", "sampling": "temperature 0.6, top-p 0.95, seed 0",
              "max_new_tokens": 32, "arguments": {"model": "tiny", "random_weights": False}}
    f = ResultFile(tmp_path / "r.json", header)
    f.add(BenchmarkResult(model="tiny", weights="random", method="vanilla", task="benchmark"))
    with pytest.raises(UserError, match=message):
        ResultFile(tmp_path / "r.json", {**header, **change}, resume=True)
    assert ResultFile(tmp_path / "r.json", dict(header), resume=True).results  # the same settings resume


def test_a_retried_cell_replaces_its_failed_record(tmp_path):
    f = ResultFile(tmp_path / "r.json", {})
    f.add(BenchmarkResult(model="m", weights="random", method="knorm@0.5", target_tokens=8, error="boom"))
    f.add(BenchmarkResult(model="m", weights="random", method="knorm@0.5", target_tokens=8, ttft_s=1.0))
    assert len(f.results) == 1 and f.results[0].error is None


def test_batches_replace_failed_attempts_as_one_record_at_a_time_would(tmp_path):
    """add_all keeps a set of the file's identities between batches (a RULER run adds thousands of records); after
    retries, single adds and a sort in place, every cell must still hold one record, its last, as a brute-force
    replay of the same additions gives."""
    f = ResultFile(tmp_path / "r.json", {})

    def rec(prompt, answer, error=None):
        return BenchmarkResult(model="m", weights="random", method="knorm@0.5", prompt_id=prompt, answer=answer,
                               error=error)

    steps = [[rec("p0", "a", "boom"), rec("p1", "b")], [rec("p2", "c")], [rec("p0", "d")], rec("p5", "e"),
             [rec("p5", "f")], "sort", [rec("p3", "g", "boom")], [rec("p3", "h")], [rec("p4", "i")], rec("p6", "j"),
             [rec("p1", "k"), rec("p6", "l")]]
    expected: dict = {}
    for step in steps:
        if step == "sort":
            f.results.sort(key=lambda r: r.prompt_id, reverse=True)  # as runner.py orders the file in place
            continue
        f.add(step) if isinstance(step, BenchmarkResult) else f.add_all(step, write=False)
        for r in [step] if isinstance(step, BenchmarkResult) else step:
            expected[r.prompt_id] = r.answer
    assert sorted((r.prompt_id, r.answer) for r in f.results) == sorted(expected.items())
    assert expected == {"p0": "d", "p1": "k", "p2": "c", "p3": "h", "p4": "i", "p5": "f", "p6": "l"}


@pytest.mark.parametrize("content, message", [
    ('{"schema_version": 1, "run": {}, "resu', "not valid JSON"),
    ('{"hello": 1}', "not a kvcompress result file"),
    ('{"schema_version": 99, "run": {}, "results": []}', "schema_version 99"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value)


def _cloned_dms_batch(batch: int, layers: int = 3, heads: int = 2) -> BenchmarkResult:
    """A cloned-admission batch as the capacity search records it: rows 1..B-2 repeat row 0, the last its own."""
    first = [[100 + 10 * layer + h for h in range(heads)] for layer in range(layers)]
    last = [[200 + 10 * layer + h for h in range(heads)] for layer in range(layers)]
    per_head = [first[layer] * (batch - 1) + last[layer] for layer in range(layers)]
    end = [[n + 1 for n in layer] for layer in per_head]
    return BenchmarkResult(model="m", weights="random", method="dms-8x", batch=batch, admission="cloned",
                           kv_tokens_per_head=per_head, kv_tokens_per_head_end=end,
                           ttft_sequences_s=[0.25, 0.5], ttft_samples_s=[0.1, 0.2, 0.3],
                           notes=["a note"], capacity_probes=[{"batch": 2, "fits": True, "peak_bytes": {"decode": 7}}])


def _old_layout(path, run, records) -> None:
    """A file as kvcompress wrote it before: schema 1, json.dump(indent=1), one integer per line."""
    path.write_text(json.dumps({"schema_version": 1, "run": run, "results": [r.to_dict() for r in records]},
                               indent=1) + "\n")


def test_a_rewritten_file_loads_to_the_same_records_in_a_diffable_layout(tmp_path):
    heads = [[5, 6, 7, 8], [1, 2, 3, 4]]  # a batch of 2 admitted each: two distinct sequences, nothing to fold
    records = [_cloned_dms_batch(270), _cloned_dms_batch(2),
               BenchmarkResult(model="m", weights="random", method="dms-8x", batch=2, admission="each",
                               kv_tokens_per_head=heads, kv_tokens_per_head_end=heads),
               BenchmarkResult(model="m", weights="random", method="knorm@0.5", ttft_s=0.5, tpot_samples_ms=[1.5])]
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    _old_layout(old, {"command": "x", "arguments": {"batch": [1, 270]}}, records)
    run, loaded = load(old)
    save(new, run, loaded)
    assert load(new) == load(old) == (run, records)  # record by record, every value
    assert json.loads(new.read_text())["schema_version"] == 2  # standard JSON, for any reader
    text = new.read_text()
    assert len(text.splitlines()) * 8 < len(old.read_text().splitlines())  # 398 lines against 3,712
    assert not [line for line in text.splitlines() if line.strip().rstrip(",").isdigit()]  # no integer on its own
    stored = json.loads(text)["results"]
    assert stored[0]["sequence_copies"] == [269, 1] and len(stored[0]["kv_tokens_per_head"][0]) == 2 * 2
    assert stored[0]["kv_tokens_per_head_end"][2] == [121, 122, 221, 222]
    assert "sequence_copies" not in stored[1]  # batch 2: the first and the last, both prefilled
    assert "sequence_copies" not in stored[2] and stored[2]["kv_tokens_per_head"] == heads
    assert '   "kv_tokens_per_head": [\n    [100, 101, 200, 201],\n' in text  # one line per layer
    assert '   "ttft_samples_s": [0.1, 0.2, 0.3],\n' in text


def test_sequence_copies_that_do_not_add_up_to_the_batch_are_refused_in_one_line(tmp_path):
    path = tmp_path / "r.json"
    save(path, {}, [_cloned_dms_batch(5)])
    data = json.loads(path.read_text())
    data["results"][0]["sequence_copies"] = [3, 1]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="record 0 is malformed .*summing to the batch") as info:
        load(path)
    assert "\n" not in str(info.value)



def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    """Two runs naming one --out: the second is refused in one line (before, both ran and the file kept only the
    last writer's records); once the first process ends, the file is free again."""
    path = tmp_path / "r.json"
    with held_by_another_process(path):
        with pytest.raises(UserError, match="being written by another run"):
            ResultFile(path, {})
        with pytest.raises(UserError, match="being written by another run"):
            ResultFile(path, {}, resume=True)
    f = ResultFile(path, {})  # the holder is gone: its lock went with it
    f.add(BenchmarkResult(model="m", weights="random", method="vanilla"))
    again = ResultFile(path, {}, resume=True)  # the same process may reopen the file it writes
    f.close()
    again.close()
    assert not (tmp_path / "r.json.lock").exists()  # no lock file left behind once every writer closed


_KILLED_WRITER = """
import os, signal, sys
from kvcompress.results import BenchmarkResult, ResultFile
f = ResultFile(sys.argv[1], {"task": "q"})
f.add_all([BenchmarkResult(model="m", weights="random", method="vanilla", prompt_id=f"p{i}", answer=f"a{i}")
           for i in range(3)], write=True)
for batch in range(2):  # two batches between saves, as a quality run adds them (write=False)
    f.add_all([BenchmarkResult(model="m", weights="random", method="knorm@0.5", prompt_id=f"p{batch}{i}",
                               answer=f"b{batch}{i}") for i in range(2)], write=False)
os.kill(os.getpid(), signal.SIGKILL)  # before the next save
"""


def _killed_writer(path):
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_records_added_between_saves_survive_kill_9(tmp_path):
    """A quality run adds its batches without rewriting the file (every 30 s); before the journal, kill -9 between
    two saves lost every answer since the last one (the file here would hold the 3 saved records only)."""
    path = tmp_path / "q.json"
    _killed_writer(path)
    assert len(load(path)[1]) == 3  # the file itself as the last save left it
    with pytest.raises(UserError, match="killed before it saved them; pass --resume"):
        ResultFile(path, {"task": "q"})  # a new run must not drop the journaled answers silently
    resumed = ResultFile(path, {"task": "q"}, resume=True)
    answers = {(r.method, r.prompt_id): r.answer for r in resumed.results}
    assert answers == {**{("vanilla", f"p{i}"): f"a{i}" for i in range(3)},
                       **{("knorm@0.5", f"p{b}{i}"): f"b{b}{i}" for b in range(2) for i in range(2)}}
    resumed.close()
    assert len(load(path)[1]) == 7 and not (tmp_path / "q.json.journal.jsonl").exists()  # folded into the file


def test_a_journal_line_cut_by_the_kill_is_dropped_and_the_rest_kept(tmp_path):
    path = tmp_path / "q.json"
    _killed_writer(path)
    journal = tmp_path / "q.json.journal.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 4  # the header, then one line per record
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # the last record written in part
    resumed = ResultFile(path, {"task": "q"}, resume=True)
    assert len(resumed.results) == 3 + 3
    resumed.close()
    journal.write_text("\n".join(lines[:2] + ["{not json"] + lines[3:]) + "\n")  # inside: not a kill's cut
    with pytest.raises(UserError, match="line 3 is not JSON"):
        ResultFile(path, {"task": "q"}, resume=True)
    journal.write_text("\n".join(lines[:2] + ['{"no_such_field": 1}'] + lines[3:]) + "\n")
    with pytest.raises(UserError, match="line 3 is not a record"):
        ResultFile(path, {"task": "q"}, resume=True)


def test_a_journal_of_a_run_killed_before_its_first_save_resumes_with_its_settings(tmp_path):
    path = tmp_path / "q.json"
    _killed_writer(path)
    path.unlink()  # as if killed before the first save
    with pytest.raises(UserError, match="another script"):
        ResultFile(path, {"task": "other"}, resume=True)
    assert len(ResultFile(path, {"task": "q"}, resume=True).results) == 4


def test_kv_fields_are_the_readings_after_the_context_and_at_the_end():
    """record.kv_fields against values worked by hand: 2 layers holding 3 and 5 of 8 positions (mean 4: half
    evicted), 10 bytes held of 20 uncompressed; the end's reading only where one was taken."""
    from kvcompress.memory import KVState
    from kvcompress.record import kv_fields

    after = KVState(10, 8, 20, [3.0, 5.0], 8, parts={"data": 6, "scales": 4})
    end = KVState(12, 12, 24, [4.0, 6.0], 10, tokens_per_head=[[4], [6]])
    fields = kv_fields(after, end)
    assert {k: fields[k] for k in ("kv_cache_bytes", "kv_live_bytes", "kv_cache_bytes_full", "kv_positions",
                                   "kv_tokens_kept", "kv_compression_achieved", "kv_memory_saved",
                                   "kv_tokens_kept_min", "kv_tokens_kept_max", "kv_bytes_parts")} == {
        "kv_cache_bytes": 10, "kv_live_bytes": 8, "kv_cache_bytes_full": 20, "kv_positions": 8,
        "kv_tokens_kept": 4.0, "kv_compression_achieved": 0.5, "kv_memory_saved": True,
        "kv_tokens_kept_min": 3.0, "kv_tokens_kept_max": 5.0, "kv_bytes_parts": {"data": 6, "scales": 4}}
    assert (fields["kv_cache_bytes_end"], fields["kv_live_bytes_end"], fields["kv_tokens_end"],
            fields["kv_tokens_per_head_end"]) == (12, 12, 5.0, [[4], [6]])
    alone = kv_fields(after)
    assert "kv_cache_bytes_end" not in alone and alone["kv_cache_bytes"] == 10
    assert BenchmarkResult(model="m", weights="random", method="x", **alone).kv_tokens_kept == 4.0  # all fields
