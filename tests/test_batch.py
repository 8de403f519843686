"""Batched decode: each sequence of a batch generates what it generates alone (greedy, both engines), the batch's
KV bytes are the sum of its sequences', and what cannot be batched is refused in one line. Native DMS-8x batches on
both engines too (its live positions per batch row: tests/test_fast_dms.py, tests/test_dms_native.py)."""

import pytest
import torch

from kvcompress.engine import GenerationSettings, generate_once, measure
from kvcompress.engine.batch import generate_batch
from kvcompress.engine.fast.decoder import FastDecoder
from kvcompress.engine.generate import HFDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.errors import UserError
from kvcompress.methods import parse_method
from kvcompress.tasks.cell import Cell

from conftest import bytes_per_token

SETTINGS = GenerationSettings(10, SamplingConfig(greedy=True))
# plain, real shrink (kept lengths differ by one between the prompts: padded rows), mask-only, uneven per layer
METHODS = ["vanilla", "knorm@0.5", "adakv+snapkv@0.5", "pyramidkv@0.5"]


@pytest.fixture(scope="module")
def prompts(tiny):
    return Cell(target_tokens=400, needle_seed=0).build_batch(tiny.tokenizer, 3)[0]


@pytest.fixture(scope="module")
def fast(tiny):
    return FastDecoder(tiny)


@pytest.fixture(scope="module")
def alone(tiny, prompts):
    """Each prompt run alone with the hf engine (the reference)."""
    return {m: [generate_once(tiny, parse_method(m), p, SETTINGS, HFDecoder()) for p in prompts] for m in METHODS}


def test_the_prompts_differ_and_the_kept_lengths_too(prompts, alone):
    assert len({tuple(p.context_ids[0].tolist()) for p in prompts}) == 3  # distinct needles
    knorm = [tuple(g.kv_end.tokens_per_layer) for g in alone["knorm@0.5"]]
    assert len(set(knorm)) > 1  # kept context + question differ: the batch has padded rows to hide


@pytest.mark.parametrize("engine", ["hf", "fast"])
@pytest.mark.parametrize("method", METHODS)
def test_each_sequence_of_a_batch_generates_what_it_generates_alone(tiny, prompts, alone, fast, engine, method):
    decoder = fast if engine == "fast" else HFDecoder()
    if engine == "hf" and method == "pyramidkv@0.5":
        with pytest.raises(UserError, match="different lengths per layer"):
            generate_batch(tiny, parse_method(method), prompts, SETTINGS, decoder)
        return
    batch = generate_batch(tiny, parse_method(method), prompts, SETTINGS, decoder)
    reference = alone[method]
    assert len({tuple(g.token_ids) for g in reference}) >= 2  # the sequences really differ
    assert batch.batch_token_ids == [g.token_ids for g in reference]
    assert batch.kv_after.bytes == sum(g.kv_after.bytes for g in reference)
    assert batch.kv_after.live_bytes == sum(g.kv_after.live_bytes for g in reference)
    # live entries at the end: each sequence's own, pads excluded
    assert batch.kv_end.live_bytes == sum(g.kv_end.live_bytes for g in reference)


def test_both_engines_hold_the_same_batch_bytes_at_the_end(tiny, prompts, fast):
    hf = generate_batch(tiny, parse_method("knorm@0.5"), prompts, SETTINGS, HFDecoder())
    fa = generate_batch(tiny, parse_method("knorm@0.5"), prompts, SETTINGS, fast)
    assert fa.kv_end.bytes == hf.kv_end.bytes and fa.kv_end.tokens_per_layer == hf.kv_end.tokens_per_layer


def test_vanilla_batch_bytes_are_the_sequences_tokens_times_bytes_per_token(tiny, prompts, fast):
    g = generate_batch(tiny, parse_method("vanilla"), prompts, SETTINGS, fast)
    assert g.kv_after.bytes == sum(p.context_tokens for p in prompts) * bytes_per_token(tiny.model)


