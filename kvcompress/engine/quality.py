"""Answers for quality runs: each sample answered once, no warm-up, no repeats, no memory pass, nothing timed.

Methods that join a shared prefill (engine/shared_prefill.py) answer a batch of samples together: each sample's
compressed cache gets its question prefilled after it (where engine.generate.question_start puts it, with the
method's hidden entries on the attention modules, as in its own run), its first token sampled, and the batch is
decoded by the engine (engine.batch's admission and `decode_batch`) until every row has emitted end-of-sequence or
reached the batch's token budget; each row is then cut at its own end-of-sequence and its own budget. Every row
draws the same uniforms (the run's seed), so a sample's answer does not depend on its place in the batch. A method
with a prefill of its own (native DMS, decoding presses, query-aware runs) answers each sample alone through
engine.generate.generate_once, as the measured path does, minus the repeats and the memory pass.

KV figures come from the compressed cache's own tensors, read once per sample before its question (memory.kv_state).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch

from kvcompress.engine.batch import Admission
from kvcompress.engine.generate import GenerationSettings, Prompt, eos_ids, generate_once, kv_after_context
from kvcompress.engine.sampling import draw_uniforms, sample
from kvcompress.engine.shared_prefill import Compressed, set_masks
from kvcompress.memory import KVState, clear_masks, kv_state, take_masked_indices
from kvcompress.methods import Method


@dataclass
class QualityAnswer:
    token_ids: list[int]  # generated, cut after its first end-of-sequence token and at its own budget
    kv_after: KVState  # the compressed context's cache, before the question
    decoded_with: int  # sequences decoded together (1: alone)


@torch.inference_mode()
def answer_compressed(lm, compressed: list[Compressed], prompts: list[Prompt], budgets: list[int],
                      settings: GenerationSettings, decoder, phase=None) -> list[QualityAnswer | str]:
    """Answers to `prompts` (their question parts) from their compressed caches, decoded as one batch;
    `budgets`: each sample's output tokens at most. A sample whose question cannot be fed (kvpress's mask search can
    fail on some queries, as in its own pipeline) gets its one-line error instead, the others still answer. The
    caches are consumed. `phase(name)`: a context manager around the "questions" and the "decode" (where the
    caller's clock splits its time; nothing by default)."""
    phase = phase or (lambda name: contextlib.nullcontext())
    with phase("questions"):
        admitted, firsts, states, failed, uniforms, steps, eos = _questions(lm, compressed, prompts, budgets,
                                                                            settings, decoder)
    rows = [b for b in range(len(prompts)) if b not in failed]
    tokens = {}
    if rows:
        out_tokens = torch.empty(steps, len(rows), dtype=torch.long, device=lm.device)
        out_tokens[0] = torch.cat(firsts)
        try:
            with phase("decode"):
                generated = (decoder.decode_batch(lm, admitted, uniforms[:, None].expand(steps, len(rows)).contiguous(),
                                                  settings, out_tokens, eos=eos)[0] if steps > 1 else 1)
                tokens = dict(zip(rows, out_tokens[:generated].T.tolist()))
        finally:
            del admitted
            decoder.release()
            clear_masks(lm.model)
    return [failed[b] if b in failed else QualityAnswer(cut(tokens[b], budgets[b], eos), states[b], len(rows))
            for b in range(len(prompts))]


def _questions(lm, compressed, prompts, budgets, settings, decoder):
    """Each cache's question prefilled and first token sampled, the cache admitted to the decoder."""
    model, device = lm.model, lm.device
    steps = max(budgets)
    eos = eos_ids(lm) if not settings.fixed_length else set()
    uniforms = draw_uniforms(settings.sampling, steps, device)  # every row samples as if alone
    firsts, admitted, states, failed = [], [], {}, {}
    for b, (c, prompt) in enumerate(zip(compressed, prompts)):
        try:
            set_masks(model, c.masked)
            state = kv_state(c.cache, model, prompt.context_tokens)
            question = prompt.question_ids.to(device)
            positions = torch.arange(c.question_start, c.question_start + question.shape[1], device=device)[None]
            logits = model(input_ids=question, past_key_values=c.cache, position_ids=positions, use_cache=True,
                           logits_to_keep=1).logits[:, -1]
        except Exception as exc:  # noqa: BLE001 - this sample's error; the batch goes on without it
            failed[b] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            c.cache = None
            continue
        states[b] = state
        firsts.append(sample(logits, uniforms[:1], settings.sampling))
        room = max(1, len(prompts) - 1 - b)
        admitted.append(Admission(decoder.admit(c.cache, expected=room), c.question_start + question.shape[1],
                                  take_masked_indices(model), lambda: None))
        c.cache = None  # the decoder owns it now
    clear_masks(model)
    return admitted, firsts, states, failed, uniforms, steps, eos


def answer_alone(lm, method: Method, prompt: Prompt, budget: int, settings: GenerationSettings,
                 decoder) -> QualityAnswer:
    """A method with a prefill of its own: the measured path's one generation, once. A single-prefill method (DMS)
    takes context and question in one prefill: its KV is read as engine.measure reads it, after a prefill of the
    context alone (engine.generate.kv_after_context), so every method's bytes cover the same positions."""
    try:
        generation = generate_once(lm, method, prompt, replace(settings, max_new_tokens=budget), decoder)
        after = generation.kv_after
        if method.single_prefill and not settings.query_aware:
            decoder.release()
            after = kv_after_context(lm, method, prompt, settings, decoder, settings.sampling.seed)
    finally:
        decoder.release()
    eos = eos_ids(lm) if not settings.fixed_length else set()
    return QualityAnswer(cut(generation.token_ids, budget, eos), after, 1)


def cut(tokens: list[int], budget: int, eos: set[int]) -> list[int]:
    """A row of a batch: its own budget, and nothing after its first end-of-sequence token (kept, as
    generate_once keeps it)."""
    tokens = tokens[:budget]
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i + 1]
    return tokens
