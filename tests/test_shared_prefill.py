"""Quality runs: one prefill serves every method that compresses after it, exactly as its own prefill would (the
cache's tensors bit for bit, kept tokens per layer, hidden entries, greedy answers), and a batch of answers equals
the answers given one by one (engine/shared_prefill.py, engine/quality.py)."""

import pytest
import torch
from transformers import DynamicCache

from kvcompress.engine import GenerationSettings, generate_once
from kvcompress.engine.fast.decoder import FastDecoder
from kvcompress.engine.generate import HFDecoder
from kvcompress.engine.quality import answer_alone, answer_compressed, cut
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.engine.shared_prefill import prefill_shared
from kvcompress.memory import clear_masks, masked_indices
from kvcompress.methods import parse_method, press_context
from kvcompress.methods.presses import question_starts_at_cache_length
from kvcompress.tasks import niah
from kvcompress.tasks.cell import Cell

# vanilla, four scorers (one at 0.875), a mask-only wrapper, a wrapper that rewrites the keys (and moves the
# question), a wrapper that scores chunks, an uneven per-layer press
SHARED = ["vanilla", "knorm@0.5", "snapkv@0.5", "expected_attention@0.5", "streaming_llm@0.875", "adakv+snapkv@0.5",
          "key_rerotation+knorm@0.5", "chunk+knorm@0.5", "pyramidkv@0.5"]
GREEDY = GenerationSettings(8, SamplingConfig(greedy=True), fixed_length=False)


def own_prefill(lm, method, context):
    """The method's own prefill of the context, as engine.generate.prefill runs it: (cache, hidden entries, start)."""
    press = method.hook(lm.model)
    clear_masks(lm.model)
    cache = DynamicCache()
    with torch.inference_mode(), press_context(press, lm.model):
        lm.model.model(input_ids=context, past_key_values=cache, use_cache=True)
    masked = masked_indices(lm.model)
    clear_masks(lm.model)
    start = cache.get_seq_length() if question_starts_at_cache_length(press) else context.shape[1]
    return cache, masked, start


def assert_same_compression(lm, prompt, names, shortens=True):
    methods = [parse_method(n) for n in names]
    shared = prefill_shared(lm, methods, prompt.context_ids)
    for method in methods:
        cache, masked, start = own_prefill(lm, method, prompt.context_ids)
        got = shared[method.name]
        assert got.error is None
        kept = [layer.keys.shape[2] for layer in cache.layers]
        assert [layer.keys.shape[2] for layer in got.cache.layers] == kept, method.name
        for mine, theirs in zip(got.cache.layers, cache.layers):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values), method.name
        assert sorted(got.masked) == sorted(masked), method.name
        for i in masked:
            assert all(torch.equal(a, b) for a, b in zip(got.masked[i], masked[i])), method.name
        assert got.question_start == start, method.name
        if method.compression_ratio and shortens:  # it really compressed (or hid) something
            assert sum(kept) < len(kept) * prompt.context_tokens or masked, method.name
    return shared


def test_one_prefill_leaves_each_method_the_cache_its_own_prefill_leaves(tiny, tiny_prompt):
    assert_same_compression(tiny, tiny_prompt, SHARED)


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_answers_from_the_shared_prefill_are_each_methods_own_greedy_answers(tiny, tiny_prompt, engine):
    decoder = FastDecoder(tiny) if engine == "fast" else HFDecoder()
    shared = prefill_shared(tiny, [parse_method(n) for n in SHARED], tiny_prompt.context_ids)
    for name in SHARED:
        alone = generate_once(tiny, parse_method(name), tiny_prompt, GREEDY, HFDecoder())
        got, = answer_compressed(tiny, [shared[name]], [tiny_prompt], [8], GREEDY, decoder)
        assert got.token_ids == alone.token_ids, name
        assert got.kv_after.tokens_per_layer == alone.kv_after.tokens_per_layer, name
        assert got.kv_after.bytes == alone.kv_after.bytes and got.kv_after.live_bytes == alone.kv_after.live_bytes


