"""Quantized KV caches as methods (methods/quantized.py): the grammar, the protocol, and on the tiny model the hf
engine's cache holding exactly the formula's bytes by part, alone and after a press."""

from __future__ import annotations

import json

import pytest
import torch

import benchmark
from kvcompress.commands import checks
from kvcompress.engine.generate import GenerationSettings, HFDecoder, generate_once
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.errors import UserError
from kvcompress.methods import parse_method
from kvcompress.methods.quant_spec import QuantSpec
from kvcompress.results import load

from conftest import one_line_error

SETTINGS = GenerationSettings(6, SamplingConfig(greedy=True))


@pytest.mark.parametrize("text, name, inner, spec", [
    ("fp8", "fp8", "vanilla", QuantSpec("fp8")),
    ("vanilla+fp8[scale=head]", "fp8[scale=head]", "vanilla", QuantSpec("fp8", scale="head")),
    ("int4", "int4[group=32,window=128]", "vanilla", QuantSpec("int4", group=32, window=128)),
    ("int2[window=0,group=64]", "int2[group=64,window=0]", "vanilla", QuantSpec("int2", group=64, window=0)),
    ("knorm@0.5+fp8", "knorm@0.5+fp8", "knorm@0.5", QuantSpec("fp8")),
    ("snapkv@0.875+int4", "snapkv@0.875+int4[group=32,window=128]", "snapkv@0.875", QuantSpec("int4", 32, 128)),
    ("dms-8x+fp8", "dms-8x+fp8", "dms-8x", QuantSpec("fp8")),
    ("knorm@2048tok+int4[group=16]", "knorm@2048tok+int4[group=16,window=128]", "knorm@2048tok",
     QuantSpec("int4", 16, 128)),
])
def test_a_format_follows_any_method(text, name, inner, spec):
    m = parse_method(text)
    assert (m.name, m.inner.name, m.spec) == (name, inner, spec)
    assert m.compression_ratio == m.inner.compression_ratio
    assert m.single_prefill == m.inner.single_prefill
    assert not m.shares_prefill  # decode tokens are quantized as they come: no shared prefix to crop back to


@pytest.mark.parametrize("text, message", [
    ("fp8@0.5", "take no ratio"), ("int4[group=3]", "power of two"), ("int4[bits=3]", "no option 'bits'"),
    ("fp8[scale=token]", "layer or head"), ("int2[window=-1]", ">= 0"), ("knorm@0.5+int4+fp8", "two KV formats"),
    ("decoding+knorm[compression_interval=8,target_size=64]+int4", "decoding-phase press"),
    ("dms-8x-remote+fp8", "native dms-8x"), ("nosuchpress@0.5+fp8", "unknown press"),
    ("knorm@64MiB+fp8", "token budget"), ("int3", "KV formats .* fp8, int4, int2$"),
])
def test_bad_formats_are_one_line_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_method(text)


@pytest.fixture(scope="module")
def fast(tiny):
    from kvcompress.engine.fast.decoder import FastDecoder

    return FastDecoder(tiny)


def test_the_fast_engine_refuses_what_it_does_not_store_in_one_line(fast):
    for name, words in (("dms-8x+int4", "native DMS's cache in int4"),
                        ("adakv+snapkv@0.5+int2", "no mask of hidden entries in a int2 cache")):
        reason = parse_method(name).engine_problem(fast)
        assert reason and "\n" not in reason and words in reason, reason
        assert parse_method(name).engine_problem(HFDecoder()) is None
    for name in ("knorm@0.5+fp8", "dms-8x+fp8", "int4", "knorm@0.5+int2", "adakv+snapkv@0.5+fp8"):
        assert parse_method(name).engine_problem(fast) is None, name


@pytest.mark.parametrize("name", ["int4[group=16,window=32]", "int2[group=16,window=0]",
                                  "knorm@0.5+int4[group=16,window=16]", "snapkv@0.75+int2[group=8,window=8]"])
