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


def _sass_count(body: str) -> list[dict]:
    """Run `body` with tools/sass_count.py imported as `s` (and json) in a subprocess with TRITON_INTERPRET unset
    (it compiles for sm_90; the interpreter would not); each line it prints is JSON."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = "import dataclasses, json, sys; sys.path.insert(0, 'tools'); import sass_count as s\n" + body
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_sass_count_finds_the_int4_loop_and_counts_it_per_element():
    """tools/sass_count.py compiles the int4 attention kernel for sm_90 on this CPU (Triton's ptxas, no GPU) and counts
    its loop over the cache. Independent of the tool: one trip of a block of 64 tokens holds (16/16)(64/8)(128/16)
    mma.m16n8k16 for q.k and (16/16)(128/8)(64/16) for p.v, 128 for 4 warps (32 HMMA a warp), and converts each of
    the 2 x 64 x 128 / 128 = 128 K and V codes a thread dequantizes to float once; the launch that splits nibbles
    has fewer instructions than the one that shifts and masks (it ran faster on an H100, session l), and fp8 with
    float16 dots fewer than with bf16 dots (session n), the same HMMA count. The word-codes launch converts no code
    with I2F: each takes one FADD (its exponent's subtraction) and one LOP3 (mask and OR); with interleaved groups
    it converts fewer float16 scales (HADD2), and issues fewer instructions than the engine's launch."""
    split, shifted, words, fp8_bf16, fp8_f16 = _sass_count(
        "engine = s.int_kernels.LAUNCH\n"
        "counts = [s.count_int('int4', launch, 32, 8192)\n"
        "          for launch in (engine, dataclasses.replace(engine, split_nibbles=False),\n"
        "                         dataclasses.replace(engine, word_codes=True, interleave_groups=True))]\n"
        "counts += [s.count_plain(True, 32, 8192, f16) for f16 in (False, True)]\n"
        "for c in counts:\n"
        "    print(json.dumps({'instructions': c.loop.instructions, 'ops': c.loop.ops, 'elements': c.elements}))")
    hmma = (64 // 8 * 128 // 16 + 128 // 8 * 64 // 16) // 4
    for count in (split, shifted):
        assert count["elements"] == 2 * 64 * 128 // 128
        assert count["ops"]["HMMA"] == hmma
        assert count["ops"].get("I2FP", 0) + count["ops"].get("I2F", 0) == count["elements"]
    assert split["instructions"] < shifted["instructions"]
    assert words["ops"]["HMMA"] == hmma and words["elements"] == split["elements"]
    assert words["ops"].get("I2FP", 0) + words["ops"].get("I2F", 0) == 0
    assert words["ops"]["FADD"] >= words["elements"] and words["ops"]["LOP3"] >= words["elements"]
    assert words["ops"]["HADD2"] < split["ops"]["HADD2"]
    assert words["instructions"] < split["instructions"]
    assert fp8_bf16["ops"]["HMMA"] == fp8_f16["ops"]["HMMA"] == hmma
    assert fp8_f16["instructions"] < fp8_bf16["instructions"]


def _resident_on_sm90(registers: int, shared: int, warps: int) -> int:
    """Programs of `warps` warps one sm_90 SM holds (CUDA's occupancy rules for compute capability 9.0): registers
    allocated per warp in units of 256 from 4 quarters of 16,384; 228 KiB of shared memory, 1 KiB reserved a
    program; 64 warps; 32 programs."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = 4 * (16384 // per_warp) // warps
    by_shared = (228 * 1024) // (shared + 1024)
    return min(by_registers, by_shared, 64 // warps, 32)


def test_the_wave_split_rule_assumes_the_programs_an_sm_really_holds():
    """kernels.RESIDENT (how many fp8 and int partial-kernel programs an SM holds, which kernels.wave_splits sizes
    its waves by) against the kernels compiled for sm_90 at the engine's launches, batch 8 (2 stages) and 32 (3)."""
    from kvcompress.engine.fast import kernels

    rows = _sass_count(
        "for batch in (8, 32):\n"
        "    for name, c in (('int', s.count_int('int4', s.int_kernels.LAUNCH, batch, 8192)),\n"
        "                    ('fp8', s.count_plain(True, batch, 8192, s.kernels.FP8_F16_DOTS))):\n"
        "        print(json.dumps({'name': name, 'batch': batch, 'registers': c.registers, 'shared': c.shared,\n"
        "                          'warps': 2 * 64 * 128 // (32 * c.elements)}))")
    assert len(rows) == 4
    for row in rows:
        assert _resident_on_sm90(row["registers"], row["shared"], row["warps"]) == kernels.RESIDENT[row["name"]], row


def test_wave_splits_fills_whole_waves(monkeypatch):
    """kernels.wave_splits on a 132-SM card holding 3 programs an SM (396 slots): the fewest splits whose programs
    keep the slots >= 90 % busy over their waves, checked by filling waves program by program; and the split
    counts an H100 ran fastest at 8K (results/h100/session-2026-12-07-n/callB/int-splits.log: 6 at batch 8, 3 at
    batch 16 and 32)."""
    import torch

    from kvcompress.engine.fast import kernels

    monkeypatch.setattr(kernels, "_sm_count", lambda device: 132)
    gpu = torch.device("cuda")

    def busy(programs: int, slots: int) -> float:  # slot-time used / slot-time the waves take
        waves, left = 0, programs
        while left > 0:
            left -= slots
            waves += 1
        return programs / (waves * slots)

    for pairs in (8, 64, 128, 256, 512, 1024, 100, 7):
        for capacity in (8192, 32768, 640):
            splits = kernels.wave_splits(pairs, capacity, gpu, 3)
            most = -(-capacity // kernels.BLOCK_N)
            assert 1 <= splits <= most
            assert busy(pairs * splits, 396) >= 0.9 or splits == most
            assert all(busy(pairs * s, 396) < 0.9 for s in range(1, splits))
    assert [kernels.wave_splits(8 * b, 8064, gpu, 3) for b in (8, 16, 32)] == [6, 3, 3]
    assert kernels.wave_splits(64, 32640, gpu, 3) == 6