def test_presses_differing_only_in_ratio_score_a_layer_once_and_still_keep_what_their_own_prefill_keeps(
        tiny, tiny_prompt, monkeypatch):
    import kvpress

    calls = {}
    for cls in (kvpress.KnormPress, kvpress.SnapKVPress, kvpress.ExpectedAttentionPress, kvpress.StreamingLLMPress):
        def counted(self, *args, _score=cls.score, _name=cls.__name__, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _score(self, *args, **kwargs)
        monkeypatch.setattr(cls, "score", counted)
    names = ["knorm@0.5", "knorm@0.875", "snapkv@0.5", "snapkv@0.875", "snapkv@0.5[window_size=4]",
             "expected_attention@0.5", "expected_attention@0.875", "streaming_llm@0.5", "streaming_llm@0.875"]
    shared = prefill_shared(tiny, [parse_method(n) for n in names], tiny_prompt.context_ids)
    layers = tiny.model.config.num_hidden_layers
    # one scoring per layer for each ratio pair; another window is another scoring; StreamingLLM's score reads
    # its ratio, so each of its presses scores on its own
    assert calls == {"KnormPress": layers, "SnapKVPress": 2 * layers, "ExpectedAttentionPress": layers,
                     "StreamingLLMPress": 2 * layers}
    for name in names:  # the instances are restored: score() is the class's again
        assert shared[name].error is None
    calls.clear()
    assert_same_compression(tiny, tiny_prompt, names)  # and each kept what its own prefill keeps


def test_the_shared_prefill_on_smollm2_is_exact_too(smollm2):
    built = niah.build_prompt(smollm2.tokenizer, 256, 0.5, niah.make_needle("single", 0))
    names = ["vanilla", "knorm@0.5", "snapkv@0.875", "streaming_llm@0.5", "adakv+expected_attention@0.5"]
    shared = assert_same_compression(smollm2, built.prompt, names)
    settings = GenerationSettings(6, SamplingConfig(greedy=True), fixed_length=False)
    for name in names:
        alone = generate_once(smollm2, parse_method(name), built.prompt, settings, HFDecoder())
        got, = answer_compressed(smollm2, [shared[name]], [built.prompt], [6], settings, HFDecoder())
        assert got.token_ids == alone.token_ids, name
        assert got.kv_after.tokens_per_layer == alone.kv_after.tokens_per_layer, name


def test_methods_with_a_prefill_of_their_own_are_refused_by_the_shared_prefill(tiny, tiny_prompt):
    for name in ["dms-8x", "decoding+knorm[compression_interval=8,target_size=64]", "kvzip@0.5"]:
        assert not parse_method(name).joins_shared_prefill, name
    with pytest.raises(ValueError, match="their own prefill"):
        prefill_shared(tiny, [parse_method("dms-8x")], tiny_prompt.context_ids)


@pytest.fixture(scope="module")
def three(tiny):
    """Three prompts of one length, different needles (kept lengths differ: ragged rows)."""
    return Cell(target_tokens=400, needle_seed=0).build_batch(tiny.tokenizer, 3)[0]


@pytest.mark.parametrize("engine", ["hf", "fast"])
@pytest.mark.parametrize("name", ["vanilla", "knorm@0.5", "adakv+snapkv@0.5"])
def test_a_batch_of_answers_equals_the_answers_given_one_by_one(tiny, three, engine, name):
    decoder = FastDecoder(tiny) if engine == "fast" else HFDecoder()
    method = parse_method(name)
    compressed = [prefill_shared(tiny, [method], p.context_ids)[name] for p in three]
    budgets = [8, 5, 8]
    batched = answer_compressed(tiny, compressed, three, budgets, GREEDY, decoder)
    alone = [answer_alone(tiny, method, p, b, GREEDY, HFDecoder()) for p, b in zip(three, budgets)]
    assert [a.token_ids for a in batched] == [a.token_ids for a in alone]
    assert len({tuple(a.token_ids) for a in alone}) > 1  # the rows really differ
    assert [a.decoded_with for a in batched] == [3, 3, 3]
    assert [a.kv_after.bytes for a in batched] == [a.kv_after.bytes for a in alone]


def test_a_row_is_cut_at_its_first_end_of_sequence_and_its_own_budget():
    assert cut([5, 7, 2, 9, 2], 10, {2}) == [5, 7, 2]
    assert cut([5, 7, 2, 9], 2, {2}) == [5, 7]
    assert cut([5, 7, 9], 10, set()) == [5, 7, 9]


def test_every_press_that_joins_a_shared_prefill_is_hooked_only_by_kvpress_base_call():
    """prefill_shared does what BasePress.__call__ does besides hooking; a press with its own __call__ (extra passes,
    its own hooks) must say own_prefill in the registry."""
    from kvpress.presses.base_press import BasePress

    from kvcompress.methods import presses

    for info in presses.PRESSES.values():
        if info.phase == "prefill" and not info.own_prefill and not info.not_runnable:
            assert presses.kvpress_class(info).__call__ is BasePress.__call__, info.name


def _answers(tiny, three, engine, eos, budget, monkeypatch):
    """knorm@0.5's greedy answers to `three` (their shared-prefill caches, decoded as one batch) with `eos` as the
    end-of-sequence tokens: (token ids per row, the batch's decode steps)."""
    from kvcompress.engine import quality

    decoder = FastDecoder(tiny) if engine == "fast" else HFDecoder()
    method = parse_method("knorm@0.5")
    monkeypatch.setattr(quality, "eos_ids", lambda lm: set(eos))
    compressed = [prefill_shared(tiny, [method], p.context_ids)[method.name] for p in three]
    steps = []
    real = decoder.decode_batch
    monkeypatch.setattr(decoder, "decode_batch", lambda *a, **k: steps.append(real(*a, **k)[0]) or (steps[-1], None))
    got = answer_compressed(tiny, compressed, three, [budget] * len(three), GREEDY, decoder)
    return [answer.token_ids for answer in got], steps[0]


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_a_batch_stops_once_every_row_has_ended_and_each_row_is_cut_at_its_own_end(tiny, three, engine, monkeypatch):
    questions = [p.question_ids.shape[1] for p in three]  # fed first, one token a step
    full, steps = _answers(tiny, three, engine, set(), 12, monkeypatch)
    assert steps == max(questions) + 12 and all(len(row) == 12 for row in full)
    ends = {row[3] for row in full}  # every row meets one of these by its 4th token
    cut_rows, steps = _answers(tiny, three, engine, ends, 12, monkeypatch)
    assert cut_rows == [cut(row, 12, ends) for row in full]
    # the batch stopped when its last row ended
    assert steps == max(q + len(row) for q, row in zip(questions, cut_rows)) < max(questions) + 12


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_a_question_token_that_is_an_end_of_sequence_token_does_not_end_its_row(tiny, three, engine, monkeypatch):
    """The questions are fed by the decode (forced tokens): only a row's own tokens can end it."""
    full, _ = _answers(tiny, three, engine, set(), 6, monkeypatch)
    in_questions = {t for p in three for t in p.question_ids.view(-1).tolist()}
    ends = in_questions - {t for row in full for t in row}
    assert len(ends) > 10
    assert _answers(tiny, three, engine, ends, 6, monkeypatch)[0] == full


@pytest.mark.parametrize("name", ["vanilla", "adakv+snapkv@0.5", "pyramidkv@0.5"])
def test_the_questions_forced_part_fed_in_one_forward_leaves_the_state_of_the_single_steps(tiny, three, name,
                                                                                         monkeypatch):
    """fast/forced_prefill.py: the steps forced in every row run as one forward. Reference: the same batch decoded
    with every step single (forced_steps patched to 0). Same tokens, and every buffer entry (questions and answers,
    ragged rows, hidden entries, per-layer lengths) equal to fp32 rounding (entries are O(1); a wrong position or
    mask moves them by that much); the feed really ran, over min(q) - 1
    steps. Rows get questions of different lengths (one cut short) so that some steps stay forced singly."""
    from kvcompress.engine.fast import forced_prefill
    from kvcompress.engine.generate import Prompt

    method = parse_method(name)
    prompts = [Prompt(p.context_ids, p.question_ids[:, :n or None]) for p, n in zip(three, [0, -3, 0])]
    fed = []
    real_feed = forced_prefill.feed_forced
    monkeypatch.setattr(forced_prefill, "feed_forced", lambda state, e: (fed.append(e), real_feed(state, e)))
    runs = {}
    for single in (False, True):
        if single:
            monkeypatch.setattr(forced_prefill, "forced_steps", lambda answer_from, steps: 0)
        decoder = FastDecoder(tiny)
        monkeypatch.setattr(decoder, "release", lambda: None)  # keep the buffers to compare
        compressed = [prefill_shared(tiny, [method], p.context_ids)[name] for p in prompts]
        got = answer_compressed(tiny, compressed, prompts, [8, 5, 8], GREEDY, decoder)
        runs[single] = ([a.token_ids for a in got], decoder.state)
    questions = [p.question_ids.shape[1] for p in prompts]
    assert fed == [min(questions) - 1] and min(questions) < max(questions)
    (tokens, state), (single_tokens, reference) = runs[False], runs[True]
    assert tokens == single_tokens
    assert state.lengths.tolist() == reference.lengths.tolist()
    for mine, theirs in zip(state.keys + state.values, reference.keys + reference.values):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=2e-4)  # fp32: other summation orders
    if reference.valid[0] is not None:
        assert all(torch.equal(a, b) for a, b in zip(state.valid, reference.valid))


