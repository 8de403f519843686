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
