"""A newcomer's first ten minutes: bad input is one line and exit 2 before anything is measured, nothing finished
is overwritten or mixed, and --help answers at once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark
import test_long_context
from kvcompress import cli, models

from conftest import held_by_another_process, one_line_error

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["benchmark.py", "test_kvpress_api.py", "test_dms_inference.py", "test_long_context.py"]


def test_flash_attention_without_flash_attn_is_one_line(capsys, tmp_path, without_flash_attn):
    assert benchmark.main(["--preset", "tiny", "--attn", "flash_attention_2", "--out", str(tmp_path / "o.json")]) == 2
    assert "needs the flash-attn package" in one_line_error(capsys)


def test_random_weights_without_a_gpu_says_it_needs_one(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert benchmark.main(["--random-weights", "--out", str(tmp_path / "o.json")]) == 2
    err = one_line_error(capsys)
    assert "needs a CUDA GPU" in err and "cannot be combined" not in err  # the user never typed --preset tiny


def test_known_hub_ids_are_their_registered_models(capsys, tmp_path):
    assert models.resolve_spec("Qwen/Qwen3-8B") is models.MODELS["qwen3-8b"]
    assert models.resolve_spec("nvidia/Qwen3-8B-DMS-8x") is models.MODELS["dms-8x"]
    assert benchmark.main(["--model", "Qwen/Qwen3-8B", "--device", "cpu", "--contexts", "1000K",
                           "--out", str(tmp_path / "o.json")]) == 2
    assert "qwen3-8b needs a GPU" in one_line_error(capsys)


def test_an_unreachable_hub_fails_fast_in_one_line(tmp_path):
    """Without HF_HUB_OFFLINE, a Hub model that is not cached: one line, not minutes of retries."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(CUDA_VISIBLE_DEVICES="", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               HF_HOME=str(tmp_path / "hf"), NO_PROXY="")
    proc = subprocess.run([sys.executable, "benchmark.py", "--model", "someone/not-cached", "--device", "cpu",
                           "--out", str(tmp_path / "o.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("error: the Hugging Face Hub is unreachable and someone/not-cached is not in the "
                                   "local cache (check the network, or set HF_HUB_OFFLINE=1 to use cached files only)")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run: one vanilla record."""
    out = tmp_path_factory.mktemp("finished") / "run.json"
    assert benchmark.main(["--preset", "tiny", "--methods", "vanilla", "--contexts", "256", "--max-new-tokens", "2",
                           "--repeats", "1", "--out", str(out)]) == 0
    return out


ARGV = ["--preset", "tiny", "--methods", "vanilla,knorm@0.5", "--contexts", "256", "--max-new-tokens", "2",
        "--repeats", "1"]


def test_an_existing_result_file_is_not_overwritten(finished, capsys):
    before = finished.read_bytes()
    assert benchmark.main(ARGV + ["--out", str(finished)]) == 2
    assert "already exists: pass --resume" in one_line_error(capsys)
    assert finished.read_bytes() == before


def test_a_directory_as_out_fails_before_measuring(finished, capsys):
    assert benchmark.main(ARGV + ["--out", str(finished.parent)]) == 2
    assert "is a directory" in one_line_error(capsys)


def test_resume_with_other_settings_or_another_script_is_refused(finished, capsys):
    before = finished.read_bytes()
    assert benchmark.main(ARGV[:-3] + ["3", "--repeats", "1", "--resume", "--out", str(finished)]) == 2
    assert "max_new_tokens 2, this run has 3" in one_line_error(capsys)
    assert benchmark.main(ARGV + ["--greedy", "--resume", "--out", str(finished)]) == 2
    assert "sampling" in one_line_error(capsys)
    assert test_long_context.main(["--preset", "tiny", "--resume", "--out", str(finished)]) == 2
    assert "another script (task 'benchmark', this run is 'long_context')" in one_line_error(capsys)
    assert finished.read_bytes() == before


def test_a_run_onto_a_file_another_run_writes_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    """Two runs with one --out used to both exit 0, the file holding the second run's records only."""
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load", no_load)
    out = tmp_path / "run.json"
    with held_by_another_process(out):
        assert benchmark.main(ARGV + ["--out", str(out)]) == 2
    assert "is being written by another run" in one_line_error(capsys)
    assert not out.exists()


def test_a_run_in_which_every_cell_failed_exits_non_zero(tmp_path, capsys, monkeypatch):
    """Every cell an error record: the run used to exit 0, so a CI step passed on a run that measured nothing."""
    from kvcompress.run import one_cell

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(one_cell, "measure", broken)
    out = tmp_path / "run.json"
    assert benchmark.main(ARGV + ["--out", str(out)]) == 1
    assert "no cell produced a figure" in capsys.readouterr().out
    assert [r["error"] for r in json.loads(out.read_text())["results"]] == ["RuntimeError: boom"] * 2


def test_ctrl_c_before_the_first_record_does_not_claim_a_file(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load", interrupted)
    out = tmp_path / "run.json"
    assert benchmark.main(ARGV + ["--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted before any record was finished: no result file was written" and not out.exists()


def test_the_model_names_in_help_are_the_registered_ones():
    assert set(cli.MODEL_NAMES) == set(models.MODELS)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--no-such-option"], 2)])
def test_help_and_argument_errors_answer_before_torch_is_imported(script, argv, code):
    probe = (f"import runpy, sys, time; sys.argv = [{script!r}] + {argv!r}; t = time.perf_counter()\n"
             f"try:\n    runpy.run_path({script!r}, run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = sorted(m for m in ('torch', 'transformers', 'kvpress') if m in sys.modules)\n"
             "print(json.dumps([code, heavy, time.perf_counter() - t]))")
    proc = subprocess.run([sys.executable, "-c", "import json\n" + probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    exit_code, heavy, seconds = json.loads(proc.stdout.strip().splitlines()[-1])
    assert exit_code == code and heavy == []
    assert seconds < 2.0


def test_the_context_column_names_every_row_by_its_target_and_shows_a_different_measured_length():
    from rich.console import Console

    from kvcompress import report
    from kvcompress.results import BenchmarkResult

    measured = BenchmarkResult(model="m", weights="random", method="vanilla", target_tokens=512, input_tokens=511,
                               ttft_s=0.1, kv_cache_bytes=1)
    failed = BenchmarkResult(model="m", weights="random", method="dms-8x", target_tokens=512, error="boom")
    console = Console(width=250, record=True)
    report.print_results([measured, failed], "t", console)
    text = console.export_text()
    vanilla, dms = (next(line for line in text.splitlines() if line.startswith(f"│ {m}")) for m in ("vanilla", "dms-8x"))
    assert "512 (511 measured)" in vanilla and "512" in dms and "511" not in dms
    assert "dms-8x @ 512 tok: boom" in text


def test_dms_8x_remote_on_the_tiny_preset_names_the_tiny_checkpoint(tmp_path, capsys):
    """It used to reach for the 8B checkpoint: 'the Hub is unreachable ... set HF_HUB_OFFLINE=1' (offline: a
    flash-attn error after the other methods ran), where the answer is --dms-model tiny-dms."""
    assert benchmark.main(["--preset", "tiny", "--methods", "vanilla,dms-8x-remote",
                           "--out", str(tmp_path / "o.json")]) == 2
    assert "add --dms-model tiny-dms" in one_line_error(capsys)
    assert not (tmp_path / "o.json").exists()


def test_the_tables_have_a_legend_for_each_column_group():
    """benchmark.py's and test_dms_inference.py's tables had no legend: one line per column group under each."""
    import io

    from rich.console import Console

    from kvcompress import report
    from kvcompress.results import BenchmarkResult

    r = BenchmarkResult(model="tiny", weights="pretrained", method="dms-8x", target_tokens=256, input_tokens=256,
                        ttft_s=0.1, kv_cache_bytes=2**20, kv_live_bytes=2**19, kv_cache_bytes_full=2**20)
    console = Console(width=300, record=True, file=io.StringIO())
    report.print_results([r], "t", console)
    report.print_side_by_side([r], "t", console)
    printed = console.export_text()
    for words in ("TTFT:", "TPOT:", "peak prefill / decode:", "KV held / live:", "evicted:", "mem saved:",
                  "input: context + question", "KV held: bytes", "live ratio =", "vanilla / held ="):
        assert words in printed, words
