"""Native DMS on the fast engine (engine/fast/dms.py): the compact per-head cache holds exactly the entries the rule
keeps, decodes the same tokens as the brute-force reference (tests/dms_reference.py) and the hf engine, and its
bytes are live entries plus exactly the reserve it allocates. The tiny Qwen3 carries DMS fields with window 16."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dms_reference import BruteForceDMS, prompt_ids as _ids
from kvcompress.engine import GenerationSettings, generate_once
from kvcompress.engine.fast import kernels
from kvcompress.engine.fast.decoder import FastDecoder
from kvcompress.engine.fast.dms import CompactDMSCache, _DMSDecodeState, ring_size
from kvcompress.engine.generate import HFDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.methods import dms, parse_method
from kvcompress.run.runner import pick_decoder

ROOT = Path(__file__).resolve().parents[1]
STEPS = 33  # greedy tokens compared: the first (from the prefill) and 32 decode steps


@pytest.fixture(scope="module")
def fast(tiny):
    return FastDecoder(tiny)



def _settings(n=STEPS):
    return GenerationSettings(n, SamplingConfig(greedy=True))


def _method(params):
    return dataclasses.replace(parse_method("dms-8x"), params=params)


def _params(tiny, prompt, calibrated):
    params = dms.DMSParams.from_config(tiny.model.config)
    return dms.calibrate(tiny.model, _ids(prompt), params, 0.875) if calibrated else params


def _all_keys(tiny, params, ids, tokens):
    """Every position's key per layer (1, Hkv, L, D), teacher-forced through the hf path: a lookup table from a
    stored key back to its position (keys differ by position through RoPE)."""
    cache = dms.MaskedDMSCache(params.window)
    with torch.inference_mode(), dms.DMSPatch(params)(tiny.model):
        tiny.model(input_ids=ids, past_key_values=cache, use_cache=True)
        for i, token in enumerate(tokens):
            position = torch.tensor([[ids.shape[1] + i]])
            tiny.model(input_ids=torch.tensor([[token]]), past_key_values=cache, position_ids=position, use_cache=True)
    return [layer.keys for layer in cache.layers]


def _positions(snapshot, table, batch_heads):
    """Positions held per [layer][head] by a compact cache snapshot, found by matching its key rows to the table."""
    out = []
    for (keys, offsets, lengths), all_keys in zip(snapshot, table):
        layer = []
        for bh in range(batch_heads):
            rows = keys[int(offsets[bh]): int(offsets[bh]) + int(lengths[bh])]
            candidates = all_keys[0, bh]
            distance = torch.cdist(rows.double(), candidates.double())
            best = distance.argmin(-1)
            assert float(distance.min(-1).values.max()) < 1e-4, "a stored row is no key of this head"
            layer.append(sorted(best.tolist()))
        out.append(layer)
    return out


@pytest.mark.parametrize("calibrated", [False, True], ids=["checkpoint-rule", "calibrated"])
def test_fast_engine_matches_brute_force_reference_and_hf(tiny, long_prompt, fast, calibrated, monkeypatch):
    params = _params(tiny, long_prompt, calibrated)
    thresholds = params.threshold.tolist() if calibrated else None
    reference = BruteForceDMS(tiny.model, params.window, params.alpha_scale, params.alpha_offset, thresholds)
    want_tokens, want_lives = reference.greedy(_ids(long_prompt)[0].tolist(), STEPS)

    snapshots = []  # the compact cache before each decode step and after the last
    real_step = _DMSDecodeState.step

    def snapshot(state):
        c = state.cache
        snapshots.append([(k.clone(), o.clone(), n.clone()) for k, o, n in zip(c.keys, c.offsets, c.lengths)])

    def step(state):
        snapshot(state)
        real_step(state)

    monkeypatch.setattr(_DMSDecodeState, "step", step)
    got = generate_once(tiny, _method(params), long_prompt, _settings(), fast)
    snapshot(fast.dms.state)
    hf = generate_once(tiny, _method(params), long_prompt, _settings(), HFDecoder())

    assert got.token_ids == want_tokens == hf.token_ids
    assert len(set(got.token_ids)) > 2  # not a constant stream
    table = _all_keys(tiny, params, _ids(long_prompt), got.token_ids[:-1])
    heads = tiny.model.config.num_key_value_heads
    assert len(snapshots) == STEPS
    for step_index, (snap, want) in enumerate(zip(snapshots, want_lives)):
        assert _positions(snap, table, heads) == want, f"live positions differ after {step_index} decode steps"
    # eviction really happened in prefill and in decode, unevenly across heads
    n = _ids(long_prompt).shape[1]
    assert max(len(h) for layer in want_lives[0] for h in layer) < n - params.window
    end = [len(h) for layer in want_lives[-1] for h in layer]
    assert max(end) < n + STEPS - 1 - params.window and len(set(end)) > 1
    # accounting: per head as the reference, and as the hf engine's masked cache
    assert got.kv_after.tokens_per_head == [[len(h) for h in layer] for layer in want_lives[0]]
    assert got.kv_end.tokens_per_head == [[len(h) for h in layer] for layer in want_lives[-1]]
    assert got.kv_after.live_bytes == hf.kv_after.live_bytes and got.kv_end.live_bytes == hf.kv_end.live_bytes


def test_kv_bytes_are_live_entries_plus_exactly_the_reserve(tiny, long_prompt, fast):
    c = tiny.model.config
    entry = 2 * c.head_dim * tiny.model.dtype.itemsize  # K and V of one token of one head
    heads = c.num_hidden_layers * c.num_key_value_heads
    got = generate_once(tiny, _method(_params(tiny, long_prompt, False)), long_prompt, _settings(), fast)
    reserve = STEPS - 1  # rows per head for the tokens the decode writes
    for state in (got.kv_after, got.kv_end):
        live = sum(sum(layer) for layer in state.tokens_per_head)
        assert state.live_bytes == live * entry
    assert got.kv_after.bytes == got.kv_after.live_bytes + reserve * heads * entry
    assert got.kv_end.bytes == got.kv_after.bytes  # nothing grows: decode fills reserve rows or reuses slots
    assert got.kv_after.bytes < got.kv_after.full_bytes and got.kv_after.memory_saved


def _synthetic(window, marks_prefill, steps_decisions, reserve):
    """A one-layer compact cache fed synthetic keys (each row = its position + 1) and chosen decisions, driven
    through the store's reference twin; returns the positions held per head after the prefill and each step."""
    heads_q, heads_kv, dim = 2, 2, 8
    length = len(marks_prefill[0])
    params = dms.DMSParams(window=window, alpha_scale=1.0, alpha_offset=0.0, cr=8, kv_heads=heads_kv)
    cache = CompactDMSCache(1, params, reserve + 1)
    keys = torch.arange(1, length + 1, dtype=torch.float32)[None, None, :, None].expand(1, heads_kv, length, dim)
    marked = torch.tensor(marks_prefill)[None]
    cache.dms_prefill_layer(0, keys.contiguous(), -keys.contiguous(), marked)
    history = [cache_positions(cache)]
    cos, sin = torch.ones(1, dim), torch.zeros(1, dim)  # RoPE by angle 0: stored keys are the raw keys
    q = torch.empty(1, heads_q, dim)
    for step, decisions in enumerate(steps_decisions):
        p = length + step
        qkv = torch.zeros(1, heads_q + 2 * heads_kv, dim)
        qkv[0, :heads_q, -1] = torch.tensor(decisions, dtype=torch.float32).repeat_interleave(heads_q // heads_kv)
        qkv[0, heads_q: heads_q + heads_kv] = p + 1
        kernels.dms_qk_norm_rope_store(
            qkv.view(1, -1), None, None, 0.0, cos, sin, cache.keys[0], cache.values[0], cache.offsets[0],
            cache.lengths[0], cache.ring_slot[0], cache.ring_marked[0], torch.tensor([[p]]), torch.zeros(heads_kv),
            torch.zeros(1), params, 0, q)
        history.append(cache_positions(cache))
    assert all(int(n) <= c for n, c in zip(cache.lengths[0], cache.capacities[0]))
    return history


def cache_positions(cache):
    keys, offsets, lengths = cache.keys[0], cache.offsets[0], cache.lengths[0]
    return [sorted(int(keys[o + i, 0]) - 1 for i in range(int(n))) for o, n in zip(offsets, lengths)]


def test_slot_reuse_keeps_exactly_what_the_rule_sees_on_synthetic_keys():
    """Random marks, 30 decode steps, window 4: after every step each head holds exactly the positions the rule
    (methods.dms.visible, brute force over the whole history) lets the last query see."""
    torch.manual_seed(3)
    window, length, steps = 4, 13, 30
    decisions = (torch.rand(2, length + steps) > 0.5)  # decision at position p, per kv head
    marks = torch.zeros(2, length + steps, dtype=torch.bool)
    marks[:, :-1] = decisions[:, 1:]
    prefill_marks = marks[:, :length].clone()
    prefill_marks[:, -1] = False  # pending: decided by the first decode token
    step_decisions = [[1.0 if decisions[h, length + s] else -1.0 for h in range(2)] for s in range(steps)]
    history = _synthetic(window, prefill_marks.tolist(), step_decisions, steps)
    for s, held in enumerate(history):
        last = length - 1 + s  # the last query processed
        known = marks[:, : last + 1].clone()
        known[:, last] = False  # its own mark is still pending
        for h in range(2):
            seen = dms.visible(last, torch.arange(last + 1), known[h], window)
            assert held[h] == seen.nonzero().flatten().tolist(), f"head {h} after {s} decode steps"


def test_a_marked_token_is_held_at_age_window_and_its_slot_reused_at_window_plus_one():
    window = 4
    length = 3
    # token 2 (the prefill's last) is marked by the first decode token's decision; nothing else is marked
    history = _synthetic(window, [[False] * length] * 2, [[1.0, -1.0]] + [[-1.0, -1.0]] * 6, 7)
    assert ring_size(window) == window + 1
    for s, held in enumerate(history):
        last = length - 1 + s
        age = last - 2
        if age <= window:
            assert 2 in held[0], f"token 2 must be held at age {age}"
        else:
            assert 2 not in held[0], f"token 2 must be gone at age {age}"
        assert 2 in held[1]  # unmarked in head 1: held for good
    # the step that evicts token 2 takes its slot: head 0's length stops growing exactly then
    sizes = [len(held[0]) for held in history]
    evicting = window + 1 - (length - 1 - 2)  # decode steps until token 2 reaches age window + 1
    assert sizes[evicting] == sizes[evicting - 1]
    assert all(b == a + 1 for a, b in zip(sizes[:evicting - 1], sizes[1:evicting]))


def test_native_dms_runs_on_the_fast_engine_and_remote_falls_back(tiny, fast):
    decoder, note = pick_decoder({"hf": HFDecoder(), "fast": fast}, parse_method("dms-8x"), tiny)
    assert decoder.name == "fast" and not note
    decoder, note = pick_decoder({"hf": HFDecoder(), "fast": fast}, parse_method("dms-8x-remote"), tiny)
    assert decoder.name == "hf" and "paged cache" in note


def test_repeats_reuse_the_buffers_and_release_drops_them(tiny, long_prompt, fast):
    """Timed repeats of a cell decode over the same buffers (so a captured CUDA graph stays valid); release()
    drops them before the memory pass, whose prefill then allocates layer by layer."""
    method = _method(_params(tiny, long_prompt, False))
    fast.release()
    generate_once(tiny, method, long_prompt, _settings(8), fast)
    first = [k.data_ptr() for k in fast.dms.state.cache.keys]
    state = fast.dms.state
    generate_once(tiny, method, long_prompt, _settings(8), fast)
    assert fast.dms.state is state and [k.data_ptr() for k in fast.dms.state.cache.keys] == first
    fast.release()
    assert fast.dms.state is None


def test_the_dms_step_through_triton_matches_the_hf_engine_under_the_interpreter():
    """The Triton kernels of the DMS step (store + ragged attention, run by Triton's interpreter) in the whole
    engine, alone and in a batch of two: same greedy tokens and live entries per head (per batch row) as the hf
    engine runs each sequence alone (the kernels alone, at batch 2 with per-row positions: kernel_check.py)."""
    env = dict(os.environ, TRITON_INTERPRET="1", KVCOMPRESS_FORCE_TRITON="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kernel_check.py"), "dms-engine"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.count("dms engine ") == 2
    assert proc.stdout.count("dms batch x2 ") == 2  # a batch of two rows at different positions, calibrated
    assert proc.stdout.count("dms-8x+fp8 engine tokens") == 1  # the store's and the attention's fp8 branches


def _generation(tokens, live, nbytes=0):
    return SimpleNamespace(token_ids=tokens, kv_end=SimpleNamespace(tokens_per_head=live, bytes=nbytes))


def test_the_gpu_check_fails_where_the_engines_differ(monkeypatch):
    """kernel_check.py dms-gpu runs on a GPU only (its CPU dry run takes minutes): it exits non-zero on a greedy
    token or a live count the fast engine gets wrong, not only on a kernel mismatch. Its verdicts, on generations
    that differ in one place each."""
    monkeypatch.setenv("KVCOMPRESS_FORCE_TRITON", "1")  # kernel_check sets it on import: restored after this test
    kernels_forced = kernels.FORCE_TRITON
    import kernel_check

    assert kernels.FORCE_TRITON == kernels_forced  # already imported: this process's kernels are left alone
    hf = _generation([1, 2, 3], [[5, 6]])
    assert kernel_check.dms_engine_failures(hf, _generation([1, 2, 3], [[5, 6]]), hf) == []
    assert kernel_check.dms_engine_failures(hf, _generation([1, 2, 4], [[5, 6]])) == ["greedy tokens"]
    assert kernel_check.dms_engine_failures(hf, _generation([1, 2, 3], [[5, 7]])) == ["live per head"]
    assert kernel_check.dms_engine_failures(hf, hf, _generation([1, 2, 4], [[5, 6]])) == ["graph replay"]
    alone = [_generation([1, 2], [[5, 6]], 10), _generation([3, 4], [[7, 8]], 12)]

    def batch(tokens, live, nbytes=22):
        return SimpleNamespace(batch_token_ids=tokens, kv_end=SimpleNamespace(tokens_per_head=live, bytes=nbytes))

    assert kernel_check.dms_batch_failures(alone, batch([[1, 2], [3, 4]], [[5, 6, 7, 8]]), 22) == []
    assert kernel_check.dms_batch_failures(alone, batch([[1, 2], [3, 5]], [[5, 6, 7, 8]])) == ["batch greedy tokens"]
    assert kernel_check.dms_batch_failures(alone, batch([[1, 2], [3, 4]], [[5, 6, 8, 7]])) == ["batch live per row"]
    assert kernel_check.dms_batch_failures(alone, batch([[1, 2], [3, 4]], [[5, 6, 7, 8]], 23), 22) == ["batch KV bytes"]


@pytest.mark.parametrize("batch", [1, 2])
def test_benchmark_records_native_dms_on_the_fast_engine(tmp_path, tiny, batch):
    """The whole pipeline (runner, calibration, measure), alone and in a batch: the record says where DMS ran and
    how its cache is held, its bytes are live entries + the reserve (per row of the batch), and the roofline check
    reads its live entries only."""
    import benchmark
    from kvcompress.commands import checks
    from kvcompress.results import load

    out = tmp_path / "run.json"
    assert benchmark.main(["--preset", "tiny", "--contexts", "320", "--methods", "vanilla,dms-8x", "--engine", "fast",
                           "--max-new-tokens", "8", "--repeats", "1", "--batch", str(batch), "--out", str(out)]) == 0
    run, results = load(out)
    r = next(r for r in results if r.method.startswith("dms-8x"))
    assert r.error is None and r.engine == "fast" and r.dms_impl == "native" and r.batch == batch
    assert r.dms_layout == CompactDMSCache.layout and r.dms_decisions
    assert (batch > 1) == any("sequence 0's prompt" in note for note in r.notes)  # one calibration for the batch
    c = tiny.model.config
    entry = 2 * c.head_dim * tiny.model.dtype.itemsize
    assert r.kv_cache_bytes == r.kv_live_bytes + 7 * batch * c.num_hidden_layers * c.num_key_value_heads * entry
    assert r.kv_live_bytes < r.kv_cache_bytes_full and r.kv_memory_saved
    kv_read = checks._step_bytes(r, run.get("architecture"), True) - r.weights_bytes
    assert kv_read == (r.kv_live_bytes + r.kv_live_bytes_end) / 2
    kv_check = checks.run_checks(run, results)[0]
    assert kv_check.passed is True, kv_check.lines
    line = next(line for line in kv_check.lines if "dms-8x" in line)
    assert line.count("(exact)") == 2 and f"live + reserve {r.kv_cache_bytes - r.kv_live_bytes:,} B" in line
    r.kv_cache_bytes += entry  # one row more than live + reserve: the check must say so
    assert checks.run_checks(run, results)[0].passed is False


def test_a_batch_row_keeps_what_the_reference_keeps_for_that_sequence_alone(tiny, fast):
    """Three prompts of different lengths merged into one compact cache and decoded by one step: after the decode,
    rows b * Hkv + h hold exactly the positions the brute-force reference keeps for sequence b alone (found by
    matching the stored keys to that sequence's keys), in their own rows of the merged buffers."""
    from dms_reference import batch_prompts
    from kvcompress.engine.batch import generate_batch

    prompts = batch_prompts(tiny.tokenizer)
    method = parse_method("dms-8x").prepare(tiny, prompts[0])  # calibrated on sequence 0's prompt
    params = method.params
    steps = 9
    g = generate_batch(tiny, method, prompts, _settings(steps), fast)
    merged = fast.dms.state.cache
    heads = tiny.model.config.num_key_value_heads
    assert merged.heads == (len(prompts), heads)
    reference = BruteForceDMS(tiny.model, params.window, params.alpha_scale, params.alpha_offset,
                              params.threshold.tolist())
    for b, prompt in enumerate(prompts):
        tokens = g.batch_token_ids[b]
        _, want = reference.forward(_ids(prompt)[0].tolist() + tokens[:-1])
        table = _all_keys(tiny, params, _ids(prompt), tokens[:-1])
        rows = slice(b * heads, (b + 1) * heads)
        snapshot = [(k, o[rows], n[rows]) for k, o, n in zip(merged.keys, merged.offsets, merged.lengths)]
        assert _positions(snapshot, table, heads) == want, f"row {b}"
        capacity = [c[b * heads:(b + 1) * heads] for c in merged.capacities]
        assert all(int(n) <= c for layer_n, layer_c in zip(merged.lengths, capacity)
                   for n, c in zip(layer_n[rows], layer_c))
    # each sequence's rows lie in its own span of the merged buffers, in sequence order
    for offsets, capacities in zip(merged.offsets, merged.capacities):
        assert offsets.tolist() == [sum(capacities[:r]) for r in range(len(capacities))]


@pytest.mark.parametrize("name", ["dms-8x", "dms-8x+fp8"])
def test_dms_capacity_search_counts_every_cloned_row_and_fits_more_than_vanilla(tiny, fast, name):
    """benchmark.py capacity's search on a CPU byte budget (weights + the batch's KV bytes): cloned admission's
    copies of the first compact cache hold real bytes (a probe's KV = (B - 1) x the first's + the last's, each
    measured alone, fp8's scales included), and DMS-8x fits several times vanilla's batch on the same budget."""
    from kvcompress.run.capacity import BytesBudget, Runner, capacity_cell
    from kvcompress.tasks.cell import Cell

    from conftest import bytes_per_token

    new = 6
    pair = tuple(Cell(target_tokens=400, needle_seed=b).build(tiny.tokenizer)[0] for b in (0, 1))
    budget = tiny.weights_bytes + int(5.5 * bytes_per_token(tiny.model) * (400 + new - 1))  # vanilla: 5 fit
    runner = Runner(tiny, fast, GenerationSettings(new, SamplingConfig(greedy=True)), BytesBudget(budget), 2)
    vanilla = capacity_cell(runner, parse_method("vanilla"), pair, 400, max_batch=256, max_runs=8)[:2]
    method = parse_method(name).prepare(tiny, pair[0])
    lo, hi, _, probes = capacity_cell(runner, method, pair, 400, max_batch=256, max_runs=12)
    assert vanilla == (5, 6) and hi - lo <= max(1, int(0.02 * lo)) and lo > 3 * vanilla[0]  # exact to 50, then 2 %
    assert fast.dms.state is None  # every probe released its buffers
    alone = [generate_once(tiny, method, p, _settings(new), fast).kv_end.bytes for p in pair]
    for probe in probes:
        kv = (probe.batch - 1) * alone[0] + alone[1] if probe.batch > 1 else alone[0]
        assert probe.used["decode"] == tiny.weights_bytes + kv
        assert probe.fits == (tiny.weights_bytes + kv <= budget)


def test_the_merge_moves_the_batch_layer_by_layer_never_holding_it_twice(tiny, fast, monkeypatch):
    """CompactDMSCache.merge allocates the batch's K, then V, of one layer at a time and frees the sources' copy at
    once: at every allocation, sources still held + merged so far + the new buffer stay within the batch's KV plus
    one buffer, and at the end the sources hold nothing."""
    from dms_reference import batch_prompts
    from kvcompress.engine.batch import generate_batch

    prompts = batch_prompts(tiny.tokenizer)
    method = parse_method("dms-8x").prepare(tiny, prompts[0])
    seen = {}
    held = []
    real_merge, real_empty = CompactDMSCache.merge.__func__, CompactDMSCache._empty

    def merge(cls, caches, moved):
        seen["sources"] = caches
        seen["total"] = sum(t.nbytes for c in caches for t in c.keys + c.values)
        slabs = fast.staging.slabs  # the sources' K/V are views of the decoder's per-layer staging slabs

        def dropped(layer):  # each layer's slabs go as soon as that layer is merged, before the next is allocated
            assert slabs[layer] and not any(slabs[j] for j in range(layer)) and all(slabs[layer:])
            moved(layer)

        return real_merge(cls, caches, dropped)

    def empty(self, shape, dtype, device):
        t = real_empty(self, shape, dtype, device)
        if "sources" in seen:  # inside the merge (the sources' own prefill allocations come before)
            sources = sum(x.nbytes for c in seen["sources"] for x in c.keys + c.values if x is not None)
            merged = sum(x.nbytes for x in self.keys + self.values if x is not None)
            held.append((sources + merged + t.nbytes, t.nbytes))
        return t

    monkeypatch.setattr(CompactDMSCache, "merge", classmethod(merge))
    monkeypatch.setattr(CompactDMSCache, "_empty", empty)
    generate_batch(tiny, method, prompts, _settings(6), fast)
    assert len(held) == 2 * tiny.model.config.num_hidden_layers  # K and V of every layer, one at a time
    assert all(total <= seen["total"] + new for total, new in held)
    assert all(x is None for c in seen["sources"] for x in c.keys + c.values + c.offsets + c.lengths)
    merged = fast.dms.state.cache
    assert sum(k.nbytes + v.nbytes for k, v in zip(merged.keys, merged.values)) == seen["total"]
    assert not any(fast.staging.slabs)


@pytest.mark.parametrize("scale", ["layer", "head"])
def test_an_fp8_compact_cache_stores_codes_decodes_as_the_hf_engine_and_holds_formula_bytes(tiny, long_prompt, fast,
                                                                                             scale, monkeypatch):
    """dms-8x+fp8 on the fast engine: after the prefill, each live row is the e4m3 code of that position's key,
    key / (absmax of the layer's prefill keys / 448) (per sequence, or per kv head), computed here from the hf
    path's keys in float64 and rounded by torch's own float8 cast; the greedy tokens and the live entries per head
    equal the hf engine's quantized DMS cache; bytes are one byte an element for live + reserve rows plus the
    float32 scales, and full_bytes is vanilla's in bf16."""
    from kvcompress.methods import quant

    params = _params(tiny, long_prompt, True)
    name = "dms-8x+fp8" if scale == "layer" else "dms-8x+fp8[scale=head]"
    method = dataclasses.replace(parse_method(name), inner=_method(params))
    first = []
    real_step = _DMSDecodeState.step

    def step(state):
        if not first:
            c = state.cache
            first.extend((k.clone(), o.clone(), n.clone(), s.clone()) for k, o, n, s in
                         zip(c.keys, c.offsets, c.lengths, c.k_scales))
        real_step(state)

    monkeypatch.setattr(_DMSDecodeState, "step", step)
    got = generate_once(tiny, method, long_prompt, _settings(), fast)
    hf = generate_once(tiny, method, long_prompt, _settings(), HFDecoder())
    assert got.token_ids == hf.token_ids and len(set(got.token_ids)) > 2
    assert got.kv_after.tokens_per_head == hf.kv_after.tokens_per_head
    assert got.kv_end.tokens_per_head == hf.kv_end.tokens_per_head

    n = _ids(long_prompt).shape[1]
    table = _all_keys(tiny, params, _ids(long_prompt), got.token_ids[:-1])
    for layer, ((codes, offsets, lengths, scales), keys) in enumerate(zip(first, table)):
        assert codes.dtype == quant.FP8
        prefill = keys[0, :, :n].double()  # (Hkv, n, D)
        amax = prefill.abs().amax() if scale == "layer" else prefill.abs().amax(dim=(1, 2))
        want_scale = (amax / 448).float().expand(prefill.shape[0])
        assert torch.equal(scales.view(-1).expand(prefill.shape[0]), want_scale), f"layer {layer} scales"
        for h in range(prefill.shape[0]):
            rows = codes[int(offsets[h]): int(offsets[h]) + int(lengths[h])]
            want = (prefill[h] / want_scale[h].double()).clamp(-448, 448).to(quant.FP8)  # every position's code
            found = (rows.view(torch.uint8)[:, None, :] == want.view(torch.uint8)[None, :, :]).all(-1).any(-1)
            assert bool(found.all()), f"layer {layer} head {h}: a stored row is no position's code"

    c = tiny.model.config
    heads = c.num_hidden_layers * c.num_key_value_heads
    live = sum(sum(layer) for layer in got.kv_after.tokens_per_head)
    scale_bytes = c.num_hidden_layers * 2 * 4 * (c.num_key_value_heads if scale == "head" else 1)
    data = (live + (STEPS - 1) * heads) * 2 * c.head_dim  # one byte an element
    assert got.kv_after.parts == {"data": data, "scales": scale_bytes, "window": 0}
    assert got.kv_after.bytes == data + scale_bytes
    assert got.kv_after.live_bytes == live * 2 * c.head_dim + scale_bytes
    assert got.kv_after.full_bytes == hf.kv_after.full_bytes == n * heads * 2 * c.head_dim * tiny.dtype.itemsize


def test_an_fp8_compact_batch_decodes_each_row_as_alone(tiny, fast):
    """dms-8x+fp8 batched on the fast engine (engine.batch: prefill each, merge, one step): each row's greedy tokens
    equal that prompt decoded alone, and the batch's bytes are its rows' summed; the hf engine refuses the batch in
    one line."""
    from dms_reference import batch_prompts
    from kvcompress.engine.batch import generate_batch
    from kvcompress.errors import UserError

    prompts = batch_prompts(tiny.tokenizer)
    method = parse_method("dms-8x+fp8").prepare(tiny, prompts[0])
    steps = 9
    g = generate_batch(tiny, method, prompts, _settings(steps), fast)
    alone = [generate_once(tiny, method, p, _settings(steps), fast) for p in prompts]
    assert g.batch_token_ids == [a.token_ids for a in alone]
    assert g.kv_after.parts["scales"] == sum(a.kv_after.parts["scales"] for a in alone)
    assert g.kv_after.live_bytes == sum(a.kv_after.live_bytes for a in alone)
    with pytest.raises(UserError, match="not supported on the hf engine"):
        generate_batch(tiny, method, prompts, _settings(steps), HFDecoder())


def test_benchmark_records_an_fp8_compact_cache_and_check_holds_its_bytes_to_the_formula(tmp_path, tiny):
    """benchmark.py on the fast engine, dms-8x+fp8 in a batch of 2: the record says the cache is stored (not
    simulated), and `check` item 1 finds its codes (live + reserve rows, one byte an element) and scales exact;
    one scale too many fails it."""
    import benchmark
    from kvcompress.commands import checks
    from kvcompress.results import load

    out = tmp_path / "run.json"
    assert benchmark.main(["--preset", "tiny", "--contexts", "320", "--methods", "vanilla,dms-8x+fp8", "--engine",
                           "fast", "--max-new-tokens", "8", "--repeats", "1", "--batch", "2", "--out", str(out)]) == 0
    run, results = load(out)
    r = next(r for r in results if r.method == "dms-8x+fp8")
    assert r.error is None and r.engine == "fast" and r.kv_quant == "fp8" and r.kv_quant_storage == "stored"
    assert r.dms_layout == CompactDMSCache.layout and r.batch == 2
    kv_check = checks.run_checks(run, results)[0]
    assert kv_check.passed is True, kv_check.lines
    assert "(exact)" in next(line for line in kv_check.lines if "dms-8x+fp8" in line)
    r.kv_bytes_parts["scales"] += 4
    r.kv_cache_bytes += 4
    assert checks.run_checks(run, results)[0].passed is False
