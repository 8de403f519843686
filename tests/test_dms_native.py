"""Native DMS (kvcompress/methods/dms.py) on the hf engine against an independent brute-force reference
(tests/dms_reference.py), on the tiny Qwen3 with DMS config fields (window 16, so prompts evict in prefill and decode)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dms_reference import BruteForceDMS, prompt_ids as _ids
from kvcompress.engine import GenerationSettings, generate_once, measure
from kvcompress.engine.generate import HFDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.methods import dms, parse_method

ROOT = Path(__file__).resolve().parents[1]
STEPS = 33  # greedy tokens compared (32 decode steps after the first token)



def _native_trace(lm, params, ids, tokens):
    """Teacher-forced through the patch: live positions after the prefill and after each fed token."""
    cache = dms.MaskedDMSCache(params.window)
    lives = []
    with torch.inference_mode(), dms.DMSPatch(params)(lm.model):
        lm.model(input_ids=ids, past_key_values=cache, use_cache=True)
        lives.append(cache.live_positions())
        for i, token in enumerate(tokens[:-1]):
            position = torch.tensor([[ids.shape[1] + i]])
            lm.model(input_ids=torch.tensor([[token]]), past_key_values=cache, position_ids=position, use_cache=True)
            lives.append(cache.live_positions())
    return lives


def _settings(n=STEPS):
    return GenerationSettings(n, SamplingConfig(greedy=True), query_aware=True)


@pytest.mark.parametrize("calibrated", [False, True], ids=["checkpoint-rule", "calibrated"])
def test_hf_engine_matches_brute_force_reference(tiny, long_prompt, calibrated):
    params = dms.DMSParams.from_config(tiny.model.config)
    if calibrated:
        params = dms.calibrate(tiny.model, _ids(long_prompt), params, 0.875)
    thresholds = params.threshold.tolist() if calibrated else None
    reference = BruteForceDMS(tiny.model, params.window, params.alpha_scale, params.alpha_offset, thresholds)
    want_tokens, want_lives = reference.greedy(_ids(long_prompt)[0].tolist(), STEPS)
    method = dataclasses.replace(parse_method("dms-8x"), params=params)
    got = generate_once(tiny, method, long_prompt, _settings(), HFDecoder())
    assert got.token_ids == want_tokens
    got_lives = _native_trace(tiny, params, _ids(long_prompt), got.token_ids)
    assert len(got_lives) == STEPS
    for step, (g, w) in enumerate(zip(got_lives, want_lives)):
        assert g == w, f"live positions differ after {step} fed tokens"
    # eviction really happened, in prefill and in decode, and heads differ
    n = _ids(long_prompt).shape[1]
    prefill_counts = [len(h) for layer in want_lives[0] for h in layer]
    assert max(prefill_counts) < n - params.window
    end = [len(h) for layer in want_lives[-1] for h in layer]
    assert max(end) < n + STEPS - 1 - params.window and len(set(end)) > 1
    assert got.kv_after.tokens_per_head == [[len(h) for h in layer] for layer in want_lives[0]]
    assert got.kv_end.tokens_per_head == [[len(h) for h in layer] for layer in want_lives[-1]]


def test_decision_channel_is_zeroed_before_attention(tiny, long_prompt, monkeypatch):
    seen = []
    real = dms.prefill_attention

    def spy(q, k, v, marked, window, scale, flex=None):
        seen.append(q.detach().clone())
        return real(q, k, v, marked, window, scale, flex)

    monkeypatch.setattr(dms, "prefill_attention", spy)
    params = dms.DMSParams.from_config(tiny.model.config)
    with torch.inference_mode(), dms.DMSPatch(params)(tiny.model):
        tiny.model(input_ids=_ids(long_prompt), past_key_values=dms.MaskedDMSCache(params.window), use_cache=True)
    group = tiny.model.config.num_attention_heads // tiny.model.config.num_key_value_heads
    assert len(seen) == tiny.model.config.num_hidden_layers
    for q in seen:
        assert torch.all(q[:, ::group, :, -1] == 0)  # the decision carrier: zero after RoPE
        assert torch.all(q[:, 1::group, :, -1].abs().sum() > 0)  # the other heads keep their last channel


def test_a_marked_token_is_seen_at_age_window_and_gone_at_window_plus_one():
    """On the cache: token 0 marked in prefill, nothing else; fed one token at a time (the reference's ring of
    window + 1 entries evicts token p - window - 1 when token p arrives)."""
    window, d = 4, 8
    cache = dms.MaskedDMSCache(window)
    keys = torch.randn(1, 1, 3, d)
    marked = torch.tensor([[[True, False, False]]])
    cache.dms_prefill_layer(0, keys, keys.clone(), marked)
    ages = {}
    for p in range(3, 9):  # feed positions 3..8; the decision each brings marks the previous token: keep
        cache.dms_decode_layer(0, torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d), torch.tensor([[False]]))
        ages[p - 0] = 0 in cache.live_positions()[0][0]
    assert ages[window] is True and ages[window + 1] is False and ages[window + 2] is False
    assert all(ages[a] for a in ages if a <= window)
    # a decision made by the newest token marks the token before it: gone window + 1 positions later
    cache.dms_decode_layer(0, torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d), torch.tensor([[True]]))
    newest = cache.marked[0].shape[-1] - 1
    assert cache.marked[0][0, 0, newest - 1] and not cache.marked[0][0, 0, newest]


def test_visible_rule_at_the_boundary():
    window = 16
    q = torch.tensor(100)
    marked = torch.tensor(True)
    assert dms.visible(q, q - window, marked, window)
    assert not dms.visible(q, q - window - 1, marked, window)
    assert dms.visible(q, q - window - 1, torch.tensor(False), window)
    assert not dms.visible(q, q + 1, torch.tensor(False), window)


def test_kv_bytes_are_live_entries_times_entry_bytes(tiny, long_prompt):
    new = 9
    method = parse_method("dms-8x").prepare(tiny, long_prompt)
    r = measure(tiny, method, long_prompt, _settings(new), HFDecoder(), repeats=1, warmup=False)
    c = tiny.model.config
    entry = 2 * c.head_dim * 4  # K and V of one token of one kv head, float32
    n = long_prompt.input_tokens
    assert r.kv_live_bytes == sum(map(sum, r.kv_tokens_per_head)) * entry
    assert r.kv_live_bytes_end == sum(map(sum, r.kv_tokens_per_head_end)) * entry
    # the hf engine masks: every entry is still allocated (no reclaim)
    assert r.kv_cache_bytes == n * c.num_hidden_layers * c.num_key_value_heads * entry
    assert r.kv_cache_bytes_full == r.kv_cache_bytes and r.kv_memory_saved is False
    assert r.kv_live_bytes < r.kv_cache_bytes


@pytest.mark.parametrize("target", [0.875, 0.5])
def test_calibration_hits_the_requested_fraction(tiny, tiny_prompt, target):
    ids = _ids(tiny_prompt)  # ~400 tokens: ~380 outside the window per head
    params = dms.calibrate(tiny.model, ids, dms.DMSParams.from_config(tiny.model.config), target)
    assert params.decisions == f"calibrated to evict {target:g} of tokens outside the window"
    cache = dms.MaskedDMSCache(params.window)
    with torch.inference_mode(), dms.DMSPatch(params)(tiny.model):
        tiny.model(input_ids=ids, past_key_values=cache, use_cache=True)
    n = ids.shape[1]
    outside = n - 1 - params.window  # tokens 0 .. n-2-window have left the last query's window
    for layer in cache.marked:
        fractions = layer[0, :, :outside].float().mean(-1)
        assert torch.all((fractions - target).abs() <= 0.01), fractions


def test_runner_records_say_how_dms_ran(tiny, long_prompt):
    from kvcompress.run.runner import run_cell
    from kvcompress.tasks.cell import Cell

    cell = Cell(None, text="x", prompt_id="p")
    settings = _settings(4)
    r = run_cell(tiny, parse_method("dms-8x"), long_prompt, None, cell, settings, 1, {"hf": HFDecoder()}, "t")
    assert r.error is None and r.dms_impl == "native" and r.dms_layout == "mask, no reclaim"
    assert r.dms_decisions == "calibrated to evict 0.875 of tokens outside the window"  # random weights
    r = run_cell(tiny, parse_method("dms-8x[evict=0.5]"), long_prompt, None, cell, settings, 1, {"hf": HFDecoder()},
                 "t")
    assert r.method == "dms-8x[evict=0.5]" and r.dms_decisions.startswith("calibrated to evict 0.5 ")


def test_method_grammar():
    from kvcompress.errors import UserError

    assert parse_method("dms-8x").dms_impl == "native" and parse_method("dms-8x-remote").dms_impl == "remote"
    assert parse_method("dms-8x[evict=0.25]").options == {"evict": 0.25}
    with pytest.raises(UserError, match="fraction in"):
        parse_method("dms-8x[evict=1.5]")
    with pytest.raises(UserError, match="no option 'window'"):
        parse_method("dms-8x[window=3]")
    with pytest.raises(UserError, match="no option"):
        parse_method("dms-8x-remote[evict=0.5]")


@pytest.mark.parametrize("kind", ["single", "split"])
def test_flex_block_mask_paths_equal_the_chunked_path(kind):
    """The CUDA paths (FlexAttention with block masks from block indices: one kernel, or the window band plus the
    compacted unmarked keys merged by log-sum-exp), run eagerly here, against the exact CPU path: lengths that are
    not multiples of the block, windows below, at and above a block, nothing / half / 7/8 / everything marked."""
    (_, _), (full, _) = dms._block_layout(600, 300, dms.FLEX_BLOCK, "cpu")
    assert int(full.sum()) > 0  # the 600/300 case below has blocks wholly inside the window (skipped rule)
    torch.manual_seed(0)
    cases = ((300, 16, 0.5), (600, 300, 0.875), (129, 128, 0.5), (700, 100, 0.0), (400, 50, 1.0))
    for length, window, fraction in cases:
        q, k, v = torch.randn(1, 4, length, 32), torch.randn(1, 2, length, 32), torch.randn(1, 2, length, 32)
        marked = torch.rand(1, 2, length) < fraction
        flex = dms._flex_prefill(q, k, v, marked, window, 32 ** -0.5, compiled=False, kind=kind)
        chunked = dms._chunked_prefill(q, k, v, marked, window, 32 ** -0.5)
        torch.testing.assert_close(flex, chunked, atol=1e-5, rtol=1e-5)


def test_split_prefill_visits_few_blocks_at_the_target():
    """At 32K with 7/8 of the keys marked, the split path's two kernels visit ~1/6 of the causal blocks."""
    length, window = 32768, 512
    marked = torch.rand(1, 8, length, generator=torch.Generator().manual_seed(0)) < 0.875
    split = dms.SplitFlexPrefill(length, window, 4, 8, "cpu", compiled=False)
    _, far = split.far_mask(marked)
    n = length // dms.FLEX_BLOCK
    causal = n * (n + 1) / 2
    band = (split.band.kv_num_blocks.float().mean() + split.band.full_kv_num_blocks.float().mean()).item() * n
    far_blocks = (far.kv_num_blocks.float().mean() + far.full_kv_num_blocks.float().mean()).item() * n
    assert band / causal < 0.05 and 0.1 < far_blocks / causal < 0.15


