"""The CPU-checkable parts of the GPU tools."""

import importlib.util
from pathlib import Path

import pytest


def _tool(name: str):
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_busy_time_is_the_union_of_kernel_intervals():
    busy = _tool("ttft_ab").busy_seconds
    # overlapping copies and kernels (two streams) count once; a nested interval adds nothing; gaps are idle
    intervals = [(0, 10_000), (5_000, 20_000), (6_000, 7_000), (30_000, 40_000), (40_000, 41_000)]
    assert busy(intervals) == pytest.approx(31_000 / 1e9)
    assert busy(list(reversed(intervals))) == pytest.approx(31_000 / 1e9)
    assert busy([]) == 0


def test_cells_parse_or_say_what_is_wrong():
    parse = _tool("ttft_ab").parse_cells
    assert parse("knorm@0.5:16384, adakv+expected_attention@0.5:8192") == [
        ("knorm@0.5", 16384), ("adakv+expected_attention@0.5", 8192)]
    with pytest.raises(SystemExit, match="method:tokens"):
        parse("knorm@0.5")


def test_quality_ab_pairs_records_of_both_modes_and_refuses_bad_grids(capsys):
    from kvcompress.results import BenchmarkResult

    tool = _tool("quality_ab")

    def record(method, prompt, answer, kv, mode=None):
        return BenchmarkResult(model="m", weights="random", method=method, prompt_id=prompt, answer=answer, kv_cache_bytes=kv,
                               target_tokens=4096, run_mode=mode)

    quality = [record("vanilla", "p0", "12", 100, "quality"), record("knorm@0.5", "p0", "7", 50, "quality"),
               record("knorm@0.5", "p1", "8", 50, "quality")]
    measured = [record("vanilla", "p0", "12", 100), record("knorm@0.5", "p0", "9", 50)]
    got = tool.agreement(quality, measured)
    assert (got["pairs"], got["same_answer"], got["same_kv_bytes"]) == (2, 1, 2)
    assert got["differ"] == ["knorm@0.5 p0: '7' vs '9'"]
    assert (got["common_prefix_chars_median"], got["answer_chars_median"]) == (1, 1.5)  # prefixes 2 and 0; "12", "7"
    assert tool.main(["--", "--preset", "tiny", "--samples", "0"]) == 2
    assert "error:" in capsys.readouterr().out