def test_sampled_sequences_match_alone_with_their_own_seed(tiny, prompts, fast):
    """Sequence b samples with seed + b: the same tokens as the prompt run alone with that seed."""
    hot = SamplingConfig(temperature=8.0, top_p=0.95, seed=3)
    settings = GenerationSettings(16, hot)
    batch = generate_batch(tiny, parse_method("vanilla"), prompts, settings, fast)
    for b, prompt in enumerate(prompts):
        own = GenerationSettings(16, SamplingConfig(temperature=8.0, top_p=0.95, seed=3 + b))
        assert batch.batch_token_ids[b] == generate_once(tiny, parse_method("vanilla"), prompt, own, HFDecoder()).token_ids


def test_a_batch_record_has_batch_figures(tiny, prompts, fast):
    r = measure(tiny, parse_method("knorm@0.5"), prompts, SETTINGS, fast, repeats=1, warmup=False)
    assert r.batch == 3 and r.identity()[-1] == 3
    assert len(r.ttft_sequences_s) == 3 and r.ttft_s == sorted(r.ttft_sequences_s)[1]
    assert r.batch_admit_s >= sum(r.ttft_sequences_s) * 0.99
    assert abs(r.aggregate_decode_tokens_per_s - 3 * r.decode_tokens_per_s) < 1e-6
    # one step of the batch, timed over the steps after the first (which captures the fast engine's graph)
    assert 0 < r.tpot_ms * (r.output_tokens - 2) / 1000 <= r.e2e_s - r.batch_admit_s
    assert r.context_tokens_total == sum(p.context_tokens for p in prompts)


def test_batched_generations_release_the_buffers_between_repeats(tiny, prompts, fast, monkeypatch):
    """A batch that fits once must fit every repeat: the last run's buffers may not sit beside the next admission."""
    import kvcompress.engine.batch as batch_module

    states = []
    real = batch_module.prefill

    def watched(*args, **kwargs):
        states.append(fast.state)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_module, "prefill", watched)
    measure(tiny, parse_method("vanilla"), prompts, SETTINGS, fast, repeats=2, warmup=True)
    assert len(states) == 4 * 3 and all(s is None for s in states)


def test_batch_one_records_keep_their_meaning(run_method):
    r = run_method("knorm@0.5", max_new_tokens=6)
    assert r.batch == 1 and r.batch_admit_s == r.ttft_s
    assert r.aggregate_decode_tokens_per_s == r.decode_tokens_per_s
    assert r.tpot_ms == pytest.approx((r.e2e_s - r.ttft_s) * 1000 / (r.output_tokens - 1))


def test_cloned_admission_prefills_two_and_copies_the_rest(tiny, prompts, fast):
    many = [prompts[0]] * 3 + [prompts[1]]
    g = generate_batch(tiny, parse_method("knorm@0.5"), many, SETTINGS, fast, admission="cloned")
    alone = [generate_once(tiny, parse_method("knorm@0.5"), p, SETTINGS, HFDecoder()) for p in prompts[:2]]
    assert len(g.ttft_each_s) == 2
    assert g.batch_token_ids == [alone[0].token_ids] * 3 + [alone[1].token_ids]
    assert g.kv_after.bytes == 3 * alone[0].kv_after.bytes + alone[1].kv_after.bytes


@pytest.mark.parametrize("method, reason", [
    ("decoding+knorm[compression_interval=4,target_size=64]", "decoding-phase press"),
    ("dms-8x-remote", "child process decodes batch 1"),
])
def test_what_cannot_be_batched_is_refused_in_one_line(tiny, prompts, fast, method, reason):
    with pytest.raises(UserError, match=reason) as exc:
        generate_batch(tiny, parse_method(method), prompts, SETTINGS, fast)
    assert "\n" not in str(exc.value)


# --- native DMS-8x in a batch -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dms_prompts(tiny):
    """Three DMS-sized prompts (the tiny window is 16) of different lengths: rows of a batch at different positions."""
    from dms_reference import batch_prompts

    return batch_prompts(tiny.tokenizer)