def test_kvpress_import_alters_neither_vanilla_nor_native_dms():
    """`import kvpress` patches transformers' attention functions globally. Vanilla must not change (presses and
    vanilla are measured in the main process, the DMS checkpoint's remote code in its own), nor native DMS, which runs
    next to the presses and calls none of them: same greedy tokens and logits before and after, in a fresh process."""
    script = """
import json, sys, torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from kvcompress import models
from kvcompress.engine import GenerationSettings, generate_once
from kvcompress.engine.generate import HFDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.methods import parse_method, dms
from kvcompress.tasks import niah
torch.set_num_threads(1)
lm = models.load(models.MODELS["tiny"], device=torch.device("cpu"))
prompt = niah.build_prompt(lm.tokenizer, 300, 0.5, niah.make_needle("single", 0)).prompt
ids = torch.cat([prompt.context_ids, prompt.question_ids], 1)
def vanilla():
    with torch.inference_mode():
        logits = lm.model(input_ids=ids).logits[0, -1]
    settings = GenerationSettings(12, SamplingConfig(greedy=True))
    return generate_once(lm, parse_method("vanilla"), prompt, settings, HFDecoder()).token_ids, logits
def native_dms():
    method = parse_method("dms-8x").prepare(lm, prompt)
    with torch.inference_mode(), dms.DMSPatch(method.params)(lm.model):
        logits = lm.model(input_ids=ids, past_key_values=dms.MaskedDMSCache(16)).logits[0, -1]
    settings = GenerationSettings(12, SamplingConfig(greedy=True), query_aware=True)
    return generate_once(lm, method, prompt, settings, HFDecoder()).token_ids, logits
before, sdpa = {"vanilla": vanilla(), "dms": native_dms()}, ALL_ATTENTION_FUNCTIONS["sdpa"]
import kvpress
after = {"vanilla": vanilla(), "dms": native_dms()}
print(json.dumps({"patched": ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa, **{
    name: {"tokens": [before[name][0], after[name][0]], "logits_equal": bool(torch.equal(before[name][1],
                                                                                      after[name][1]))}
    for name in before}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["patched"]  # kvpress really replaced the attention function...
    for name in ("vanilla", "dms"):  # ...and neither method changed
        assert out[name]["tokens"][0] == out[name]["tokens"][1] and out[name]["logits_equal"], (name, out[name])


def test_a_dms_checkpoint_loads_with_the_vanilla_class(tiny):
    """The tiny DMS fixture is shaped like nvidia/Qwen3-8B-DMS-8x's repository (auto_map to remote code, dms_* in
    config.json, no pad_token_id): native loading ignores the remote code and reads the fields."""
    from transformers import Qwen3ForCausalLM

    from kvcompress import models

    lm = models.load_dms_native(models.MODELS["tiny-dms"], device=torch.device("cpu"))
    assert type(lm.model) is Qwen3ForCausalLM  # transformers' own class, not transformers_modules.*
    assert lm.model.config.dms_window_size == 64 and lm.model.config.pad_token_id == lm.tokenizer.pad_token_id
    assert any("pad_token_id" in note for note in lm.notes)
    for name, weight in tiny.model.state_dict().items():  # DMS adds no weights
        assert torch.equal(weight, lm.model.state_dict()[name]), name
    assert dms.DMSParams.from_config(lm.model.config).window == 64


def test_with_pretrained_weights_the_runner_loads_the_dms_checkpoint_after_the_others(tiny, tmp_path, monkeypatch):
    from kvcompress import cli, models
    from kvcompress.run import runner

    pretrained = dataclasses.replace(tiny, weights="pretrained")  # as Qwen3-8B from the Hub: no shared model
    monkeypatch.setattr(models, "load", lambda *a, **k: pretrained)
    args = cli.parser("t", "t").parse_args(["--preset", "tiny", "--methods", "vanilla,dms-8x", "--contexts", "300",
                                            "--dms-model", "tiny-dms", "--repeats", "1", "--max-new-tokens", "3",
                                            "--out", str(tmp_path / "o.json")])
    from kvcompress.tasks.cell import Cell

    out = runner.run(cli.resolve(args, "t"), [Cell(300, prompt_id="p")], task="t")
    records = {r.method: r for r in out.results}
    assert records["vanilla"].model == "tiny" and records["dms-8x"].model == "tiny-dms"
    assert records["dms-8x"].error is None and records["dms-8x"].process == "main"
    assert out.run["dms_model"] == "tiny-dms"


def test_dms_impl_remote_maps_the_method():
    from kvcompress import cli
    from kvcompress.errors import UserError

    args = cli.parser("t", "t").parse_args(["--preset", "tiny", "--methods", "vanilla,dms-8x", "--dms-impl", "remote",
                                            "--dms-model", "tiny-dms"])
    assert [m.name for m in cli.resolve(args, "t").methods] == ["vanilla", "dms-8x-remote"]
    args = cli.parser("t", "t").parse_args(["--preset", "tiny", "--methods", "dms-8x[evict=0.5]", "--dms-impl",
                                            "remote"])
    with pytest.raises(UserError, match="drop dms-8x's"):
        cli.resolve(args, "t")


@pytest.mark.parametrize("kind", ["single", "split"])
def test_the_model_through_the_flex_path_generates_what_the_chunked_path_does(tiny, long_prompt, monkeypatch, kind):
    """The whole patched model with the CUDA prefill path (KVCOMPRESS_FORCE_FLEX: flex eagerly on CPU, kernels
    cached per prompt shape as on CUDA): same tokens and live counts as the exact path, two generations in a row."""
    method = parse_method("dms-8x").prepare(tiny, long_prompt)
    want = generate_once(tiny, method, long_prompt, _settings(12), HFDecoder())
    monkeypatch.setenv("KVCOMPRESS_FORCE_FLEX", "1")
    monkeypatch.setenv("KVCOMPRESS_DMS_PREFILL", kind)
    for _ in range(2):  # the second reuses the cached kernel object and its buffers
        got = generate_once(tiny, method, long_prompt, _settings(12), HFDecoder())
        assert got.token_ids == want.token_ids
        assert got.kv_after.tokens_per_head == want.kv_after.tokens_per_head
        assert got.kv_end.tokens_per_head == want.kv_end.tokens_per_head


def test_a_batch_keeps_for_each_row_what_the_reference_keeps_for_that_sequence_alone(tiny, monkeypatch):
    """hf engine, a batch of three prompts of different lengths (rows padded to the longest): after the decode,
    each row's live positions per (layer, kv head) are those the brute-force reference keeps for that sequence
    alone; the calibrated decisions used each row's own positions (RoPE and tie-break), not its padded column."""
    from dms_reference import batch_prompts
    from kvcompress.engine.batch import generate_batch

    prompts = batch_prompts(tiny.tokenizer)
    method = parse_method("dms-8x").prepare(tiny, prompts[0])  # calibrated on sequence 0's prompt
    params = method.params
    finals, positions = [], []
    real_decode, real_evicts = HFDecoder.decode_batch, dms.evicts

    def keep_final(*args, **kwargs):
        n, final = real_decode(*args, **kwargs)
        finals.append(final)
        return n, final

    def watch(logits, layer, p, rows=None):
        if logits.shape[0] > 1 and layer == 0:
            positions.append(rows.flatten().tolist())
        return real_evicts(logits, layer, p, rows)

    monkeypatch.setattr(HFDecoder, "decode_batch", keep_final)
    monkeypatch.setattr(dms, "evicts", watch)
    steps = 9
    g = generate_batch(tiny, method, prompts, GenerationSettings(steps, SamplingConfig(greedy=True)), HFDecoder())
    lengths = [p.input_tokens for p in prompts]
    assert positions == [[n + s for n in lengths] for s in range(steps - 1)]
    reference = BruteForceDMS(tiny.model, params.window, params.alpha_scale, params.alpha_offset,
                              params.threshold.tolist())
    final = finals[0]
    for b, prompt in enumerate(prompts):
        _, want = reference.forward(_ids(prompt)[0].tolist() + g.batch_token_ids[b][:-1])
        assert final.live_positions(row=b) == want, f"row {b}"
        assert max(len(h) for layer in want for h in layer) < lengths[b] + steps - 1 - params.window  # evicted


