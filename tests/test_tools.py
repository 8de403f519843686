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


def test_sass_count_finds_the_int4_loop_and_counts_it_per_element():
    """tools/sass_count.py compiles the int4 attention kernel for sm_90 on this CPU (Triton's ptxas, no GPU) and counts
    its loop over the cache. Independent of the tool: one trip of a block of 64 tokens holds (16/16)(64/8)(128/16)
    mma.m16n8k16 for q.k and (16/16)(128/8)(64/16) for p.v, 128 for 4 warps (32 HMMA a warp), and converts each of
    the 2 x 64 x 128 / 128 = 128 K and V codes a thread dequantizes to float once; the launch that splits nibbles
    has fewer instructions than the one that shifts and masks (it ran faster on an H100, session l)."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import dataclasses, json, sys; sys.path.insert(0, 'tools'); import sass_count as s\n"
            "engine = s.int_kernels.LAUNCH\n"
            "for launch in (engine, dataclasses.replace(engine, split_nibbles=False)):\n"
            "    c = s.count_int('int4', launch, 32, 8192)\n"
            "    print(json.dumps({'instructions': c.loop.instructions, 'ops': c.loop.ops, 'elements': c.elements}))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    split, shifted = [json.loads(line) for line in proc.stdout.splitlines()]
    for count in (split, shifted):
        assert count["elements"] == 2 * 64 * 128 // 128
        assert count["ops"]["HMMA"] == (64 // 8 * 128 // 16 + 128 // 8 * 64 // 16) // 4
        assert count["ops"].get("I2FP", 0) + count["ops"].get("I2F", 0) == count["elements"]
    assert split["instructions"] < shifted["instructions"]
