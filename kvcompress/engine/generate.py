"""One timed generation. The hot path is `generate_once`: prefill the context under the method, feed the question,
sample the first token, hand the cache to the decode engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kvcompress.engine.sampling import SamplingConfig, draw_uniforms, sample, seeded
from kvcompress.engine.hf import HFDecoder
from kvcompress.engine.timing import Stopwatch
from kvcompress.memory import KVState, PhasePeaks, clear_masks, kv_snapshot, kv_state
from kvcompress.methods import Method, press_context
from kvcompress.methods.presses import question_starts_at_cache_length
from kvcompress.prompt import Prompt  # noqa: F401 (the engine's input; re-exported)


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    fixed_length: bool = True  # ignore end-of-sequence so every method generates the same number of tokens
    query_aware: bool = False  # compress the question with the context (kvpress's query_aware)
    # The fast engine sizes its buffers for this many output tokens when it exceeds max_new_tokens: a capacity
    # search decodes a few steps while holding the memory of the whole generation.
    reserve_tokens: int | None = None


@dataclass
class Generation:
    ttft_s: float
    e2e_s: float
    token_ids: list[int]
    kv_after: KVState
    kv_end: KVState
    peak_prefill: int
    peak_decode: int
    protocol: str

    @property
    def output_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tpot_ms(self) -> float | None:
        n = self.output_tokens
        return (self.e2e_s - self.ttft_s) * 1000.0 / (n - 1) if n > 1 else None


@torch.inference_mode()
def generate_once(lm, method: Method, prompt: Prompt, settings: GenerationSettings, decoder) -> Generation:
    """One generation, torch's generators seeded from the settings (engine.sampling.seeded): a method's own random
    draws are the same in every repeat and whatever ran before."""
    with seeded(settings.sampling.seed, lm.device):
        return _generate_once(lm, method, prompt, settings, decoder)


@torch.inference_mode()
def _generate_once(lm, method: Method, prompt: Prompt, settings: GenerationSettings, decoder) -> Generation:
    model, device = lm.model, lm.device
    context = prompt.context_ids.to(device)
    question = prompt.question_ids.to(device)
    n_new = settings.max_new_tokens
    uniforms = draw_uniforms(settings.sampling, n_new, device)
    out_tokens = torch.empty(n_new, dtype=torch.long, device=device)
    press = method.hook(model)
    clear_masks(model)
    single_prefill, protocol = prefill_protocol(method, settings)
    # A prefill press acts on the context only (as in kvpress's pipeline); a decoding press stays hooked throughout.
    whole_run, prefill_only = (press, None) if method.compresses_during_decoding else (None, press)

    peaks = PhasePeaks(device)
    clock = Stopwatch(device)
    peaks.reset()
    clock.start()
    with press_context(whole_run, model):
        cache, kv_after, logits, next_position = prefill(lm, method, press, context, question, prefill_only,
                                                          single_prefill, method.new_cache(decoder, lm, n_new))
        token = sample(logits, uniforms[0], settings.sampling)
        out_tokens[0] = token
        first_token = int(token.item())  # the first token is on the host: TTFT ends here
        clock.mark("first")
        peak_prefill = peaks.peak()
        peaks.reset()
        eos = eos_ids(lm) if not settings.fixed_length else set()
        n_generated, final_cache = 1, cache
        if n_new > 1 and first_token not in eos:
            n_generated, final_cache = decoder.decode(lm, cache, token, next_position, uniforms, settings,
                                                      out_tokens, eos)
        clock.mark("end")
    ttft = clock.seconds("start", "first")
    e2e = clock.seconds("start", "end")
    peak_decode = peaks.peak()
    positions_end = prompt.input_tokens + n_generated - 1
    kv_end = kv_state(final_cache, model, positions_end)
    tokens = out_tokens[:n_generated].tolist()
    clear_masks(model)
    return Generation(ttft, e2e, tokens, kv_after(), kv_end, peak_prefill, peak_decode, protocol)


def prefill_protocol(method: Method, settings: GenerationSettings) -> tuple[bool, str]:
    """(whether context and question are one prefill, the records' protocol): the method's own single prefill
    (DMS), kvpress's query-aware compression, or the question fed after the compressed context."""
    if method.single_prefill:
        return True, "single_prefill"
    return (True, "query_aware") if settings.query_aware else (False, "query_agnostic")


def prefill(lm, method: Method, press, context, question, prefill_only, single_prefill: bool, cache):
    """One sequence's prefill into `cache` under the method: the cache, a snapshot of its size, the last position's
    logits, and the position of the first generated token."""
    model = lm.model
    if single_prefill:
        # DMS-8x allows one prefill per cache; query-aware compresses the question too.
        ids = torch.cat([context, question], dim=1)
        with press_context(prefill_only, model):
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        return cache, kv_snapshot(cache, model, ids.shape[1]), out.logits[:, -1], ids.shape[1]
    with press_context(prefill_only, model):
        model.model(input_ids=context, past_key_values=cache, use_cache=True)  # no LM head: only KV is kept
    kv_after = kv_snapshot(cache, model, context.shape[1])
    logits, next_position = feed_question(model, cache, question, question_start(press, cache, context.shape[1]))
    return cache, kv_after, logits, next_position


def feed_question(model, cache, question, start: int):
    """The question (1, q) prefilled into the compressed context's cache at positions start..start+q-1: (its last
    position's logits, the position of the first generated token)."""
    next_position = start + question.shape[1]
    positions = torch.arange(start, next_position, device=question.device)[None]
    logits = model(input_ids=question, past_key_values=cache, position_ids=positions, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    return logits, next_position


@torch.inference_mode()
def kv_after_context(lm, method: Method, prompt: Prompt, settings: GenerationSettings, decoder, seed: int) -> KVState:
    """The cache a single-prefill method (DMS) holds after the context alone, read as every other method's is: a
    prefill of the context into a fresh cache under the method, untimed. Its timed prefill takes context and question
    together (one prefill per cache), so the state it leaves covers more positions than vanilla's after-context
    bytes; DMS decides causally (token t's decision uses tokens <= t, applied once t leaves the window), so the
    context alone leaves exactly what the joint prefill held when it had seen the context."""
    model = lm.model
    press = method.hook(model)
    clear_masks(model)
    cache = method.new_cache(decoder, lm, settings.max_new_tokens)
    with seeded(seed, lm.device), press_context(press, model):
        out = model(input_ids=prompt.context_ids.to(lm.device), past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
    state = kv_state(out.past_key_values, model, prompt.context_tokens)
    clear_masks(model)
    return state


def question_start(press, cache, context_tokens: int) -> int:
    """The position of a question's first token after the context was prefilled under `press`: kvpress's rule, the
    compressed cache's length after a press that rerotates keys, else right after the uncompressed context."""
    return cache.get_seq_length() if question_starts_at_cache_length(press) else context_tokens


def eos_ids(lm) -> set[int]:
    ids = lm.model.generation_config.eos_token_id if lm.model.generation_config else None
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    if lm.tokenizer.eos_token_id is not None:
        ids.append(lm.tokenizer.eos_token_id)
    return set(ids)


# --- several questions over one compressed context (quality runs; not the timed single-question path) ---------------

@dataclass
class Answer:
    token_ids: list[int]  # generated, end-of-sequence included if one came
    seconds: float  # question prefill + decode, wall clock around this answer only
    kv_end: KVState  # the cache at the end of this answer, before the crop back to the context


@dataclass
class SharedContextRun:
    compress_s: float  # prefill + compression of the context, paid once for every answer
    kv_after: KVState  # the cache the questions share
    answers: list[Answer]


@torch.inference_mode()
def generate_questions(lm, method: Method, context_ids: torch.Tensor, questions: list[torch.Tensor],
                       settings: GenerationSettings, decoder=None) -> SharedContextRun:
    """_generate_questions with torch's generators seeded from the settings (as generate_once)."""
    with seeded(settings.sampling.seed, lm.device):
        return _generate_questions(lm, method, context_ids, questions, settings, decoder)


@torch.inference_mode()
def _generate_questions(lm, method: Method, context_ids: torch.Tensor, questions: list[torch.Tensor],
                        settings: GenerationSettings, decoder=None) -> SharedContextRun:
    """Compress the context once, then answer each question from that same cache (SCBench's shared context,
    kvpress's query-agnostic protocol): a question is fed where `question_start` puts it (as in the single-question
    path), its answer decoded, and every layer cropped back to the length the compression left, so the next
    question sees exactly the compressed context. Only prefill presses qualify: a decoding press or DMS changes the shared part itself."""
    if not method.shares_prefill or settings.query_aware:
        raise ValueError(f"{method.name}: several questions need a press that compresses the context once, "
                         "in its prefill (no DMS, no decoding press, no query-aware compression)")
    model, device = lm.model, lm.device
    decoder = decoder or HFDecoder()
    context = context_ids.to(device)
    press = method.hook(model)
    clear_masks(model)
    clock = Stopwatch(device)
    clock.start()
    cache = method.new_cache(decoder, lm, settings.max_new_tokens)
    with press_context(press, model):
        model.model(input_ids=context, past_key_values=cache, use_cache=True)
    clock.mark("compressed")
    kept = [layer.keys.shape[-2] for layer in cache.layers]
    kv_after = kv_state(cache, model, context.shape[1])
    eos = eos_ids(lm) if not settings.fixed_length else set()
    start = question_start(press, cache, context.shape[1])  # every question: the cache is cropped back to this
    answers = []
    for i, question in enumerate(questions):
        question = question.to(device)
        uniforms = draw_uniforms(settings.sampling, settings.max_new_tokens, device)
        out_tokens = torch.empty(settings.max_new_tokens, dtype=torch.long, device=device)
        clock.mark(f"q{i}")
        logits, next_position = feed_question(model, cache, question, start)
        token = sample(logits, uniforms[0], settings.sampling)
        out_tokens[0] = token
        n = 1
        if settings.max_new_tokens > 1 and int(token.item()) not in eos:
            n, cache = decoder.decode(lm, cache, token, next_position, uniforms, settings, out_tokens, eos)
        clock.mark(f"a{i}")
        kv_end = kv_state(cache, model, context.shape[1] + question.shape[1] + n - 1)
        for layer, length in zip(cache.layers, kept):
            layer.crop(length)
        answers.append(Answer(out_tokens[:n].tolist(), clock.seconds(f"q{i}", f"a{i}"), kv_end))
    clear_masks(model)
    return SharedContextRun(clock.seconds("start", "compressed"), kv_after, answers)
