"""Batched generation: N prompts admitted one after another, each prefilled and compressed on its own (as a serving
engine admits requests, so the prefill peak is one sequence's beside the caches already held), then decoded
together, one token per sequence per step.

Sequence b samples with seed + b, so it generates what it would generate alone with that seed (its prompt's needle
seed is seed + b too: tasks.cell.Cell.build_batch). Sequences whose kept lengths differ are right-padded to a common
length per layer, the pads hidden from attention (the fast engine's validity mask; the hf engine's attention mask),
each sequence keeping its own RoPE positions. Native DMS-8x: each sequence prefills context + question into its own
DMS cache under one attention patch (thresholds shared, calibrated on sequence 0's prompt), then the fast engine
merges the compact caches into one (engine/fast_dms.py, no pads) and the hf engine stacks the masked caches
(methods/dms.py: pads at a position no query reaches). "cloned" admission (the capacity search) prefills the first
and the last sequence for real and fills the rows between with copies of the first's compressed cache: the same
bytes, the same peak (the last prefill runs beside B - 1 held caches), two prefills instead of B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from statistics import median

import torch
from transformers import DynamicCache

from kvcompress.engine.generate import Generation, GenerationSettings, Prompt, _prefill, new_cache
from kvcompress.engine.sampling import draw_uniforms, sample
from kvcompress.engine.timing import Stopwatch
from kvcompress.errors import UserError
from kvcompress.memory import KVState, PhasePeaks, clear_masks, kv_state, padded_rows_state, take_masked_indices
from kvcompress.methods import Method, press_context

@dataclass
class Admission:
    """One sequence after its prefill, compression, question and first token."""

    cache: object
    next_position: int  # position of the first decoded token (= the sequence's input tokens)
    masked: dict  # {layer: (batch, head, position)} entries a mask-only press hid
    kv_after: Callable[[], KVState]  # the cache right after the context's compression (a snapshot, read later)


@dataclass
class BatchGeneration(Generation):
    # start of the first prefill -> every sequence admitted: the last one's first token sampled and all caches moved
    # into the batch's decode cache (the fast engine's buffers, the hf engine's stacked cache)
    admit_s: float = 0.0
    ttft_each_s: list[float] = field(default_factory=list)  # each really prefilled sequence's own TTFT
    batch_token_ids: list[list[int]] = field(default_factory=list)  # per sequence
    admission: str = "each"
    steady_s: float | None = None  # the decode steps after the first: replays of the captured graph
    steady_steps: int = 0

    @property
    def batch(self) -> int:
        return len(self.batch_token_ids)

    @property
    def tpot_ms(self) -> float | None:
        """One decode step of the whole batch (every sequence gets one token), timed over the steps after the first:
        the first decode step of a batch runs eagerly and captures the fast engine's CUDA graph for this batch and
        shape, which a server does once at start-up, not per step. With two output tokens, the one step there is."""
        if self.steady_steps:
            return self.steady_s * 1000.0 / self.steady_steps
        n = self.output_tokens
        return (self.e2e_s - self.admit_s) * 1000.0 / (n - 1) if n > 1 else None


def batch_problem(method: Method, settings: GenerationSettings) -> str | None:
    """Why this method cannot be decoded in a batch (one line), or None."""
    if method.kind == "dms" and not method.native_dms:
        return "batched decode of dms-8x-remote is not supported (its child process decodes batch 1); dms-8x batches"
    if method.compresses_during_decoding and not method.native_dms:
        return "batched decode of a decoding-phase press is not supported (it rewrites one sequence's cache per step)"
    if not settings.fixed_length:
        return "batched decode times fixed-length generations; end-of-sequence stopping is batch 1 only"
    return None


@torch.inference_mode()
def generate_batch(lm, method: Method, prompts: list[Prompt], settings: GenerationSettings, decoder, *,
                   admission: str = "each") -> BatchGeneration:
    reason = batch_problem(method, settings)
    if reason:
        raise UserError(reason)
    model, device = lm.model, lm.device
    n, n_new = len(prompts), settings.max_new_tokens
    uniforms = torch.stack([draw_uniforms(replace(settings.sampling, seed=settings.sampling.seed + b), n_new, device)
                            for b in range(n)], dim=1)  # (steps, batch): sequence b samples with seed + b
    out_tokens = torch.empty(n_new, n, dtype=torch.long, device=device)
    real = list(range(n)) if admission == "each" else sorted({0, n - 1})
    # Native DMS: one attention patch for the whole generation (every prefill and the decode), its thresholds shared
    # by every sequence (calibrated once, on sequence 0's prompt: one_cell.prepare_dms); context and question are
    # one prefill, as at batch 1. A press acts on each sequence's prefill only, a fresh one per sequence.
    dms = method.native_dms
    whole_run = method.new_press(model) if dms else None
    presses = {b: None if dms else method.new_press(model) for b in real}
    single_prefill = dms or settings.query_aware
    protocol = "single_prefill" if dms else ("query_aware" if settings.query_aware else "query_agnostic")
    # the fast engine's DMS cache is sized at its prefill: rows for every token the generation may write
    rows_for = max(n_new, settings.reserve_tokens or 0)
    clear_masks(model)
    admitted: list[Admission | None] = [None] * n
    admit = getattr(decoder, "admit", _admit)  # where the decoder wants the admitted caches (fast.FastDecoder.admit)

    peaks = PhasePeaks(device)
    clock = Stopwatch(device)
    steady: dict[str, int] = {}

    def mark(name: str, steps: int | None = None) -> None:  # "admitted": the batch's cache is built; "steady"
        clock.mark(name)
        if steps is not None:
            steady["steps"] = steps

    with press_context(whole_run, model):
        peaks.reset()
        clock.start()
        for b in range(n):
            if b not in real:  # cloned admission: a copy of the first sequence's compressed cache
                first = admitted[0]
                admitted[b] = Admission(admit(first.cache, copy=True, expected=n - 1 - b), first.next_position,
                                        dict(first.masked), first.kv_after)
                out_tokens[0, b] = out_tokens[0, 0]
                continue
            prompt = prompts[b]
            if b:
                clock.mark(f"start{b}")
            # room in the decoder's staging for the sequences before the last: the last one's slot is made after
            # its prefill, so that prefill's peak holds the batch's other caches and nothing more
            room = max(1, n - 1 - b)
            cache = new_cache(decoder, method, lm, rows_for)
            if hasattr(cache, "admit_to_batch"):  # the fast engine's DMS cache, merged into the batch's after prefill
                cache.admit_to_batch(decoder.staging_buffers(cache.n_layers, room))
            cache, kv_after, logits, next_position = _prefill(
                lm, method, presses[b], prompt.context_ids.to(device), prompt.question_ids.to(device), presses[b],
                single_prefill, cache)
            token = sample(logits, uniforms[0, b:b + 1], settings.sampling)
            out_tokens[0, b:b + 1] = token
            int(token.item())  # this sequence's first token is on the host: its TTFT ends here
            clock.mark(f"first{b}")
            # the snapshot is taken now and read after the clock stops (a DMS cache's counts would synchronise)
            masked = take_masked_indices(model)
            admitted[b] = Admission(admit(cache, expected=room), next_position, masked, kv_after)
        peak_prefill = peaks.peak()
        peaks.reset()
        decode = getattr(decoder, "decode_batch", None)
        n_generated, final = (decode(lm, admitted, uniforms, settings, out_tokens, mark) if decode is not None
                              else hf_decode_batch(lm, admitted, uniforms, settings, out_tokens, mark))
        clock.mark("end")
    ttfts = [clock.seconds("start" if b == 0 else f"start{b}", f"first{b}") for b in real]
    admit_s = clock.seconds("start", "admitted")
    e2e = clock.seconds("start", "end")
    steady_s = clock.seconds("steady", "end") if steady.get("steps") else None
    peak_decode = peaks.peak()
    kv_after = combine([a.kv_after() for a in admitted])
    kv_end = kv_state(final, model, [a.next_position + n_generated - 1 for a in admitted])
    tokens = out_tokens[:n_generated].T.tolist()
    del admitted, final
    clear_masks(model)
    return BatchGeneration(median(ttfts), e2e, tokens[0], kv_after, kv_end, peak_prefill, peak_decode, protocol,
                           admit_s=admit_s, ttft_each_s=ttfts, batch_token_ids=tokens, admission=admission,
                           steady_s=steady_s, steady_steps=steady.get("steps", 0))


def combine(states: list[KVState]) -> KVState:
    """The batch's KV: bytes summed over its sequences; kept tokens and positions per sequence (their mean); live
    tokens per head (DMS) as the batch's rows b * Hkv + h."""
    n = len(states)
    per_layer = [sum(layer) / n for layer in zip(*(s.tokens_per_layer for s in states))]
    per_head = None
    if all(s.tokens_per_head is not None for s in states):
        per_head = [[c for rows in layer for c in rows] for layer in zip(*(s.tokens_per_head for s in states))]
    return KVState(sum(s.bytes for s in states), sum(s.live_bytes for s in states), sum(s.full_bytes for s in states),
                   per_layer, sum(s.positions for s in states) / n, per_head)