def test_fast_int_decodes_the_hf_engines_tokens_from_packed_codes(tiny, tiny_prompt, fast, name):
    """int4 / int2 on the fast engine (engine/fast/int_decode_state.py): packed codes, float16 scales and zero
    points for the capacity's quantized tokens, and a bf16 ring of window + group slots; 24 greedy tokens (a group
    flushed every `group` steps) as the hf engine's, from the buffers' own bytes by part (torch twins on CPU; the
    Triton kernels: tests/kernel_check.py, interpreted)."""
    method = parse_method(name)
    settings = GenerationSettings(24, SamplingConfig(greedy=True))
    reference = generate_once(tiny, method, tiny_prompt, settings, HFDecoder())
    got = generate_once(tiny, method, tiny_prompt, settings, fast)
    assert got.token_ids == reference.token_ids
    assert got.kv_end.tokens_per_layer == reference.kv_end.tokens_per_layer
    c, spec, state = tiny.model.config, method.spec, fast.state
    assert all(layer.key_codes.dtype == torch.uint8 for layer in state.layers)
    layers = c.num_hidden_layers
    want = {"data": 0, "scales": 0, "window": 0}
    for capacity in state.capacities:
        one = spec.bytes_parts(1, c.num_key_value_heads, c.head_dim, capacity)
        want["data"] += one["data"]
        want["scales"] += one["scales"]
        want["window"] += 2 * c.num_key_value_heads * (spec.window + spec.group) * c.head_dim * tiny.dtype.itemsize
    assert got.kv_end.parts == want and len(state.capacities) == layers
    assert got.kv_end.bytes == sum(want.values())
    assert got.kv_end.full_bytes == reference.kv_end.full_bytes


def test_a_fast_int_batch_decodes_what_each_sequence_decodes_alone(tiny, fast):
    """Rows that hold different lengths after the press: each row its own quantized part and ring, no pads."""
    from kvcompress.engine.batch import generate_batch
    from kvcompress.tasks.cell import Cell

    prompts = Cell(target_tokens=400, needle_seed=0).build_batch(tiny.tokenizer, 3)[0]
    method = parse_method("knorm@0.5+int4[group=8,window=8]")
    settings = GenerationSettings(16, SamplingConfig(greedy=True))
    alone = [generate_once(tiny, method, p, settings, HFDecoder()).token_ids for p in prompts]
    batch = generate_batch(tiny, method, prompts, settings, fast)
    assert batch.batch_token_ids == alone
    assert len({tuple(t) for t in alone}) > 1
    assert len(set(fast.state.lengths[0].tolist())) > 1  # ragged rows: layer 0's rows hold different lengths


@pytest.mark.parametrize("name", ["fp8", "fp8[scale=head]", "knorm@0.5+fp8", "adakv+snapkv@0.5+fp8"])
def test_fast_fp8_decodes_the_hf_engines_tokens_from_fp8_buffers(tiny, tiny_prompt, fast, name):
    """The fast engine's buffers hold e4m3 codes (1 byte an element): bytes = codes + scales for the capacity it
    allocates (kept + n_new - 1 tokens), exactly; the tokens are the hf engine's (torch twins on CPU; the Triton
    kernels: tests/kernel_check.py, interpreted)."""
    method = parse_method(name)
    settings = GenerationSettings(12, SamplingConfig(greedy=True))
    reference = generate_once(tiny, method, tiny_prompt, settings, HFDecoder())
    got = generate_once(tiny, method, tiny_prompt, settings, fast)
    assert got.token_ids == reference.token_ids
    state = fast.state
    assert all(k.dtype == torch.float8_e4m3fn for k in state.keys + state.values)
    c = tiny.model.config
    capacity = state.capacities[0]
    assert len(set(state.capacities)) == 1
    one = method.spec.bytes_parts(1, c.num_key_value_heads, c.head_dim, capacity, tiny.dtype.itemsize)
    assert got.kv_end.parts == {k: v * c.num_hidden_layers for k, v in one.items()}
    assert got.kv_end.bytes == sum(got.kv_end.parts.values())
    assert got.kv_end.full_bytes == reference.kv_end.full_bytes


def test_a_fast_fp8_batch_decodes_what_each_sequence_decodes_alone(tiny, fast):
    """Rows that keep different lengths after the press (padded rows, pads hidden), each with its own scales."""
    from kvcompress.engine.batch import generate_batch
    from kvcompress.tasks.cell import Cell

    prompts = Cell(target_tokens=400, needle_seed=0).build_batch(tiny.tokenizer, 3)[0]
    method = parse_method("knorm@0.5+fp8")
    settings = GenerationSettings(8, SamplingConfig(greedy=True))
    alone = [generate_once(tiny, method, p, settings, HFDecoder()).token_ids for p in prompts]
    batch = generate_batch(tiny, method, prompts, settings, fast)
    assert batch.batch_token_ids == alone
    assert len({tuple(t) for t in alone}) > 1
    assert fast.state.scales[0][0].shape == (3, 1)
    assert fast.state.signature[1]  # ragged: the validity mask hides the pads


