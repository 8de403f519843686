"""benchmark.py check: the physics checks pass on a real run and fail when a number is off."""

import json

import pytest

import benchmark
from kvcompress import checks
from kvcompress.results import load


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "run.json"
    assert benchmark.main(["--preset", "tiny", "--contexts", "320", "--methods", "vanilla,knorm@0.5,adakv+snapkv@0.5",
                           "--max-new-tokens", "4", "--repeats", "3", "--out", str(out)]) == 0
    return out


def test_kv_bytes_check_passes_on_a_measured_run(tiny_run):
    run, results = load(tiny_run)
    assert run["architecture"]["layers"] == 2
    kv = checks.run_checks(run, results)[0]
    assert kv.passed is True, kv.lines
    assert any("exact" in line for line in kv.lines)
    assert any("mask-only" in line for line in kv.lines)


def test_a_press_holding_the_wrong_share_fails(tiny_run, tmp_path):
    data = json.loads(tiny_run.read_text())
    knorm = next(r for r in data["results"] if r["method"] == "knorm@0.5")
    knorm["kv_cache_bytes"] = int(knorm["kv_cache_bytes"] * 1.1)  # 55 % of vanilla instead of 50 %
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    run, results = load(path)
    assert checks.run_checks(run, results)[0].passed is False
    assert benchmark.main(["check", str(path)]) == 1


def test_noise_above_three_percent_is_flagged(tiny_run):
    run, results = load(tiny_run)
    results[0].ttft_iqr_s = results[0].ttft_s * 0.05
    noise = checks.run_checks(run, results)[4]
    assert noise.passed is False and "IQR 5.0%" in noise.lines[0]


def test_roofline_and_flop_counts_for_qwen3_8b():
    from kvcompress.models import qwen3_8b_config

    arch = checks.architecture_of(qwen3_8b_config())
    # non-embedding parameters of Qwen3-8B's 36 layers (attention + MLP), about 6.95 B
    assert arch["layer_params"] == 36 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 12288)
    assert 2 * arch["layers"] * arch["kv_heads"] * arch["head_dim"] * 2 == 147_456  # KV bytes per token, bf16