def _admit(cache, copy: bool = False, expected: int = 1):
    return _copy_cache(cache) if copy else cache


def _copy_cache(cache):
    if hasattr(cache, "dms_prefill_layer"):
        return cache.copy()  # native DMS's caches (marks, ring, per-head rows) copy themselves
    copy = DynamicCache()
    for i, layer in enumerate(cache.layers):
        copy.update(layer.keys, layer.values, i)  # DynamicCache.update concatenates onto an empty layer: a copy
    return copy


# --------------------------------------------------------------------------------------------------------------------
# the hf engine's batched decode: one DynamicCache of all sequences, transformers' own forward
# --------------------------------------------------------------------------------------------------------------------

class BatchedCache:
    """The sequences' caches stacked along the batch, right-padded per layer; an attention mask hides the pads.

    transformers applies one attention mask to every layer, so a padded batch needs every sequence to keep the same
    length in all layers; presses that keep different lengths per layer are refused then (the fast engine pads
    each layer's buffer on its own)."""

    def __init__(self, admitted: list[Admission], model):
        self.cache = DynamicCache()
        n_layers = len(admitted[0].cache.layers)
        lengths = [[a.cache.layers[i].keys.shape[2] for a in admitted] for i in range(n_layers)]
        self.pads = [[max(row) - n for n in row] for row in lengths]
        padded = any(any(row) for row in self.pads)
        if padded and any(lengths[i] != lengths[0] for i in range(n_layers)):
            raise UserError("hf engine: this press keeps different lengths per layer and the batch's sequences differ, "
                            "so one attention mask cannot hide the padding; use --engine fast")
        for i in range(n_layers):
            longest = max(lengths[i])
            stacked = []
            for name in ("keys", "values"):
                sources = [getattr(a.cache.layers[i], name) for a in admitted]
                first = sources[0]
                out = first.new_zeros(len(sources), first.shape[1], longest, first.shape[3])
                for b, src in enumerate(sources):
                    out[b:b + 1, :, :src.shape[2]].copy_(src)
                for a in admitted:  # each source layer is freed as soon as it is stacked
                    setattr(a.cache.layers[i], name, first.new_empty(0))
                del sources, first
                stacked.append(out)
            self.cache.update(stacked[0], stacked[1], i)
        self.attention_mask = None
        if padded:
            mask = torch.ones(len(admitted), max(lengths[0]), dtype=torch.long, device=self.cache.layers[0].keys.device)
            for b, pad in enumerate(self.pads[0]):
                if pad:
                    mask[b, mask.shape[1] - pad:] = 0
            self.attention_mask = mask
        # Mask-only presses: kvpress hides the entries named by each attention module's masked_key_indices; offset
        # each sequence's batch index to its row.
        self.masked = {}
        for i in range(n_layers):
            parts = [(b, a.masked[i]) for b, a in enumerate(admitted) if i in a.masked]
            if parts:
                self.masked[i] = tuple(torch.cat([idx[k] + (b if k == 0 else 0) for b, idx in parts]) for k in range(3))
        for layer, indices in self.masked.items():
            model.model.layers[layer].self_attn.masked_key_indices = indices

    def kv_state(self, positions: list[int]) -> KVState:
        """Bytes of the stacked tensors (pads included: they are allocated); live entries exclude pads and hidden
        entries; full = the same sequences with nothing evicted."""
        layers = []
        for i, layer in enumerate(self.cache.layers):
            batch, heads, length, _ = layer.keys.shape
            hidden = int(self.masked[i][0].numel()) / heads if i in self.masked else 0.0
            layers.append((layer.keys.nbytes + layer.values.nbytes, batch, length,
                           batch * length - sum(self.pads[i]) - hidden))
        return padded_rows_state(layers, positions)


def hf_decode_batch(lm, admitted: list[Admission], uniforms, settings, out_tokens, mark=lambda *a: None):
    model = lm.model
    first = admitted[0].cache
    if hasattr(first, "dms_decode_layer"):  # native DMS: its masked cache stacks itself and hides its own pads
        batched = type(first).stack([a.cache for a in admitted])
        cache, mask = batched, None
    else:
        batched = BatchedCache(admitted, model)
        cache, mask = batched.cache, batched.attention_mask
    del first
    mark("admitted")
    n, steps = out_tokens.shape[1], out_tokens.shape[0]
    token = out_tokens[0].clone()
    position = torch.tensor([a.next_position for a in admitted], dtype=torch.long, device=lm.device).view(n, 1)
    for step in range(1, steps):
        if step == 2:  # timed like the fast engine's: the steps after the first
            mark("steady", steps - 2)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
        logits = model(input_ids=token.view(n, 1), past_key_values=cache, position_ids=position,
                       attention_mask=mask, use_cache=True).logits[:, -1]
        token = sample(logits, uniforms[step], settings.sampling)
        out_tokens[step] = token
        position += 1
    return steps, batched