@pytest.mark.parametrize("name", ["fp8", "fp8[scale=head]", "int4[group=16,window=32]", "int2[group=32,window=64]",
                                  "knorm@0.5+fp8", "snapkv@0.75+int4[group=16,window=16]"])
def test_bytes_are_the_formula_by_part_on_the_tiny_model(tiny, tiny_prompt, name):
    """After the prefill (every layer settled) and at the end of decoding."""
    method = parse_method(name)
    g = generate_once(tiny, method, tiny_prompt, SETTINGS, HFDecoder())
    c = tiny.model.config
    for state, tokens in ((g.kv_after, g.kv_after.tokens_per_layer), (g.kv_end, g.kv_end.tokens_per_layer)):
        assert len(set(tokens)) == 1
        one = method.spec.bytes_parts(1, c.num_key_value_heads, c.head_dim, int(tokens[0]), tiny.dtype.itemsize)
        assert state.parts == {k: v * c.num_hidden_layers for k, v in one.items()}
        assert state.bytes == sum(state.parts.values())
    kept = g.kv_after.tokens_per_layer[0]
    expected_kept = tiny_prompt.context_tokens * (1 - (method.compression_ratio or 0))
    assert abs(kept - expected_kept) <= 1
    assert g.kv_after.parts["data"] > 0  # something really is quantized


def test_fidelity_orders_fp8_before_int2_on_the_tiny_model(tiny, tiny_prompt):
    """fp8 barely moves the logits; int2 moves them more (the tiny model's greedy tokens may still agree)."""
    from kvcompress.engine.fidelity import compare, continuation_logprobs

    ids = torch.cat([tiny_prompt.context_ids, tiny_prompt.question_ids], 1)
    ctx, cont = ids[:, :300], ids[:, 300:340]
    ref = continuation_logprobs(tiny, parse_method("vanilla"), ctx, cont)
    scores = {m: compare(ref, continuation_logprobs(tiny, parse_method(m), ctx, cont), cont)
              for m in ("vanilla", "fp8", "int2[window=0]")}
    assert scores["vanilla"].kl_mean == 0 and scores["vanilla"].top1_agreement == 1
    assert 0 < scores["fp8"].kl_mean < scores["int2[window=0]"].kl_mean


def test_check_verifies_the_parts_and_fails_one_off(tmp_path):
    out = tmp_path / "q.json"
    assert benchmark.main(["--preset", "tiny", "--contexts", "320", "--methods",
                           "vanilla,fp8,int4[group=16,window=32],knorm@0.5+int2[window=16]", "--max-new-tokens", "3",
                           "--repeats", "1", "--out", str(out)]) == 0
    run, results = load(out)
    quantized = [r for r in results if r.kv_quant]
    assert len(quantized) == 3 and all(r.kv_quant_storage == "simulated" and r.engine == "hf" for r in quantized)
    kv = checks.run_checks(run, results)[0]
    assert kv.passed is True, kv.lines
    assert sum("exact" in line and "window" in line for line in kv.lines) == 3
    data = json.loads(out.read_text())
    record = next(r for r in data["results"] if r["method"] == "fp8")
    record["kv_bytes_parts"]["scales"] += 4  # one float32 scale too many
    record["kv_cache_bytes"] += 4
    out.write_text(json.dumps(data))
    run, results = load(out)
    assert checks.run_checks(run, results)[0].passed is False


@pytest.mark.parametrize("name", ["dms-8x+fp8", "dms-8x+int4[group=16,window=32]"])
def test_native_dms_stores_its_masked_cache_quantized(tiny, long_prompt, name):
    """The hf engine's DMS cache holds every position (mask, no reclaim): in quantized form, the formula's bytes for
    all of them; DMS keeps the same live entries as without quantization on this prompt (its decisions are made on
    bf16 keys in the prefill)."""
    method = parse_method(name).prepare(tiny, long_prompt)
    plain = parse_method("dms-8x").prepare(tiny, long_prompt)
    g = generate_once(tiny, method, long_prompt, SETTINGS, HFDecoder())
    reference = generate_once(tiny, plain, long_prompt, SETTINGS, HFDecoder())
    c = tiny.model.config
    one = method.spec.bytes_parts(1, c.num_key_value_heads, c.head_dim, long_prompt.input_tokens, tiny.dtype.itemsize)
    assert g.kv_after.parts == {k: v * c.num_hidden_layers for k, v in one.items()}
    assert g.kv_after.tokens_per_head == reference.kv_after.tokens_per_head
    assert g.kv_after.full_bytes == reference.kv_after.full_bytes and g.kv_after.bytes < g.kv_after.full_bytes


