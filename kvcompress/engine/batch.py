"""Batched generation: N prompts admitted one after another, each prefilled and compressed on its own (as a serving
engine admits requests, so the prefill peak is one sequence's beside the caches already held), then decoded
together, one token per sequence per step.

Sequence b samples with seed + b, so it generates what it would generate alone with that seed (its prompt's needle
seed is seed + b too: tasks.cell.Cell.build_batch). Sequences whose kept lengths differ are right-padded to a common
length per layer, the pads hidden from attention (the fast engine's validity mask; the hf engine's attention mask),
each sequence keeping its own RoPE positions. Native DMS-8x: each sequence prefills context + question into its own
DMS cache under one attention patch (thresholds shared, calibrated on sequence 0's prompt), then the fast engine
merges the compact caches into one (engine/fast/dms.py, no pads) and the hf engine (engine/hf.py) stacks the masked
caches (methods/dms.py: pads at a position no query reaches). "cloned" admission (the capacity search) prefills the first
and the last sequence for real and fills the rows between with copies of the first's compressed cache: the same
bytes, the same peak (the last prefill runs beside B - 1 held caches), two prefills instead of B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from statistics import median

import torch

from kvcompress.engine.generate import Generation, GenerationSettings, Prompt, prefill, prefill_protocol
from kvcompress.engine.sampling import draw_uniforms, reseed, sample, seeded
from kvcompress.engine.timing import Stopwatch
from kvcompress.errors import UserError
from kvcompress.memory import KVState, PhasePeaks, clear_masks, kv_state, take_masked_indices
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


def generate_batch(lm, method: Method, prompts: list[Prompt], settings: GenerationSettings, decoder, *,
                   admission: str = "each") -> BatchGeneration:
    """_generate_batch with torch's generators seeded: sequence b's prefill with seed + b (engine.sampling.seeded),
    so a method's own random draws for it are those it makes alone with that seed."""
    with seeded(settings.sampling.seed, lm.device):
        return _generate_batch(lm, method, prompts, settings, decoder, admission=admission)


@torch.inference_mode()
def _generate_batch(lm, method: Method, prompts: list[Prompt], settings: GenerationSettings, decoder, *,
                    admission: str = "each") -> BatchGeneration:
    reason = method.batch_problem(settings)
    if reason:
        raise UserError(reason)
    model, device = lm.model, lm.device
    n, n_new = len(prompts), settings.max_new_tokens
    uniforms = torch.stack([draw_uniforms(replace(settings.sampling, seed=settings.sampling.seed + b), n_new, device)
                            for b in range(n)], dim=1)  # (steps, batch): sequence b samples with seed + b
    out_tokens = torch.empty(n_new, n, dtype=torch.long, device=device)
    real = list(range(n)) if admission == "each" else sorted({0, n - 1})
    # A method that compresses while decoding and batches (native DMS; batch_problem refuses decoding presses): one
    # hook for the whole generation (every prefill and the decode), shared by every sequence (DMS's thresholds:
    # calibrated once, on sequence 0's prompt, by Method.prepare). A press acts on each sequence's prefill only, a
    # fresh one per sequence.
    shared = method.compresses_during_decoding
    whole_run = method.hook(model) if shared else None
    presses = {b: None if shared else method.hook(model) for b in real}
    single_prefill, protocol = prefill_protocol(method, settings)
    # the fast engine's DMS cache is sized at its prefill: rows for every token the generation may write
    rows_for = max(n_new, settings.reserve_tokens or 0)
    clear_masks(model)
    admitted: list[Admission | None] = [None] * n

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
                admitted[b] = Admission(decoder.admit(first.cache, copy=True, expected=n - 1 - b), first.next_position,
                                        dict(first.masked), first.kv_after)
                out_tokens[0, b] = out_tokens[0, 0]
                continue
            prompt = prompts[b]
            if b:
                reseed(settings.sampling.seed + b, device)  # host-side: a generator's seed, no device work
                clock.mark(f"start{b}")
            # room in the decoder's staging for the sequences before the last: the last one's slot is made after
            # its prefill, so that prefill's peak holds the batch's other caches and nothing more
            room = max(1, n - 1 - b)
            cache = method.new_cache(decoder, lm, rows_for, batch_room=room)
            cache, kv_after, logits, next_position = prefill(
                lm, method, presses[b], prompt.context_ids.to(device), prompt.question_ids.to(device), presses[b],
                single_prefill, cache)
            token = sample(logits, uniforms[0, b:b + 1], settings.sampling)
            out_tokens[0, b:b + 1] = token
            int(token.item())  # this sequence's first token is on the host: its TTFT ends here
            clock.mark(f"first{b}")
            # the snapshot is taken now and read after the clock stops (a DMS cache's counts would synchronise)
            masked = take_masked_indices(model)
            admitted[b] = Admission(decoder.admit(cache, expected=room), next_position, masked, kv_after)
        peak_prefill = peaks.peak()
        peaks.reset()
        n_generated, final = decoder.decode_batch(lm, admitted, uniforms, settings, out_tokens, mark)
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
    parts = None
    if all(s.parts is not None for s in states):  # a quantized cache's bytes by part, summed as the bytes are
        parts = {name: sum(s.parts[name] for s in states) for name in states[0].parts}
    return KVState(sum(s.bytes for s in states), sum(s.live_bytes for s in states), sum(s.full_bytes for s in states),
                   per_layer, sum(s.positions for s in states) / n, per_head, parts, [s.tokens_kept for s in states])
