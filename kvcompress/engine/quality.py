"""Answers for quality runs: each sample answered once, no warm-up, no repeats, no memory pass, nothing timed.

Methods that join a shared prefill (engine/shared_prefill.py) answer a batch of samples together: the compressed
caches are admitted to the engine (engine.batch's admission) and decoded as one batch (`decode_batch`) whose first
steps feed each row its question (where engine.generate.question_start puts it, the method's hidden entries hidden,
as in its own run) one token a step, forced instead of sampled; each row then samples its answer until every row
has emitted end-of-sequence or reached its budget, and is cut at its own end-of-sequence and its own budget. Every
row draws the same uniforms (the run's seed) from its first answer token on, so a sample's answer does not depend on
its place in the batch. A method with a prefill of its own (native DMS, decoding presses, query-aware runs) answers
each sample alone through engine.generate.generate_once, as the measured path does, minus the repeats and the memory
pass.

KV figures come from the compressed cache's own tensors, read once per sample before its question (memory.kv_state).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch

from kvcompress.engine.batch import Admission
from kvcompress.engine.generate import (GenerationSettings, Prompt, eos_ids, feed_question, generate_once,
                                       kv_after_context)
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
                      settings: GenerationSettings, decoder, clock=None) -> list[QualityAnswer | str]:
    """Answers to `prompts` (their question parts) from their compressed caches, decoded as one batch;
    `budgets`: each sample's output tokens at most. The questions are fed by the decode itself: row b's first q_b
    steps take its question's tokens (forced) instead of sampled ones, and its answer starts at the token sampled
    after its question's last. One forward per question token for the whole batch costs far less than one
    forward per row (a quality batch holds ~100 rows of ~40 question tokens), and it is the same causal attention
    over the same cache as a prefill of the question. Quantized caches (methods/quantized.py) are the exception:
    their own run attends to the question in bf16 and quantizes it after, where a forced token would be stored
    quantized before it is read, so each row's question is prefilled as in its own run (one forward a row) and the
    batch decodes the answers. A sample whose KV cannot be read (or whose question fails) gets its one-line error
    instead; the others still answer. The caches are consumed. `clock` (NoClock's interface): `clock(name)` a
    context manager around the "questions" (the caches read and admitted) and the "decode", and `clock.laps()` the
    decoder's marks that split the decode (its buffers loaded, its first step, its replays)."""
    clock = clock or NoClock()
    eos = eos_ids(lm) if not settings.fixed_length else set()
    uniforms = draw_uniforms(settings.sampling, max(budgets), lm.device)  # every row samples as if alone
    prefilled = any(getattr(c.cache, "spec", None) is not None for c in compressed)  # a quantized cache's questions
    with clock("questions"):
        admitted, states, failed, firsts = _admit(lm, compressed, prompts, decoder,
                                                  *((settings.sampling, uniforms) if prefilled else ()))
    rows = [b for b in range(len(prompts)) if b not in failed]
    tokens = {}
    if rows:
        row_budgets = [budgets[b] for b in rows]
        if prefilled:  # each row's first answer token is sampled already; the decode takes every row from there
            before = [0] * len(rows)
            steps = max(row_budgets)
            forced = None
            out_tokens = torch.zeros(steps, len(rows), dtype=torch.long, device=lm.device)
            out_tokens[0] = torch.cat(firsts)
            row_uniforms = uniforms[:steps, None].expand(steps, len(rows)).contiguous()
        else:
            questions = [prompts[b].question_ids.view(-1).tolist() for b in rows]
            before = [len(q) for q in questions]
            steps = max(len(q) + n for q, n in zip(questions, row_budgets))
            forced, row_uniforms = (t.to(lm.device) for t in forced_questions(questions, uniforms, steps))
            out_tokens = forced.clamp(min=0)
        try:
            with clock("decode"):
                mark = clock.laps()
                generated = decoder.decode_batch(lm, admitted, row_uniforms, settings, out_tokens, mark=mark,
                                                 eos=eos, forced=forced)[0] if steps > 1 else 1
                mark("end")
                columns = out_tokens[:generated].T.tolist()
                tokens = {b: columns[r][before[r]:] for r, b in enumerate(rows)}
        finally:
            del admitted
            decoder.release()
            clear_masks(lm.model)
    return [failed[b] if b in failed else QualityAnswer(cut(tokens[b], budgets[b], eos), states[b], len(rows))
            for b in range(len(prompts))]


class NoClock:
    """answer_compressed's clock when the caller keeps none: no phases, no laps."""

    def __call__(self, name: str):
        return contextlib.nullcontext()

    def laps(self):
        return lambda name, *rest: None


def forced_questions(questions: list[list[int]], uniforms: torch.Tensor, steps: int):
    """(forced, uniforms), each (steps, rows), on the host: forced[t, r] is row r's question token t while
    t < q_r and -1 after it (sampled); row r's answer token j (step q_r + j) draws uniforms[j], as it would alone."""
    forced = torch.full((steps, len(questions)), -1, dtype=torch.long)
    row_uniforms = torch.zeros(steps, len(questions), dtype=uniforms.dtype)
    host = uniforms.cpu()
    for r, q in enumerate(questions):
        if not q:
            raise ValueError("a quality answer needs a question to feed after the compressed context")
        forced[:len(q), r] = torch.tensor(q, dtype=torch.long)
        n = min(steps - len(q), host.shape[0])
        row_uniforms[len(q):len(q) + n, r] = host[:n]
    return forced, row_uniforms


def _admit(lm, compressed, prompts, decoder, sampling=None, uniforms=None):
    """Each cache's KV read (before its question) and the cache admitted to the decoder: (admissions, {row: KVState},
    {row: error line}, first tokens). Its question not yet fed, unless `sampling` is given (quantized caches): then
    it is prefilled as its own run prefills it (engine.generate.feed_question) and its first token sampled with
    uniform 0 (one per admitted row, in order)."""
    model = lm.model
    admitted, states, failed, firsts = [], {}, {}, []
    for b, (c, prompt) in enumerate(zip(compressed, prompts)):
        try:
            set_masks(model, c.masked)
            states[b] = kv_state(c.cache, model, prompt.context_tokens)
            next_position = c.question_start
            if sampling is not None:
                logits, next_position = feed_question(model, c.cache, prompt.question_ids.to(lm.device),
                                                      c.question_start)
                firsts.append(sample(logits, uniforms[:1], sampling))
        except Exception as exc:  # noqa: BLE001 - this sample's error; the batch goes on without it
            failed[b] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            states.pop(b, None)
            c.cache = None
            continue
        room = max(1, len(prompts) - 1 - b)
        admitted.append(Admission(decoder.admit(c.cache, expected=room), next_position, take_masked_indices(model),
                                  lambda: None))
        c.cache = None  # the decoder owns it now
    clear_masks(model)
    return admitted, states, failed, firsts


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
