"""benchmark.py check: the physics checks pass on a real run and fail when a number is off."""

import json

import pytest

import benchmark
from kvcompress.commands import checks
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
    noise = checks.run_checks(run, results, hardware=True)[4]
    assert noise.passed is False and "IQR 5.0%" in noise.lines[0]


def test_a_cpu_run_passes_its_kv_checks_and_skips_the_hardware_ones_once(tiny_run, capsys):
    assert benchmark.main(["check", str(tiny_run)]) == 0
    printed = capsys.readouterr().out
    assert "1. KV bytes against context x bytes/token: PASS" in printed
    assert printed.count("need a GPU run") == 1
    assert "HBM" not in printed and "tok/s" not in printed and "TFLOP/s" not in printed


def test_layer_parameters_are_the_ones_transformers_builds_for_qwen3_8b():
    """Counted on the real module (meta device: no memory), and Qwen3-8B's model card: 6.95 B non-embedding."""
    import torch
    from transformers import AutoModelForCausalLM

    from kvcompress.models import qwen3_8b_config

    config = qwen3_8b_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    matrices = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    arch = checks.architecture_of(config)
    assert arch["layer_params"] == matrices
    assert abs(arch["layer_params"] - 6.95e9) < 0.01e9


def test_prefill_flops_are_what_torch_counts_on_the_tiny_model(tiny):
    """torch's FLOP counter over a real prefill (eager attention: every matmul visible) against checks' count;
    eager attention computes the full tokens x tokens square, so the counter sees twice the causal triangle."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kvcompress import models

    eager = models.load(models.MODELS["tiny"], device=torch.device("cpu"), attn_implementation="eager")
    tokens = 96
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        eager.model.model(input_ids=torch.zeros(1, tokens, dtype=torch.long))
    linear, attention = checks.prefill_flops(checks.architecture_of(eager.model.config), tokens)
    # the counter also sees RoPE's frequency outer product (2 x head_dim/2 x tokens: 0.007 % here)
    assert counter.get_total_flops() == pytest.approx(linear + 2 * attention, rel=1e-4)
    assert counter.get_total_flops() != pytest.approx(linear + attention, rel=1e-2)  # the causal half is not what eager does


def _reference(tiny_run, tmp_path, name, edit):
    """The tiny run relabelled as another engine's run of the same cells, with `edit` applied to each record."""
    data = json.loads(tiny_run.read_text())
    for r in data["results"]:
        r["engine"] = "reference"
        edit(r)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_engines_check_against_a_reference_run(tiny_run, tmp_path, capsys):
    same = _reference(tiny_run, tmp_path, "same.json", lambda r: None)
    run, results = load(tiny_run)
    engines = checks.run_checks(run, results, references=[(same, load(same)[1])], hardware=True)[5]
    assert engines.passed is True and sum("TTFT +0.0%, decode peak +0 B" in line for line in engines.lines) == 3
    assert not any("ttft_ab.py" in line for line in engines.lines)  # the hint comes only with a TTFT failure

    def slower_reference_with_a_lower_peak(r):
        if r["method"] == "knorm@0.5":
            r["ttft_s"] *= 0.9  # the run checked is 11 % slower to its first token
        if r["method"] == "vanilla":
            r["peak_mem_decode_bytes"] -= 1  # one byte is enough: the decode phase must not peak higher

    off = _reference(tiny_run, tmp_path, "off.json", slower_reference_with_a_lower_peak)
    run, results = load(tiny_run)
    engines = checks.run_checks(run, results, references=[(off, load(off)[1]), (same, load(same)[1])],
                                hardware=True)[5]
    assert engines.passed is False
    lines = {line.split(":")[1].split()[0]: line for line in engines.lines}
    assert "FAIL: TTFT +11.1%" in lines["knorm@0.5"] and "FAIL: decode peak +1 B" in lines["vanilla"]
    assert "FAIL" not in lines["adakv+snapkv@0.5"] and "off.json" in lines["adakv+snapkv@0.5"]  # first file wins
    assert "tools/ttft_ab.py" in engines.lines[-1]


def test_batches_are_checked_against_vanilla_at_the_same_batch(tmp_path, capsys):
    out = tmp_path / "batch.json"
    assert benchmark.main(["--preset", "tiny", "--contexts", "320", "--methods", "vanilla,knorm@0.5", "--batch", "1,3",
                           "--max-new-tokens", "4", "--repeats", "1", "--out", str(out)]) == 0
    run, results = load(out)
    assert sorted(r.batch for r in results) == [1, 1, 3, 3]
    kv = checks.run_checks(run, results)[0]
    assert kv.passed is True, kv.lines
    batched = [line for line in kv.lines if line.startswith("320 x3:")]
    assert len(batched) == 2 and "exact" in batched[0]  # vanilla: three sequences' tokens x bytes/token
    alone = next(r for r in results if r.batch == 1 and r.method == "vanilla")
    together = next(r for r in results if r.batch == 3 and r.method == "vanilla")
    # the needles differ, so the contexts may differ by a token or two: the batch holds their sum
    assert abs(together.kv_cache_bytes - 3 * alone.kv_cache_bytes) <= 3 * 2 * alone.kv_cache_bytes / alone.context_tokens


