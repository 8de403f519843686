"""benchmark.py as a user runs it: bad input gets one line and exit 2; the tiny preset writes a complete file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark
from conftest import one_line_error
from test_results import CONTRACT

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "vanilla,nosuchpress@0.5"], "unknown press 'nosuchpress'"),
    (["--methods", "knorm@1.5"], "must be in [0, 1)"),
    (["--methods", "knorm"], "needs a compression ratio"),
    (["--contexts", "9000"], "exceeds tiny's 8192 positions"),
    (["--contexts", "abc"], "is not a token count"),
    (["--out", "/proc/forbidden/x.json"], "cannot write results to"),
    (["--model", "no-such-model"], "unknown model"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--methods", "vanilla@0.5"], "vanilla takes no ratio"),
    (["--methods", "dms-8x@0.5"], "dms-8x takes no ratio"),
    (["--methods", "vanilla,knorm@0.5,vanilla"], "--methods names vanilla twice"),
    (["--methods", "knorm@0.5,knorm@0.50"], "--methods names knorm@0.5 twice"),
    (["--device", "foo"], "--device 'foo' is not a device"),
    (["--device", "mps"], "only cuda and cpu are supported"),
    (["--model", "."], "has no config.json"),
    (["--top-k", "-1"], "--top-k must be 0 (the whole vocabulary) or a positive"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    argv = ["--preset", "tiny", "--contexts", "320", "--out", str(tmp_path / "o.json")] + argv
    assert benchmark.main(argv) == 2
    err = one_line_error(capsys)
    assert message in err and "Traceback" not in err


def test_random_weights_need_a_gpu(capsys):
    assert benchmark.main(["--random-weights", "--device", "cpu", "--model", "qwen3-8b"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("preset, inside", [("tiny", 1), (None, 2)])
def test_the_tiny_preset_runs_on_one_thread_and_gives_the_count_back(preset, inside, monkeypatch):
    import torch

    from kvcompress.run import runner

    seen = []
    monkeypatch.setattr(runner, "_run", lambda cfg, cells, task, extra, annotate, *quality: seen.append(
        (torch.get_num_threads(), extra["torch_threads"])))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runner.run(type("Cfg", (), {"preset": preset})(), [], task="benchmark")
        assert seen == [(inside, inside)] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_tiny_preset_end_to_end_writes_every_field(tmp_path):
    """The real command, in a subprocess, with no GPU: falls back to the tiny preset and completes."""
    out = tmp_path / "run.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "benchmark.py", "--contexts", "320", "--max-new-tokens", "6",
                           "--repeats", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "No CUDA GPU: running the tiny preset" in proc.stdout
    data = json.loads(out.read_text())
    assert data["run"]["preset"] == "tiny" and data["run"]["torch"] and data["run"]["command"].startswith("benchmark.py")
    assert data["run"]["torch_threads"] == 1  # torch's default here is one per core (runner.tiny_threads)
    results = {r["method"]: r for r in data["results"]}
    assert set(results) == {"vanilla", "dms-8x", "knorm@0.5", "expected_attention@0.5", "snapkv@0.5",
                            "streaming_llm@0.5"}
    for record in data["results"]:
        assert set(CONTRACT) <= set(record)
    for r in data["results"]:  # dms-8x included: native DMS runs on the tiny Qwen3 (its DMS config fields)
        assert r["error"] is None, r["error"]
        for key in ("ttft_s", "tpot_ms", "decode_tokens_per_s", "e2e_s", "peak_mem_prefill_bytes",
                    "peak_mem_decode_bytes", "weights_bytes", "kv_cache_bytes", "kv_cache_bytes_end"):
            assert r[key] is not None and r[key] > 0, key
    dms = results["dms-8x"]
    assert dms["process"] == "main" and dms["dms_impl"] == "native" and dms["dms_layout"] == "mask, no reclaim"
    assert dms["dms_decisions"] == "calibrated to evict 0.875 of tokens outside the window"
    assert dms["kv_live_bytes"] < dms["kv_cache_bytes"]  # evicted by mask: live < held
    assert "dms-8x" in proc.stdout and "error" not in proc.stdout