def test_forced_steps_leave_one_single_step_and_skip_a_feed_too_short_to_pay():
    from kvcompress.engine.fast.forced_prefill import forced_steps

    assert forced_steps([40, 35, 52], 200) == 34  # steps 1..34 are forced in every row (row 2 samples at step 35)
    assert forced_steps([40], 20) == 18  # the decode's last step stays single (it captures the graph)
    assert forced_steps([2, 40], 200) == 0  # one forced step: nothing to gain
    assert forced_steps([0, 40], 200) == 0  # a row without a question


def test_presses_that_only_read_the_layer_share_it_and_one_that_writes_into_it_gets_a_copy(tiny, tiny_prompt,
                                                                                           monkeypatch):
    """engine/shared_prefill.py hands the full layer itself to the methods of methods/presses.reads_layer_only and
    a copy to the others: ThinK zeroes key channels of what it is given, in place; vanilla beside it must still keep
    the unzeroed layer (assert_same_compression holds every cache against each method's own prefill). Copies counted
    at the cache: one a layer for the shared cache itself, one for ThinK, none for vanilla and knorm."""
    from transformers.cache_utils import DynamicLayer

    copies = []
    real_update = DynamicLayer.update
    monkeypatch.setattr(DynamicLayer, "update", lambda self, k, v, *a, **kw: (
        copies.append(k.shape[2]) if k.shape[2] else None, real_update(self, k, v, *a, **kw))[1])
    shared = assert_same_compression(tiny, tiny_prompt, ["vanilla", "think@0.5", "knorm@0.5"], shortens=False)
    zeroed = [(layer.keys == 0).all(dim=2).sum() for layer in shared["think@0.5"].cache.layers]
    assert all(n > 0 for n in zeroed)  # ThinK zeroed whole key channels (of its copy: vanilla's are the model's)
    layers = tiny.model.config.num_hidden_layers
    # the shared prefill's updates, then the three own prefills' (one each a layer)
    assert len(copies) == 2 * layers + 3 * layers


