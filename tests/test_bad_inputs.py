"""Issue 22, part B: every bad input is refused in one line (exit 2) before any model loads, and the crash paths of
round one ("unexpected X", exit 1) are one line and exit 2. Each case here was accepted or crashed before."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark
from kvcompress import models, results
from kvcompress.commands import script_main
from kvcompress.errors import UserError
from kvcompress.results import BenchmarkResult, ResultFile

from conftest import one_line_error

ROOT = Path(__file__).resolve().parents[1]
press_sweep, long_context, dms_side_by_side = (script_main(n) for n in ("press-sweep", "long-context",
                                                                          "dms-side-by-side"))
TINY = ["--preset", "tiny", "--contexts", "256", "--max-new-tokens", "2", "--repeats", "1"]


@pytest.fixture
def no_model(monkeypatch):
    """A model load fails the test: every refusal here must come before one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(models, "load", refuse)
    monkeypatch.setattr(models, "load_dms_native", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "nan"], "--temperature must be a finite number > 0"),
    (["--temperature", "inf"], "--temperature must be a finite number > 0"),
    (["--device", "cpu:5"], "there is one CPU device"),
    (["--resume"], "--resume continues a result file: name it with --out"),
    (["--contexts", "256,256"], "--contexts names 256 tokens twice"),
    (["--contexts", "1K,1024"], "--contexts names 1024 tokens twice"),
    (["--seed", str(2**70)], "--seed must be in [0, 4294967295]"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["--model", "/nonexistent/path"], "--model /nonexistent/path: no such folder"),
    (["--methods", "knorm@0.5[compression_ratio=0.9]"], "compression_ratio is what @ratio sets"),
    (["--methods", "snapkv@0.5[window_size=abc]"], "window_size='abc' is not a whole number"),
    (["--methods", "decoding+knorm[compression_interval=0]"], "compression_interval must be greater than 0"),
    (["--methods", "dmspress+knorm[threshold=abc]"], "threshold='abc' is not a number"),
])
def test_nonsense_is_refused_in_one_line_before_any_model(argv, message, capsys, tmp_path, no_model):
    out = [] if "--resume" in argv else ["--out", str(tmp_path / "o.json")]
    assert benchmark.main(TINY + out + argv) == 2
    err = one_line_error(capsys)
    assert message in err, err


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as code:
        benchmark.main(TINY + ["--engine", "warp"])
    assert code.value.code == 2
    assert "invalid choice: 'warp'" in one_line_error(capsys)


def test_out_written_as_a_folder_is_refused(capsys, tmp_path, no_model):
    """`--out dir/` wrote a file named dir."""
    folder = str(tmp_path / "newdir") + "/"
    assert benchmark.main(TINY + ["--out", folder]) == 2
    assert "names a folder" in one_line_error(capsys)
    assert not (tmp_path / "newdir").exists()


def test_a_file_name_too_long_is_refused_up_front(capsys, tmp_path, no_model):
    assert benchmark.main(TINY + ["--out", str(tmp_path / ("x" * 250 + ".json"))]) == 2
    assert "File name too long" in one_line_error(capsys)


def test_needles_must_be_positive(capsys, tmp_path, no_model):
    for n in ("0", "-3"):
        assert long_context(["--preset", "tiny", "--needle", "multikey", "--needles", n,
                                       "--out", str(tmp_path / "o.json")]) == 2
        assert "--needles must be at least 1" in one_line_error(capsys)


