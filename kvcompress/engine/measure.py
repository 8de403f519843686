"""Warm-up, repeats, statistics: one BenchmarkResult per (model, method, prompt)."""

from __future__ import annotations

import contextlib
import gc

import numpy as np
import torch

from kvcompress.engine.batch import combine, generate_batch
from kvcompress.engine.generate import (GenerationSettings, Prompt, eos_ids, generate_once, generate_questions,
                                       kv_after_context)
from kvcompress.engine.timing import measurement_stream
from kvcompress.memory import PhasePeaks
from kvcompress.record import kv_fields, model_fields, record_for
from kvcompress.results import BenchmarkResult


def measure(lm, method, prompt: Prompt | list[Prompt], settings: GenerationSettings, decoder, *, repeats: int = 3,
            warmup: bool = True, task: str = "benchmark", target_tokens: int | None = None,
            admission: str = "each") -> BenchmarkResult:
    """A warm-up generation (compilation, allocator, caches), `repeats` timed ones (medians and IQRs), then one
    memory pass.

    Memory (phase peaks, KV bytes) comes from a separate generation that starts with nothing allocated but the
    weights: an engine may keep buffers between timed repeats (the fast engine keeps its CUDA graph and the
    buffers it points at), and those must not count towards the next prefill's peak. Python's garbage collector
    runs before each generation, never inside one.

    A list of prompts is one batch (engine.batch): admitted one by one, decoded together; TTFT is then the median of
    the sequences' own TTFTs, TPOT one step of the whole batch (over the steps after the first, which captures the
    graph), KV bytes the whole batch's.
    """
    prompts = prompt if isinstance(prompt, list) else [prompt]
    batch = len(prompts)

    def generation():
        with _collector_paused():
            if batch > 1:
                # Each batched generation starts from the weights alone: the buffers of the last one would sit beside
                # this one's N admitted caches (twice the KV: a batch that fits could not be measured).
                try:
                    return generate_batch(lm, method, prompts, settings, decoder, admission=admission)
                finally:
                    _release(decoder)
                    if lm.device.type == "cuda":  # and what the allocator caches: no dead pool or block in the way
                        torch.cuda.empty_cache()
            return generate_once(lm, method, prompts[0], settings, decoder)

    try:
        with measurement_stream(lm.device):
            if warmup:
                generation()
            runs = [generation() for _ in range(repeats)]
            _release(decoder)
            memory = generation()
            after = memory.kv_after
            if method.single_prefill and not settings.query_aware:
                # every method's KV after the context, at the same positions as vanilla's (DMS's timed prefill
                # also took the question)
                _release(decoder)
                states = {}  # a cloned row is its first sequence's copy; sequence b is seeded seed + b, as it samples
                with _collector_paused():
                    for b, p in enumerate(prompts):
                        if id(p) not in states:
                            states[id(p)] = kv_after_context(lm, method, p, settings, decoder,
                                                             settings.sampling.seed + b)
                after = combine([states[id(p)] for p in prompts]) if batch > 1 else states[id(prompts[0])]
    finally:
        _release(decoder)  # also when a method fails: its buffers must not weigh on the next cell's peaks
    last = runs[-1]
    ttfts = [g.ttft_s for g in runs]
    tpots = [g.tpot_ms for g in runs if g.tpot_ms is not None]
    e2es = [g.e2e_s for g in runs]
    ttft = float(np.median(ttfts))
    tpot = float(np.median(tpots)) if tpots else None
    answer_ids = _until_eos(last.token_ids, lm)
    end = memory.kv_end
    admits = [getattr(g, "admit_s", g.ttft_s) for g in runs]
    prompt = prompts[0]
    return record_for(
        lm.name, lm.weights, method, settings, task=task, engine=decoder.name, target_tokens=target_tokens,
        batch=batch, prompt=prompt, **model_fields(lm, method, settings), **kv_fields(after, end),
        output_tokens=last.output_tokens,
        ttft_s=ttft,
        prefill_tokens_per_s=prompt.input_tokens / ttft if ttft > 0 else None,
        tpot_ms=tpot,
        decode_tokens_per_s=1000.0 / tpot if tpot else None,
        e2e_s=float(np.median(e2es)),
        peak_mem_prefill_bytes=memory.peak_prefill,
        peak_mem_decode_bytes=memory.peak_decode,
        repeats=repeats,
        ttft_iqr_s=iqr(ttfts),
        tpot_iqr_ms=iqr(tpots),
        answer=lm.tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
        protocol=last.protocol,
        answer_tokens=len(answer_ids),
        ttft_samples_s=ttfts,
        tpot_samples_ms=tpots,
        timing="cuda_events" if lm.device.type == "cuda" else "wall_clock",
        memory_source=PhasePeaks(lm.device).source,
        batch_admit_s=float(np.median(admits)),
        ttft_sequences_s=list(getattr(last, "ttft_each_s", [last.ttft_s])),
        aggregate_decode_tokens_per_s=batch * 1000.0 / tpot if tpot else None,
        output_throughput_tokens_per_s=batch * last.output_tokens / float(np.median(e2es)),
        context_tokens_total=sum(p.context_tokens for p in prompts),
        admission=admission if batch > 1 else "each",
    )


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector runs whenever allocations cross its threshold: inside one engine's prefill,
    inside the other's eager decode loop. Collect before every generation and never during one, so that no engine
    pays for the other's garbage (timeit does the same). Collecting the young generations suffices: no collection
    ran while the last generation made its objects, so they are young; a full collection costs ~0.2 s of CPU with
    transformers loaded, per generation."""
    was_enabled = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _release(decoder) -> None:
    decoder.release()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def iqr(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    q75, q25 = np.percentile(values, [75, 25])
    return float(q75 - q25)


def _until_eos(token_ids: list[int], lm) -> list[int]:
    eos = eos_ids(lm)
    for i, t in enumerate(token_ids):
        if t in eos:
            return token_ids[:i]
    return token_ids


def measure_questions(lm, method, prompt: Prompt, questions: list, settings: GenerationSettings, *,
                      task: str = "long_context", target_tokens: int | None = None) -> list[BenchmarkResult]:
    """One record per question, all answered from one compression of `prompt`'s context (generate_questions).

    The compression's time is counted once: in `context_compress_s` of question 0 (None on the others); each
    record's `e2e_s` is its own question + answer. No warm-up, no repeats: a quality measurement, not a timing.
    """
    with _collector_paused():
        shared = generate_questions(lm, method, prompt.context_ids, questions, settings)
    after = shared.kv_after
    records = []
    for i, (answer, question) in enumerate(zip(shared.answers, questions)):
        answer_ids = _until_eos(answer.token_ids, lm)
        records.append(record_for(
            lm.name, lm.weights, method, settings, task=task, engine="hf", target_tokens=target_tokens, prompt=prompt,
            **model_fields(lm, method, settings), **kv_fields(after, answer.kv_end),
            input_tokens=prompt.context_tokens + int(question.shape[1]), output_tokens=len(answer.token_ids),
            e2e_s=answer.seconds, repeats=1, answer=lm.tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
            protocol="query_agnostic_shared", answer_tokens=len(answer_ids),
            timing="cuda_events" if lm.device.type == "cuda" else "wall_clock",
            question_index=i, questions_per_context=len(questions),
            context_compress_s=shared.compress_s if i == 0 else None))
    return records