def test_every_registered_press_handed_the_layer_leaves_it_as_the_model_wrote_it(tiny, tiny_prompt):
    """methods/presses.reads_layer_only hands the full layer itself to kvpress's scorers: each runs here before
    vanilla in one shared prefill, and vanilla's cache must still be the model's own keys and values (a plain
    prefill's), bit for bit: a scorer that wrote into what it was handed would show in vanilla's cache. The check is
    this test, not the prefill (inference tensors keep no version counter, and the prefill keeps inference mode).
    Scorers that need attention weights are left out: the tiny model's sdpa attention gives none."""
    from kvcompress.methods import presses

    reference = DynamicCache()
    with torch.inference_mode():
        tiny.model.model(input_ids=tiny_prompt.context_ids, past_key_values=reference, use_cache=True)
    handed = []
    for info in presses.PRESSES.values():
        if info.role != "scorer" or info.needs_hub or info.not_runnable or info.own_prefill or info.required:
            continue
        method = parse_method(f"{info.name}@0.5" if info.takes_ratio else info.name)
        if info.attention == "eager" or not presses.reads_layer_only(method.hook(tiny.model)):
            continue
        shared = prefill_shared(tiny, [method, parse_method("vanilla")], tiny_prompt.context_ids)
        assert shared[method.name].error is None, method.name
        for mine, theirs in zip(shared["vanilla"].cache.layers, reference.layers):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values), method.name
        handed.append(info.name)
    assert {"knorm", "snapkv", "expected_attention", "streaming_llm"} <= set(handed), handed


