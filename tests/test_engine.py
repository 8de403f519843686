"""The timed generation: timing relations, fixed output length, protocols, sampling reproducibility."""

import pytest
import torch

from kvcompress.engine.sampling import SamplingConfig, sample


def test_ttft_is_positive_and_below_end_to_end(run_method):
    """The engine's clock against an outside one: the timed generations fit inside the call's wall time, and the
    first token comes well before the last of 12."""
    import time

    start = time.perf_counter()
    r = run_method("knorm@0.5", max_new_tokens=12, repeats=2)
    wall = time.perf_counter() - start
    assert len(r.ttft_samples_s) == 2 and len(r.tpot_samples_ms) == 2
    e2e_each = [t + p * 11 / 1000 for t, p in zip(r.ttft_samples_s, r.tpot_samples_ms)]
    assert 0 < r.ttft_s < r.e2e_s and sum(e2e_each) < wall  # 2 timed + 1 memory generation ran inside `wall`
    assert min(r.ttft_samples_s) <= r.ttft_s <= max(r.ttft_samples_s)


def test_timing_runs_generate_exactly_max_new_tokens(run_method):
    r = run_method("vanilla", max_new_tokens=20)
    assert r.output_tokens == 20 and r.fixed_output_length is True


def test_same_seed_reproduces_and_other_seed_differs(tiny, tiny_prompt, run_method):
    # the tiny model is sharply peaked: sample hot so the seed decides many tokens
    a = run_method("vanilla", greedy=False, seed=1, max_new_tokens=24, temperature=8.0)
    b = run_method("vanilla", greedy=False, seed=1, max_new_tokens=24, temperature=8.0)
    c = run_method("vanilla", greedy=False, seed=2, max_new_tokens=24, temperature=8.0)
    assert a.answer == b.answer
    assert a.answer != c.answer


def test_query_aware_compresses_the_question_too(tiny_prompt, run_method):
    agnostic = run_method("knorm@0.5")
    aware = run_method("knorm@0.5", query_aware=True)
    assert aware.protocol == "query_aware" and agnostic.protocol == "query_agnostic"
    assert abs(aware.kv_tokens_kept - tiny_prompt.input_tokens / 2) <= 1
    assert abs(agnostic.kv_tokens_kept - tiny_prompt.context_tokens / 2) <= 1


def test_sampler_follows_the_nucleus_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    config = SamplingConfig(temperature=1.0, top_p=0.8)
    probs = torch.softmax(logits[0], -1)
    # nucleus: smallest prefix of the sorted probabilities whose mass reaches 0.8
    keep = (probs.cumsum(0) - probs) < 0.8
    expected = torch.where(keep, probs, 0) / torch.where(keep, probs, 0).sum()
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.stack([sample(logits, x, config) for x in u]).flatten(), minlength=5).float()
    assert torch.allclose(counts / counts.sum(), expected, atol=0.01)
    assert counts[~keep].sum() == 0


@pytest.mark.parametrize("top_k", [0, 20])
def test_sampler_matches_a_float64_inverse_cdf_and_each_row_samples_as_if_alone(top_k):
    """Qwen3's vocabulary, flat logits (a random-weights nucleus of ~30 % of it without top_k): the two-level scan
    picks the token a float64 sort-and-cumsum picks, and a row samples in a batch what it samples alone."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 151936, generator=generator) * 1.3
    u = torch.rand(6, generator=generator, dtype=torch.float64).float()
    config = SamplingConfig(top_k=top_k)
    sorted_logits, order = logits.double().sort(-1, descending=True)
    if top_k:
        sorted_logits, order = sorted_logits[:, :top_k], order[:, :top_k]
    sorted_probs = torch.softmax(sorted_logits / config.temperature, -1)
    cdf = sorted_probs.cumsum(-1)
    size = ((cdf - sorted_probs) < config.top_p).sum(-1, keepdim=True)
    expected = order.gather(-1, torch.searchsorted(cdf, u.double().view(-1, 1) * cdf.gather(-1, size - 1)))
    batched = sample(logits, u, config)
    assert torch.equal(batched, expected.view(-1))
    assert torch.equal(batched, torch.cat([sample(logits[b:b + 1], u[b:b + 1], config) for b in range(6)]))
    nucleus = size.double().mean()
    assert 0.2 < nucleus / 151936 < 0.5 if not top_k else 1 < nucleus <= top_k


def test_sampler_draws_from_transformers_temperature_top_k_top_p_distribution():
    """Independent reference: transformers' own warpers (temperature, top-k, top-p, in generate's order) give each
    token's probability; our sampler's token for u on a fine grid of [0, 1) covers each token's share of it."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 1000, generator=generator) * 0.5  # flat: top_p alone would keep most of the vocabulary
    config = SamplingConfig()  # Qwen3's defaults: T 0.6, top_k 20, top_p 0.95

    def kept(*warpers):
        scores = logits.double()
        for warper in (TemperatureLogitsWarper(config.temperature), *warpers):
            scores = warper(None, scores)
        return torch.softmax(scores, -1)[0]

    expected = kept(TopKLogitsWarper(config.top_k), TopPLogitsWarper(config.top_p))
    grid = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    tokens = sample(logits.expand(len(grid), -1), grid.float(), config)
    share = torch.bincount(tokens, minlength=1000).double() / len(grid)
    # both cut here: top_k leaves 20 of ~900 top_p would keep, and top_p then drops the last of those
    assert int((kept(TopPLogitsWarper(config.top_p)) > 0).sum()) > 500
    assert 10 < int((expected > 0).sum()) < config.top_k
    assert torch.equal(share > 0, expected > 0)
    assert torch.allclose(share, expected, atol=1e-4)