def test_cloned_rows_of_a_fast_fp8_batch_are_copies(tiny, tiny_prompt, fast):
    """--admission cloned: rows 1..B-2 copy row 0's quantized cache; every row decodes what row 0 decodes alone."""
    from kvcompress.engine.batch import generate_batch

    method = parse_method("fp8")
    settings = GenerationSettings(6, SamplingConfig(greedy=True))
    alone = generate_once(tiny, method, tiny_prompt, settings, HFDecoder()).token_ids
    batch = generate_batch(tiny, method, [tiny_prompt] * 4, settings, fast, admission="cloned")
    assert batch.batch_token_ids == [alone] * 4
    c = tiny.model.config
    one = method.spec.bytes_parts(4, c.num_key_value_heads, c.head_dim, tiny_prompt.context_tokens, tiny.dtype.itemsize)
    assert batch.kv_after.parts == {k: v * c.num_hidden_layers for k, v in one.items()}


def _staged_tensors(layer):
    """A quantized layer's tensors that must wait in the slabs: fp8's codes; int4/int2's codes, scales, zero points
    and bf16 window."""
    if layer.spec.format == "fp8":
        return [layer.qk, layer.qv]
    groups = (layer.qk, layer.qv)
    return [layer.keys, layer.values] + [getattr(g, f) for g in groups for f in ("codes", "scale", "zero")]


@pytest.mark.parametrize("name", ["fp8", "int4[group=8,window=4]"])
@pytest.mark.parametrize("admission", ["each", "cloned"])
def test_a_fast_quantized_batch_waits_for_decode_in_the_staging_slabs(tiny, fast, monkeypatch, admission, name):
    """A quantized cache waits for decode_batch in the per-layer staging slabs, as a plain cache's K and V do (left
    where the prefill put them, layers shared the allocator's segments: under 80 GiB at 8K fp8 fitted 81-86 of the
    111 sequences its bytes predict, int4 163 of 169, H200): at decode_batch every row's tensors are views of its
    layer's slabs, and no slab is left once the batch decodes; the rows decode what each decodes alone."""
    from kvcompress.engine.batch import generate_batch
    from kvcompress.engine.fast.decoder import FastDecoder
    from kvcompress.tasks.cell import Cell

    prompts = Cell(target_tokens=400, needle_seed=0).build_batch(tiny.tokenizer, 3)[0]
    real, held = FastDecoder.decode_batch, []

    def decode_batch(self, lm, admitted, *args, **kwargs):
        slabs = [{s[0].untyped_storage().data_ptr() for s in layer} for layer in self.staging.slabs]
        held.extend(t.untyped_storage().data_ptr() in slabs[i]
                    for a in admitted for i, layer in enumerate(a.cache.layers) for t in _staged_tensors(layer))
        return real(self, lm, admitted, *args, **kwargs)

    monkeypatch.setattr(FastDecoder, "decode_batch", decode_batch)
    method, settings = parse_method(name), GenerationSettings(6, SamplingConfig(greedy=True))
    batch = generate_batch(tiny, method, prompts, settings, fast, admission=admission)
    per_layer = 2 if name == "fp8" else 8
    assert len(held) == 3 * per_layer * tiny.model.config.num_hidden_layers and all(held)
    assert not any(fast.staging.slabs)
    rows = [prompts[0], prompts[0], prompts[2]] if admission == "cloned" else prompts
    assert batch.batch_token_ids == [generate_once(tiny, method, p, settings, HFDecoder()).token_ids for p in rows]


def test_an_hf_batch_of_quantized_caches_stacks_equal_lengths_and_refuses_others(tiny, tiny_prompt):
    from kvcompress.engine.batch import generate_batch
    from kvcompress.tasks.cell import Cell

    method = parse_method("int4[group=16,window=32]")
    settings = GenerationSettings(6, SamplingConfig(greedy=True))
    alone = generate_once(tiny, method, tiny_prompt, settings, HFDecoder()).token_ids
    batch = generate_batch(tiny, method, [tiny_prompt] * 3, settings, HFDecoder())
    assert batch.batch_token_ids == [alone] * 3
    prompts = Cell(target_tokens=400, needle_seed=0).build_batch(tiny.tokenizer, 3)[0]
    with pytest.raises(UserError, match="one length per layer"):
        generate_batch(tiny, parse_method("knorm@0.5+fp8"), prompts, settings, HFDecoder())