@pytest.mark.parametrize("engine,names", [("hf", ["fp8", "knorm@0.5+fp8", "snapkv@0.5+int4[group=16,window=32]",
                                                  "int2[group=16,window=32]"]),
                                          ("fast", ["fp8", "knorm@0.5+fp8", "snapkv@0.875+fp8",
                                                    "snapkv@0.5+int4[group=16,window=32]", "int2[group=8,window=8]"])])
def test_quantized_methods_join_the_shared_prefill_and_answer_as_their_own_run(tiny, three, engine, names):
    """methods/quantized.py: the press compresses the shared prefill's layer, what it keeps is stored quantized as
    its own prefill stores it (same codes, scales and bf16 window), and the batch prefills each row's question as
    its own run does (bf16 attention, quantized after): greedy tokens and KV bytes equal each sample's own run."""
    from kvcompress.methods.quantized_cache import QuantizedKVCache

    decoder = FastDecoder(tiny) if engine == "fast" else HFDecoder()
    for name in names:
        method = parse_method(name)
        assert method.joins_shared_prefill, name
        compressed = [prefill_shared(tiny, [method], p.context_ids)[name] for p in three]
        own = QuantizedKVCache.for_model(method.spec, tiny.model)
        with torch.inference_mode(), press_context(method.hook(tiny.model), tiny.model):
            tiny.model.model(input_ids=three[0].context_ids, past_key_values=own, use_cache=True)
        own.settle()
        for mine, theirs in zip(compressed[0].cache.layers, own.layers):
            assert mine.quantized == theirs.quantized > 0 and torch.equal(mine.keys, theirs.keys), name
            if method.spec.format == "fp8":
                assert torch.equal(mine.qk, theirs.qk) and torch.equal(mine.k_scale, theirs.k_scale), name
        budgets = [8, 5, 8]
        if engine == "fast":
            batched = answer_compressed(tiny, compressed, three, budgets, GREEDY, decoder)
            assert [a.decoded_with for a in batched] == [3, 3, 3]
        else:  # the hf engine stacks quantized caches of one length only: run/quality answers them one by one
            batched = [answer_compressed(tiny, [c], [p], [b], GREEDY, decoder)[0]
                       for c, p, b in zip(compressed, three, budgets)]
        alone = [answer_alone(tiny, method, p, b, GREEDY, decoder if engine == "fast" else HFDecoder())
                 for p, b in zip(three, budgets)]
        assert [a.token_ids for a in batched] == [a.token_ids for a in alone], name
        assert [a.kv_after.bytes for a in batched] == [a.kv_after.bytes for a in alone], name
        assert len({tuple(a.token_ids) for a in alone}) > 1 or name == "fp8", name  # the rows really differ
