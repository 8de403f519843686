"""The result file: every contract field present, written atomically, resumable, and refused cleanly when bad."""

import json

import pytest

from kvcompress.errors import UserError
from kvcompress.results import CONTRACT_FIELDS, BenchmarkResult, ResultFile, load

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
    assert data["schema_version"] == 1 and data["run"] == {"command": "x"}
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