def test_thinking_as_a_string_in_a_prompts_file_is_refused(capsys, tmp_path, no_model):
    """"false" (a string) turned thinking on."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello", "thinking": "false"}\n')
    assert dms_side_by_side(["--preset", "tiny", "--methods", "vanilla", "--prompts", str(prompts),
                                    "--out", str(tmp_path / "o.json")]) == 2
    assert '"thinking" must be true or false' in one_line_error(capsys)


def test_a_plot_into_an_unwritable_place_fails_before_the_sweep(capsys, tmp_path, no_model):
    assert press_sweep(["--preset", "tiny", "--presses", "knorm", "--ratios", "0.5", "--plot",
                                  "/proc/forbidden/p.png", "--out", str(tmp_path / "o.json")]) == 2
    assert "cannot write results to /proc/forbidden/p.png" in one_line_error(capsys)


# ---- result files: hand-edited, duplicated, a full disk ------------------------------------------------------------

TINY_ARCHITECTURE = {"layers": 2, "hidden": 128, "heads": 4, "kv_heads": 2, "head_dim": 64, "intermediate": 256,
                     "vocab": 261, "tied_embeddings": True, "layer_params": 393216}


def _record(method="vanilla", **fields) -> dict:
    """A tiny-run record as the tiny preset writes it (124 context tokens x 2048 fp32 bytes each)."""
    base = dict(model="tiny", weights="random", method=method, task="benchmark", target_tokens=256, context_tokens=124,
                input_tokens=256, output_tokens=2, kv_cache_bytes=253952, engine="hf", max_new_tokens=2,
                dtype="float32")
    return BenchmarkResult(**{**base, **fields}).to_dict()


def _file(path: Path, records: list[dict], run: dict | None = None) -> Path:
    path.write_text(json.dumps({"schema_version": 2, "run": run or {"device": "cpu"}, "results": records}))
    return path


def test_check_refuses_bad_bandwidth_and_duplicate_records(capsys, tmp_path):
    good = _file(tmp_path / "a.json", [_record()])
    for value in ("0", "-1", "nan"):
        assert benchmark.main(["check", str(good), "--bandwidth", value]) == 2
        assert "--bandwidth and --flops must be positive" in one_line_error(capsys)
    twice = _file(tmp_path / "b.json", [_record(), _record()])
    assert benchmark.main(["check", str(twice)]) == 2
    assert "is there twice" in one_line_error(capsys)


@pytest.mark.parametrize("edit, message", [
    ({"context_tokens": 0}, "ZeroDivisionError"),
    ({"ttft_s": "fast"}, "ttft_s is 'fast', not a number"),
    ({"compression_ratio": "half"}, "compression_ratio is 'half', not a number"),
])
def test_check_on_hand_edited_records_is_one_line(edit, message, capsys, tmp_path):
    path = _file(tmp_path / "a.json", [_record(**edit), _record("knorm@0.5", compression_ratio=0.5)],
                 run={"device": "cpu", "architecture": TINY_ARCHITECTURE})
    assert benchmark.main(["check", str(path)]) == 2
    assert message in one_line_error(capsys)


def test_resume_refuses_duplicates_and_mistyped_records(tmp_path):
    twice = _file(tmp_path / "a.json", [_record(), _record()])
    with pytest.raises(UserError, match="twice"):
        ResultFile(twice, {}, resume=True)
    mistyped = _file(tmp_path / "b.json", [_record(ttft_s="fast")])
    with pytest.raises(UserError, match="ttft_s is 'fast', not a number"):
        ResultFile(mistyped, {}, resume=True)


def test_compare_json_into_a_folder_is_one_line(capsys, tmp_path):
    a = _file(tmp_path / "a.json", [_record()])
    assert benchmark.main(["compare", str(a), str(a), "--json", str(tmp_path)]) == 2
    assert "is a directory" in one_line_error(capsys)


def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path, monkeypatch):
    out = ResultFile(tmp_path / "r.json", {"task": "benchmark"})
    out.add(BenchmarkResult.from_dict(_record()))

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "replace", full)
    with pytest.raises(UserError, match=r"No space left on device\): it still holds the 1 records"):
        out.add(BenchmarkResult.from_dict(_record("knorm@0.5")))
    assert [r.method for r in results.load(tmp_path / "r.json")[1]] == ["vanilla"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_typo_in_capacity_methods_answers_without_torch():
    """It imported torch first and answered after 7-12 s."""
    code = ("import sys, benchmark; rc = benchmark.main(['capacity', '--methods', 'knrom@0.5']); "
            "print(rc, 'torch' in sys.modules, 'kvpress' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr[-2000:]
    assert "unknown press 'knrom'" in proc.stderr


def test_inputs_wrong_in_themselves_answer_without_torch(tmp_path):
    """Checks that need neither torch nor a preset ran after cli.resolve had imported torch: each answered in 5-17 s
    on a loaded 2-core machine instead of at once (tools/bad_inputs.py's timings)."""
    cases = [
        ("benchmark", ["capacity", "--budget", "abc"], "budget 'abc' is not a memory size"),
        ("benchmark", ["capacity", "--search-runs", "0"], "--search-runs at least 1"),
        ("benchmark", ["--out", str(tmp_path)], "is a directory; name a JSON file"),
        ("test_long_context", ["--trials", "0"], "--trials must be at least 1"),
        ("test_long_context", ["--questions", "0"], "--questions must be at least 1"),
        ("test_long_context", ["--thinking", "--max-new-tokens", "8"], "--thinking needs --max-new-tokens >= "),
        ("test_long_context", ["--match-kv", "dms-8x"], "pass the file holding its records with --match-from"),
        ("test_long_context", ["--samples", "0"], "--samples must be positive"),
        ("test_long_context", ["--batch", "4"], "quality runs stop at end-of-sequence and are batch 1"),
        ("test_long_context", ["--qa-data", str(tmp_path / "none"), "--tasks", "qa_1"], "none is not a folder"),
        ("test_long_context", ["--qa-data", str(tmp_path), "--tasks", "ruler"], "--qa-data is read by qa_1 and qa_2"),
        ("test_kvpress_api", ["--ratios", "1.5"], "ratio 1.5 must be in (0, 1)"),
        ("test_kvpress_api", ["--ratios", "0.5,0.25,.5"], "--ratios names 0.5 twice"),
        ("test_kvpress_api", ["--context", "1K,2K"], "--context takes one prompt length"),
    ]
    code = ("import contextlib, io, json, sys, benchmark, test_long_context, test_kvpress_api\n"
            "answers = []\n"
            f"for script, argv, _ in {[(s, a, m) for s, a, m in cases]!r}:\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        rc = sys.modules[script].main(argv)\n"
            "    answers.append([rc, err.getvalue()])\n"
            "print(json.dumps([answers, 'torch' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    answers, torch_imported = json.loads(proc.stdout.strip().splitlines()[-1])
    for (script, argv, message), (rc, err) in zip(cases, answers):
        assert rc == 2 and err.startswith("error:") and message in err and err.count("\n") == 1, (script, argv, err)
    assert not torch_imported


def test_capacity_has_no_hidden_batch_option(capsys):
    with pytest.raises(SystemExit) as code:
        benchmark.main(["capacity", "--batch", "4"])
    assert code.value.code == 2
    assert "unrecognized arguments: --batch 4" in one_line_error(capsys)


def test_capacity_budget_too_small_is_refused_up_front(capsys, tmp_path, no_model):
    assert benchmark.main(["capacity", "--preset", "tiny", "--budget", "1B", "--out", str(tmp_path / "c.json")]) == 2
    assert "below 1 MiB" in one_line_error(capsys)


def test_capacity_resumes_an_interrupted_run(tmp_path, monkeypatch, capsys):
    """--resume was hidden and ignored: a capacity file could not be continued. Now the cells in the file are not
    searched again, and the records stay as they were."""
    from kvcompress.run import capacity

    out = tmp_path / "cap.json"
    argv = ["capacity", "--preset", "tiny", "--methods", "vanilla", "--contexts", "256", "--max-new-tokens", "2",
            "--search-tokens", "2", "--max-batch", "2", "--search-runs", "1", "--out", str(out)]
    assert benchmark.main(argv) == 0
    before = json.loads(out.read_text())["results"]
    assert {r["task"] for r in before} == {"capacity", "capacity_context"}

    def searched(*args, **kwargs):
        raise AssertionError("a finished cell was searched again")

    monkeypatch.setattr(capacity, "_cell", searched)
    monkeypatch.setattr(capacity, "longest_context", searched)
    capsys.readouterr()
    assert benchmark.main(argv + ["--resume"]) == 0
    assert "vanilla @ 256 tok: in " in capsys.readouterr().out
    assert json.loads(out.read_text())["results"] == before
    assert benchmark.main(argv[:-2] + ["--budget", "16MiB", "--out", str(out), "--resume"]) == 2
    assert "was written with budget_bytes 8388608, this run has 16777216" in one_line_error(capsys)


def test_a_prompt_past_the_models_positions_is_refused_before_measuring(capsys, tmp_path, monkeypatch):
    """It ran for minutes instead."""
    from kvcompress.run import runner

    def measured(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(runner, "run_cell", measured)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "word " * 2000}) + "\n")  # the tiny byte tokenizer: 10,000 tokens
    assert dms_side_by_side(["--preset", "tiny", "--methods", "vanilla", "--prompts", str(prompts),
                             "--out", str(tmp_path / "o.json")]) == 2
    assert "exceeds tiny's 8192 positions" in one_line_error(capsys)