@pytest.fixture(scope="module")
def dms_method(tiny, dms_prompts):
    """Calibrated once, on sequence 0's prompt, as Method.prepare does for a batch; every sequence shares it."""
    return parse_method("dms-8x").prepare(tiny, dms_prompts[0])


DMS_SAMPLING = {"greedy": SamplingConfig(greedy=True), "sampled": SamplingConfig(temperature=8.0, top_p=0.95, seed=5)}


def _alone(tiny, method, prompts, steps, sampling, decoder):
    """Each prompt alone, sequence b with seed + b (what it must generate in the batch)."""
    return [generate_once(tiny, method, p, GenerationSettings(steps, SamplingConfig(
        sampling.temperature, sampling.top_p, sampling.greedy, sampling.seed + b)), decoder)
            for b, p in enumerate(prompts)]


@pytest.mark.parametrize("sampling", list(DMS_SAMPLING))
@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_each_dms_sequence_of_a_batch_generates_what_it_generates_alone(tiny, dms_prompts, dms_method, fast, engine,
                                                                        sampling):
    decoder = fast if engine == "fast" else HFDecoder()
    config = DMS_SAMPLING[sampling]
    reference = _alone(tiny, dms_method, dms_prompts, 14, config, HFDecoder())
    assert len({p.input_tokens for p in dms_prompts}) == 3  # rows at different positions
    assert len({tuple(g.token_ids) for g in reference}) == 3  # the sequences really differ
    batch = generate_batch(tiny, dms_method, dms_prompts, GenerationSettings(14, config), decoder)
    assert batch.batch_token_ids == [g.token_ids for g in reference]
    assert batch.protocol == "single_prefill"
    # live entries per (layer, batch row = sequence b's kv head h) are the sequence's own, at both ends
    for state, want in ((batch.kv_after, [g.kv_after for g in reference]),
                        (batch.kv_end, [g.kv_end for g in reference])):
        assert state.tokens_per_head == [[n for g in want for n in g.tokens_per_head[i]]
                                         for i in range(len(want[0].tokens_per_head))]
        assert state.live_bytes == sum(g.live_bytes for g in want)
        assert state.full_bytes == sum(g.full_bytes for g in want)
    ends = [[n for layer in g.kv_end.tokens_per_head for n in layer] for g in reference]
    assert len(set(map(tuple, ends))) == 3 and max(ends[0]) < dms_prompts[0].input_tokens - 16  # evicted, unevenly


def test_fast_dms_batch_bytes_are_the_sum_of_its_sequences(tiny, dms_prompts, dms_method, fast):
    """The merged compact cache holds exactly each sequence's buffers (live + reserve rows per head), no pads."""
    settings = GenerationSettings(10, SamplingConfig(greedy=True))
    alone = [generate_once(tiny, dms_method, p, settings, fast) for p in dms_prompts]
    batch = generate_batch(tiny, dms_method, dms_prompts, settings, fast)
    c = tiny.model.config
    entry = 2 * c.head_dim * tiny.model.dtype.itemsize  # K and V of one token of one head
    rows = len(dms_prompts) * c.num_hidden_layers * c.num_key_value_heads
    for state, parts in ((batch.kv_after, [g.kv_after for g in alone]), (batch.kv_end, [g.kv_end for g in alone])):
        assert state.bytes == sum(g.bytes for g in parts)
        assert state.live_bytes == sum(g.live_bytes for g in parts)
    assert batch.kv_after.bytes == batch.kv_after.live_bytes + 9 * rows * entry  # a reserve of 9 rows per head
    merged = fast.dms.state.cache  # the batch's one cache: its tensors are where the bytes come from
    assert merged.heads == (3, c.num_key_value_heads)
    assert sum(k.nbytes + v.nbytes for k, v in zip(merged.keys, merged.values)) == batch.kv_end.bytes