def test_the_roofline_of_a_batch_is_its_step_bytes_times_the_batch():
    from kvcompress.results import BenchmarkResult

    r = BenchmarkResult(model="m", weights="random", method="vanilla", batch=8, decode_tokens_per_s=100.0,
                        weights_bytes=16 * 10**9, kv_cache_bytes=8 * 10**9, kv_cache_bytes_end=8 * 10**9,
                        target_tokens=8192, context_tokens=8000, input_tokens=8192)
    roofline = checks._roofline([r], 4.3e12, None)
    # a step reads 24 GB and gives 8 tokens: 4.3e12 / 24e9 x 8 = 1433 tok/s; 8 x 100 measured = 55.8 %
    assert "800.0 tok/s = 55.8% of 1433" in roofline.lines[1] and roofline.lines[1].startswith("8192 x8:")


def test_one_slow_repeat_of_the_default_run_does_not_fail_the_noise_check():
    """check flags a cell whose timing IQR exceeds 3 % of its median. With 3 repeats the IQR is half the range, so a
    single repeat 8 % slower than the others read as 4.2 % and failed a GPU run whose other repeats agreed to 0.1 %.
    The default run's repeats must put one outlier outside the quartiles (reference: 5 sorted samples s, IQR = s[3] -
    s[1], which holds no outlier)."""
    from statistics import median

    from kvcompress.commands import benchmark as benchmark_command
    from kvcompress.engine.measure import iqr

    repeats = benchmark_command.build_parser().parse_args([])._defaults.repeats
    samples = [0.300] * (repeats - 1) + [0.325]  # one repeat 8 % slower
    assert iqr(samples) / median(samples) < checks.NOISE_LIMIT
    assert iqr([0.300, 0.301, 0.302, 0.303, 0.325]) == pytest.approx(0.303 - 0.301)


def _dms_pair(dms_positions: int, kv_positions):
    """A hand-made vanilla + native-DMS (hf engine: masked) pair at 124 context tokens of 256 input; the tiny
    architecture: 2 layers x 2 kv heads x head_dim 8 in float32, 256 B per token, 64 B per (layer, head) entry."""
    from kvcompress.results import BenchmarkResult

    common = dict(model="tiny", weights="random", context_tokens=124, input_tokens=256, target_tokens=256,
                  dtype="float32", engine="hf", max_new_tokens=8, task="benchmark")
    vanilla = BenchmarkResult(method="vanilla", kv_cache_bytes=124 * 256, kv_cache_bytes_full=124 * 256,
                              kv_live_bytes=124 * 256, kv_positions=124, **common)
    dms = BenchmarkResult(method="dms-8x", dms_impl="native", kv_tokens_per_head=[[30, 31], [40, 35]],
                          kv_live_bytes=136 * 64, kv_cache_bytes=dms_positions * 256,
                          kv_cache_bytes_full=dms_positions * 256, kv_positions=kv_positions, **common)
    return {"architecture": {"layers": 2, "kv_heads": 2, "head_dim": 8}, "device": "cpu"}, [vanilla, dms]


def test_the_dms_line_names_each_ratio_by_what_it_divides():
    """check printed 'dms-8x ... 0.1328 of vanilla' for live / DMS's own full cache over 256 positions: by hand,
    live / vanilla's held bytes is 136 entries x 64 B / (124 tokens x 256 B) = 8704 / 31744 = 0.2742."""
    run, results = _dms_pair(124, 124)
    kv = checks.run_checks(run, results)[0]
    line = next(line for line in kv.lines if "dms-8x" in line)
    assert kv.passed is True, kv.lines
    assert f"live / vanilla held {8704 / 31744:.4f}" in line and "held / vanilla held 1.0000" in line, line
    assert "124 positions x 256 B (mask, no reclaim) (exact)" in line
    # a file from before kv_positions: DMS read after context + question, and the line says so
    run, results = _dms_pair(256, None)
    line = next(line for line in checks.run_checks(run, results)[0].lines if "dms-8x" in line)
    assert f"live / vanilla held {8704 / 31744:.4f}" in line and "held / vanilla held 2.0645" in line, line
    assert "(measured after 256 positions, vanilla after 124)" in line