def test_a_batch_record_on_the_hf_engine_passes_the_kv_bytes_check(tmp_path, tiny):
    """benchmark.py --batch 2 --engine hf: the dms-8x row has figures, holds every position of both sequences (mask,
    no reclaim), and the KV-bytes check says so; one entry more and it fails."""
    import benchmark
    from kvcompress.commands import checks
    from kvcompress.results import load

    out = tmp_path / "run.json"
    assert benchmark.main(["--preset", "tiny", "--contexts", "320", "--methods", "vanilla,dms-8x", "--engine", "hf",
                           "--max-new-tokens", "6", "--repeats", "1", "--batch", "2", "--out", str(out)]) == 0
    run, results = load(out)
    r = next(r for r in results if r.method == "dms-8x")
    assert r.error is None and r.batch == 2 and r.aggregate_decode_tokens_per_s and r.dms_layout == "mask, no reclaim"
    vanilla = next(r for r in results if r.method == "vanilla")
    # at the same positions as vanilla's, each sequence's context: held (masked, nothing reclaimed) = vanilla's
    assert r.kv_cache_bytes == r.kv_cache_bytes_full == vanilla.kv_cache_bytes and r.kv_positions == vanilla.kv_positions
    assert r.kv_live_bytes < r.kv_cache_bytes
    kv_check = checks.run_checks(run, results)[0]
    assert kv_check.passed is True, kv_check.lines
    r.kv_cache_bytes += 2 * tiny.model.config.head_dim * tiny.model.dtype.itemsize
    assert checks.run_checks(run, results)[0].passed is False


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_dms_kv_is_read_after_the_context_as_every_other_method_s(tiny, long_prompt, engine):
    """Every method's KV bytes at the same positions: vanilla's are read after the context; DMS's timed prefill takes
    the question too (one prefill per cache) and was read after it, so on the tiny run dms-8x 'held' more than
    vanilla (0.5 vs 0.2 MiB at 256). Its bytes now come after the context alone: held by formula (hf: every
    position, masked; fast: live + the reserve), live = what the brute-force reference keeps of the context."""
    from kvcompress.engine.fast.decoder import FastDecoder

    decoder = HFDecoder() if engine == "hf" else FastDecoder(tiny)
    settings = GenerationSettings(9, SamplingConfig(greedy=True))
    params = dms.DMSParams.from_config(tiny.model.config)
    r = measure(tiny, dataclasses.replace(parse_method("dms-8x"), params=params), long_prompt, settings, decoder,
                repeats=1, warmup=False)
    vanilla = measure(tiny, parse_method("vanilla"), long_prompt, settings, decoder, repeats=1, warmup=False)
    c = tiny.model.config
    n, heads = long_prompt.context_tokens, c.num_hidden_layers * c.num_key_value_heads
    entry = 2 * c.head_dim * tiny.model.dtype.itemsize  # K and V of one token of one kv head
    assert vanilla.kv_cache_bytes == n * heads * entry
    reference = BruteForceDMS(tiny.model, params.window, params.alpha_scale, params.alpha_offset)
    _, want = reference.forward(long_prompt.context_ids[0].tolist())
    assert r.kv_tokens_per_head == [[len(h) for h in layer] for layer in want]
    live = sum(map(sum, r.kv_tokens_per_head))
    assert r.kv_live_bytes == live * entry < vanilla.kv_cache_bytes  # DMS evicted inside the context
    assert r.kv_compression_achieved == pytest.approx(1 - live / heads / n)
    held = n * heads * entry if engine == "hf" else (live + (settings.max_new_tokens - 1) * heads) * entry
    assert r.kv_cache_bytes == held
    assert r.kv_cache_bytes_full == vanilla.kv_cache_bytes and r.kv_positions == vanilla.kv_positions == n