def test_hf_dms_batch_holds_every_entry_of_the_padded_rows(tiny, dms_prompts, dms_method):
    """The hf engine's masked cache keeps every entry: the stacked rows, padded to the longest prompt, plus the
    decoded tokens; the pads are held but never live."""
    settings = GenerationSettings(10, SamplingConfig(greedy=True))
    batch = generate_batch(tiny, dms_method, dms_prompts, settings, HFDecoder())
    longest = max(p.input_tokens for p in dms_prompts)
    assert batch.kv_end.bytes == 3 * (longest + 9) * bytes_per_token(tiny.model)
    alone = [generate_once(tiny, dms_method, p, settings, HFDecoder()) for p in dms_prompts]
    assert batch.kv_end.live_bytes == sum(g.kv_end.live_bytes for g in alone)


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_cloned_admission_copies_the_first_dms_cache(tiny, dms_prompts, dms_method, fast, engine):
    decoder = fast if engine == "fast" else HFDecoder()
    many = [dms_prompts[0]] * 3 + [dms_prompts[1]]
    g = generate_batch(tiny, dms_method, many, SETTINGS, decoder, admission="cloned")
    alone = [generate_once(tiny, dms_method, p, SETTINGS, decoder) for p in dms_prompts[:2]]
    assert len(g.ttft_each_s) == 2
    assert g.batch_token_ids == [alone[0].token_ids] * 3 + [alone[1].token_ids]
    assert g.kv_after.bytes == 3 * alone[0].kv_after.bytes + alone[1].kv_after.bytes
    assert g.kv_end.live_bytes == 3 * alone[0].kv_end.live_bytes + alone[1].kv_end.live_bytes


@pytest.mark.parametrize("method", ["knorm@0.5", "adakv+snapkv@0.5", "pyramidkv@0.5"])
def test_a_loaded_batch_holds_each_rows_entries_zeroed_pads_and_its_own_validity(tiny, prompts, fast, method,
                                                                                 monkeypatch):
    """fast/decoder.py's load, against the admitted caches themselves: row b of layer i's buffers holds sequence b's
    keys and values, the pads up to the layer's longest row are zero, and the validity mask is 1 exactly on the
    row's own entries minus what its press hid (rows of equal length, a mask-only press, per-layer lengths)."""
    from kvcompress.engine.fast.decoder import _DecodeState

    seen = {}
    real_load = _DecodeState.load

    def load(state, caches, masks, per_sequence, *args, **kwargs):
        seen["sources"] = [[(layer.keys.clone(), layer.values.clone()) for layer in c.layers] for c in caches]
        seen["hidden"] = [{i: tuple(t.clone() for t in m[i]) for i in m} for m in masks]
        seen["lengths"] = per_sequence
        real_load(state, caches, masks, per_sequence, *args, **kwargs)
        seen["state"] = state
        seen["buffers"] = ([k.clone() for k in state.keys], [v.clone() for v in state.values],
                           [v.clone() if v is not None else None for v in state.valid])

    monkeypatch.setattr(_DecodeState, "load", load)
    generate_batch(tiny, parse_method(method), prompts, GenerationSettings(3, SamplingConfig(greedy=True)), fast)
    keys, values, valid = seen["buffers"]
    if method != "adakv+snapkv@0.5":  # kept lengths differ by a token between the prompts: a padded row
        assert len({tuple(n) for n in seen["lengths"]}) > 1
    for i in range(len(keys)):
        longest = max(n[i] for n in seen["lengths"])
        for b, rows in enumerate(seen["sources"]):
            n = seen["lengths"][b][i]
            assert torch.equal(keys[i][b, :, :n], rows[i][0][0]) and torch.equal(values[i][b, :, :n], rows[i][1][0])
            assert not keys[i][b, :, n:longest].any() and not values[i][b, :, n:longest].any()
            if valid[i] is None:
                continue
            want = torch.zeros_like(valid[i][b])
            want[:, :n] = 1
            if i in seen["hidden"][b]:
                rows_hidden, heads, slots = seen["hidden"][b][i]
                want[heads[rows_hidden == 0], slots[rows_hidden == 0]] = 0
            assert torch.equal(valid[i][b], want), (i, b)
    if method.startswith("adakv"):  # the mask-only press hid entries inside the rows
        assert any(seen["hidden"][b] for b in range(len(seen["sources"])))