def _press_records(context_tokens: int, kept: dict, **fields):
    """Hand-made vanilla + press records on one prompt (tiny architecture: 256 B per token)."""
    from kvcompress.results import BenchmarkResult

    common = dict(model="tiny", weights="random", context_tokens=context_tokens, input_tokens=context_tokens + 10,
                  target_tokens=256, dtype="float32", engine="hf", task="benchmark", **fields)
    records = [BenchmarkResult(method="vanilla", kv_cache_bytes=context_tokens * 256, **common)]
    for method, (ratio, tokens) in kept.items():
        records.append(BenchmarkResult(method=method, compression_ratio=ratio, expected_memory="real",
                                       kv_cache_bytes=tokens * 256, kv_memory_saved=True, **common))
    return records


RUN = {"architecture": {"layers": 2, "kv_heads": 2, "head_dim": 8}, "device": "cpu"}


def test_a_press_is_held_to_kvpress_s_own_rounding():
    """knorm@0.875 on 124 tokens keeps int(124 x 0.125) = 15 (kvpress's compute_n_kept): 0.1210 of vanilla, which
    the 1 % band around 0.125 called a FAIL; one token more or less is a FAIL."""
    assert checks.kvpress_kept(124, 0.875) == 15 and checks.kvpress_kept(3, 0.9) == 1
    kv = checks.run_checks(RUN, _press_records(124, {"knorm@0.875": (0.875, 15), "knorm@0.5": (0.5, 62)}))[0]
    assert kv.passed is True, kv.lines
    assert "kvpress keeps int(124 x 0.125) = 15 tokens; held 15) ok" in kv.lines[1]
    for wrong in (14, 16):
        assert checks.run_checks(RUN, _press_records(124, {"knorm@0.875": (0.875, wrong)}))[0].passed is False


def test_each_prompt_is_checked_against_its_own_vanilla():
    """A long-context file: two tasks at one length, 892 and 902 context tokens; knorm@0.5 of the second held 451
    tokens, which against the first prompt's vanilla (892) read as 0.5056 of vanilla: a FAIL."""
    records = (_press_records(892, {"knorm@0.5": (0.5, 446)}, task_family="niah", prompt_id="niah/0")
               + _press_records(902, {"knorm@0.5": (0.5, 451)}, task_family="vt", prompt_id="vt/0"))
    kv = checks.run_checks(RUN, records)[0]
    assert kv.passed is True, kv.lines
    assert [line.split(":")[0] for line in kv.lines] == ["256 niah/0"] * 2 + ["256 vt/0"] * 2


def test_the_h200_limits_on_another_gpu_are_named_not_used_silently(tiny_run):
    run, results = load(tiny_run)
    a100 = dict(run, gpu="NVIDIA A100-SXM4-80GB")  # a card with no limits measured here
    roofline, compute = checks.run_checks(a100, results, hardware=True)[2:4]
    for check in (roofline, compute):
        assert check.lines[0].startswith("note:") and "A100" in check.lines[0] and "--bandwidth" in check.lines[0]
    assert "4.3 TB/s" in roofline.name and "790 TFLOP/s" in compute.name
    roofline = checks.run_checks(dict(run, gpu="NVIDIA H200"), results, hardware=True)[2]
    assert not roofline.lines[0].startswith(("note:", "limits:")) and "4.3 TB/s" in roofline.name
    own = checks.run_checks(a100, results, bandwidth=1.9e12, flops=300e12, hardware=True)[2]
    assert "1.9 TB/s" in own.name and not own.lines[0].startswith("note:")


def test_an_h100_run_is_held_against_the_h100s_measured_limits(tiny_run):
    """tools/device_limits.py on an H100 80GB HBM3 (session f): copy 2.99 TB/s, bf16 754 TFLOP/s."""
    run, results = load(tiny_run)
    h100 = dict(run, gpu="NVIDIA H100 80GB HBM3")
    roofline, compute = checks.run_checks(h100, results, hardware=True)[2:4]
    assert "3.0 TB/s" in roofline.name and "754 TFLOP/s" in compute.name
    assert all(c.lines[0].startswith("limits: NVIDIA H100 80GB HBM3's") for c in (roofline, compute))
    at_h200 = checks.run_checks(h100, results, bandwidth=4.3e12, flops=790e12, hardware=True)[2]
    assert "4.3 TB/s" in at_h200.name and not at_h200.lines[0].startswith(("note:", "limits:"))
    ceiling = lambda check: [line for line in check.lines if "tok/s =" in line]  # noqa: E731
    assert ceiling(roofline) and ceiling(roofline) != ceiling(at_h200)  # the H100's ceiling is lower: higher shares