def test_fidelity_command_writes_one_record_per_method_and_prompt(tmp_path, capsys):
    out = tmp_path / "f.json"
    assert benchmark.main(["fidelity", "--preset", "tiny", "--contexts", "256", "--prompts", "2", "--continuation",
                           "8", "--methods", "vanilla,fp8,knorm@0.5+int2", "--out", str(out)]) == 0
    run, results = load(out)
    assert run["continuation_tokens"] == 8 and len(results) == 6
    assert {r.prompt_id for r in results} == {"paul_graham-0", "paul_graham-1"}
    vanilla = [r for r in results if r.method == "vanilla"]
    assert all(r.fidelity_kl == 0 and r.fidelity_top1 == 1 and r.fidelity_tokens == 7 for r in vanilla)
    quantized = [r for r in results if r.kv_quant]
    assert all(r.fidelity_kl > 0 and r.kv_bytes_parts and r.kv_quant_storage == "simulated" for r in quantized)
    assert "KL mean" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--continuation", "1"], "--continuation"), (["--methods", "vanilla,int4[group=3]"], "power of two")])
def test_fidelity_command_refuses_bad_input_in_one_line(argv, message, capsys):
    assert benchmark.main(["fidelity", "--preset", "tiny", *argv]) == 2
    assert message in one_line_error(capsys)


def test_check_holds_a_fast_fp8_batch_of_unequal_sequences_to_the_summed_formula(tmp_path):
    """A batch whose sequences differ in length (kept per layer is their mean, not a whole count): fp8's codes are
    exact on the tokens summed over the sequences and its scales per sequence; one code byte too many fails."""
    out = tmp_path / "b.json"
    assert benchmark.main(["--preset", "tiny", "--contexts", "320", "--methods", "vanilla,fp8", "--engine", "fast",
                           "--batch", "3", "--max-new-tokens", "3", "--repeats", "1", "--out", str(out)]) == 0
    run, results = load(out)
    r = next(r for r in results if r.method == "fp8")
    assert r.batch == 3 and r.kv_tokens_kept != int(r.kv_tokens_kept)  # the case this test is about
    kv = checks.run_checks(run, results)[0]
    assert kv.passed is True, kv.lines
    assert "(the sequences summed)" in next(line for line in kv.lines if " fp8 " in line)
    r.kv_bytes_parts["data"] += 1
    r.kv_cache_bytes += 1
    assert checks.run_checks(run, results)[0].passed is False


def test_check_holds_a_fast_int4_batch_of_unequal_sequences_to_each_rows_formula(tmp_path):
    """int4's codes go by whole groups and each row has its own window, so a batch of unequal sequences is verified
    row by row from kv_tokens_kept_rows (their mean alone cannot be); one code byte too many fails."""
    out = tmp_path / "b.json"
    method = "int4[group=8,window=4]"
    assert benchmark.main(["--preset", "tiny", "--contexts", "320", "--methods", f"vanilla,{method}", "--engine",
                           "fast", "--batch", "3", "--max-new-tokens", "3", "--repeats", "1", "--out", str(out)]) == 0
    run, results = load(out)
    r = next(r for r in results if r.method == method)
    assert r.batch == 3 and r.kv_tokens_kept != int(r.kv_tokens_kept)  # the case this test is about
    assert len(set(r.kv_tokens_kept_rows)) > 1 and sum(r.kv_tokens_kept_rows) / 3 == pytest.approx(r.kv_tokens_kept)
    c = run["architecture"]
    itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[run["dtype"]]  # the window's tokens, as the model's dtype
    each = [QuantSpec("int4", 8, 4).bytes_parts(1, c["kv_heads"], c["head_dim"], int(n), itemsize)
            for n in r.kv_tokens_kept_rows]
    assert r.kv_bytes_parts == {name: c["layers"] * sum(row[name] for row in each) for name in each[0]}
    kv = checks.run_checks(run, results)[0]
    assert kv.passed is True, kv.lines
    r.kv_bytes_parts["data"] += 1
    r.kv_cache_bytes += 1
    assert checks.run_checks(run, results)[0].passed is False
