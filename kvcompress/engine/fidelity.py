"""Fidelity to vanilla, teacher-forced: the metric of the KV-quantization literature (KIVI, FastDMS's KLD and token
match), which needs no task and works on any model.

A method prefills the context as it does for a generation (its press or DMS patch, its cache), then is fed the
continuation's true tokens one at a time through transformers' forward (the hf engine's decode step), so each
predicted distribution sees the cache the method really holds at that step (quantized entries, evicted ones gone).
Over the continuation's T tokens, position t's distribution predicts token t + 1 (T - 1 predictions):
- kl_mean: mean over positions of KL(P_vanilla || P_method) in nats, the distributions in float64;
- top1_agreement: fraction of positions where the two argmaxes agree;
- perplexity: exp(mean negative log-likelihood of the true next tokens), the method's and vanilla's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kvcompress.engine.generate import GenerationSettings, prefill, prefill_protocol
from kvcompress.engine.hf import HFDecoder
from kvcompress.memory import KVState, clear_masks
from kvcompress.methods import Method, press_context
from kvcompress.prompt import Prompt


@dataclass
class Fidelity:
    kl_mean: float
    kl_max: float
    top1_agreement: float
    perplexity: float
    perplexity_vanilla: float
    predictions: int
    kv_bytes: int  # the method's KV bytes after the context's prefill (from its cache's tensors)
    kv_bytes_vanilla: int

    @property
    def perplexity_change(self) -> float:
        """Relative: perplexity / vanilla's - 1."""
        return self.perplexity / self.perplexity_vanilla - 1.0


@dataclass
class Continuation:
    logprobs: torch.Tensor  # (T - 1, vocab) float64: the distributions of the continuation's tokens 1..T-1
    kv_after: KVState  # the method's cache right after the prefill (context + the continuation's first token)
    method: Method  # as prepared for this prompt (DMS: calibrated), for its record fields


@torch.inference_mode()
def continuation_logprobs(lm, method: Method, context: torch.Tensor, continuation: torch.Tensor) -> Continuation:
    """The method's next-token distributions over the continuation, teacher-forced. The first continuation token is
    fed with the prefill (as a question is: after the press compressed the context), the rest one by one."""
    model, device = lm.model, lm.device
    context, continuation = context.to(device), continuation.to(device)
    method = method.prepare(lm, Prompt(context, continuation[:, :1]))
    decoder = HFDecoder()
    press = method.hook(model)
    clear_masks(model)
    single_prefill, _ = prefill_protocol(method, GenerationSettings())
    whole_run, prefill_only = (press, None) if method.compresses_during_decoding else (None, press)
    steps = continuation.shape[1]
    out = []
    with press_context(whole_run, model):
        cache = method.new_cache(decoder, lm, steps)
        cache, kv_after, logits, position = prefill(lm, method, press, context, continuation[:, :1], prefill_only,
                                                    single_prefill, cache)
        kv_after = kv_after()
        out.append(logits)
        for t in range(1, steps - 1):
            ids = continuation[:, t:t + 1]
            pos = torch.full((1, 1), position, dtype=torch.long, device=device)
            out.append(model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True).logits[:, -1])
            position += 1
    clear_masks(model)
    return Continuation(torch.log_softmax(torch.cat(out).double(), dim=-1), kv_after, method)


def compare(reference: Continuation, candidate: Continuation, continuation: torch.Tensor) -> Fidelity:
    """Fidelity of `candidate` to `reference` (vanilla), both continuation_logprobs() of the same continuation."""
    ref, got = reference.logprobs, candidate.logprobs
    targets = continuation[0, 1:].to(ref.device)
    kl = (ref.exp() * (ref - got)).sum(-1)
    nll = -got.gather(1, targets[:, None]).mean()
    nll_ref = -ref.gather(1, targets[:, None]).mean()
    return Fidelity(kl_mean=float(kl.mean()), kl_max=float(kl.max()),
                    top1_agreement=float((ref.argmax(-1) == got.argmax(-1)).double().mean()),
                    perplexity=math.exp(float(nll)), perplexity_vanilla=math.exp(float(nll_ref)),
                    predictions=int(targets.numel()), kv_bytes=candidate.kv_after.bytes,
                    kv_bytes_vanilla=reference.kv_after.bytes)