def test_top_k_keeps_the_k_most_likely_ties_to_the_lower_id():
    logits = torch.zeros(1, 50)
    logits[0, [3, 30]] = 5.0
    logits[0, [7, 12, 40, 44]] = 4.0  # four tie for the last two of top_k = 4
    config = SamplingConfig(temperature=1.0, top_p=1.0, top_k=4)
    grid = (torch.arange(4000) + 0.5) / 4000
    drawn = set(sample(logits.expand(len(grid), -1), grid, config).tolist())
    assert drawn == {3, 30, 7, 12}


def test_greedy_takes_the_argmax():
    logits = torch.randn(3, 50)
    assert torch.equal(sample(logits, torch.rand(3), SamplingConfig(greedy=True)), logits.argmax(-1))


def test_the_garbage_collector_never_runs_inside_a_measured_generation(run_method, monkeypatch):
    """A collection landing in one engine's prefill but in the other's decode loop would skew TTFT between them."""
    import gc
    import importlib

    measure_module = importlib.import_module("kvcompress.engine.measure")
    real, enabled_during = measure_module.generate_once, []

    def watched(*args, **kwargs):
        enabled_during.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(measure_module, "generate_once", watched)
    assert gc.isenabled()
    run_method("vanilla", max_new_tokens=2, repeats=2)
    assert enabled_during == [False] * 3  # two timed repeats and the memory pass
    assert gc.isenabled()


def test_a_method_s_own_random_draws_are_seeded_from_the_cell(tiny, tiny_prompt):
    """leverage@0.75 sketches keys with an unseeded torch.randn: the same cell kept other tokens alone, in a sweep
    (after other cells drew numbers) and after a resume. Each generation now seeds torch's generators from the
    settings (a batch's sequence b with seed + b, as it samples) and restores them after."""
    from kvcompress.engine import GenerationSettings
    from kvcompress.engine.batch import generate_batch
    from kvcompress.engine.generate import HFDecoder, generate_once
    from kvcompress.methods import parse_method

    class Spy(HFDecoder):  # the compressed cache each sequence hands to the decode
        def admit(self, cache, copy=False, expected=1):
            self.kept.append([layer.keys.clone() for layer in cache.layers])
            return super().admit(cache, copy, expected)

        def decode(self, lm, cache, *args, **kwargs):
            self.kept.append([layer.keys.clone() for layer in cache.layers])
            return super().decode(lm, cache, *args, **kwargs)

    def kept(seed, before, batch=False):
        torch.manual_seed(before)  # whatever ran before this cell
        state = torch.get_rng_state()
        spy = Spy()
        spy.kept = []
        settings = GenerationSettings(2, SamplingConfig(greedy=True, seed=seed))
        if batch:
            generate_batch(tiny, parse_method("leverage@0.75"), [tiny_prompt, tiny_prompt], settings, spy)
        else:
            generate_once(tiny, parse_method("leverage@0.75"), tiny_prompt, settings, spy)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left as it was
        return spy.kept

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    alone = kept(0, before=1)[0]
    assert same(alone, kept(0, before=2)[0]) and same(alone, kept(0, before=3)[0])
    assert not same(alone, kept(1, before=1)[0])  # the seed does decide the sketch
    rows = kept(0, before=4, batch=True)
    assert same(rows[0], alone) and same(rows[1], kept(1, before=1)[0])  # row b: what seed + b keeps alone
