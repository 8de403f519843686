"""benchmark.py fidelity's grid: methods x contexts x prompts, each compared with vanilla on the same loaded model
and prompt (engine/fidelity.py), every record saved as it exists, a failing method a record with its error."""

from __future__ import annotations

import torch

from kvcompress.cli import RunConfig
from kvcompress.engine.fidelity import compare, continuation_logprobs
from kvcompress.engine.hf import HFDecoder
from kvcompress.methods import parse_method
from kvcompress.prompt import Prompt
from kvcompress.record import record_for
from kvcompress.results import ResultFile
from kvcompress.run.one_cell import console, free_memory
from kvcompress.run.runner import header_of, run_on_models, tiny_threads
from kvcompress.tasks.continuation import continuation_prompts


def run_fidelity(cfg: RunConfig, continuation: int, prompts: int) -> ResultFile:
    header = {"continuation_tokens": continuation, "prompts": prompts}
    out = ResultFile(cfg.out, header_of(cfg, header, task="fidelity"), resume=cfg.resume)
    with tiny_threads(cfg):
        run_on_models(cfg, cfg.methods, out, lambda lm, methods: _on_model(cfg, lm, methods, continuation, prompts,
                                                                           out))
    console.print(f"wrote {cfg.out}")
    return out


def _on_model(cfg: RunConfig, lm, methods, continuation: int, prompts: int, out: ResultFile) -> None:
    decoder = HFDecoder()
    vanilla = parse_method("vanilla")
    for context in cfg.contexts:
        for i, (ctx, cont) in enumerate(continuation_prompts(lm.tokenizer, cfg.haystack, context, continuation,
                                                             prompts)):
            reference = continuation_logprobs(lm, vanilla, ctx, cont)  # on this model: DMS's checkpoint has its own
            for method in methods:
                method = method.for_context(context, lm.model, context)
                record = record_for(lm.name, lm.weights, method, cfg.settings, task="fidelity", engine=decoder.name,
                                    target_tokens=context, prompt=Prompt(ctx, cont[:, :1]),
                                    prompt_id=f"{cfg.haystack}-{i}", dtype=str(lm.dtype).removeprefix("torch."))
                why = method.problem(lm) or decoder.unsupported(method, lm)
                if why:
                    record.error = why
                else:
                    try:
                        got = continuation_logprobs(lm, method, ctx, cont)
                    except torch.OutOfMemoryError:
                        record.error = "out of memory"
                        free_memory()
                    else:
                        _fill(record, compare(reference, got, cont), got, decoder)
                out.add(record)
                line = record.error or (f"KL {record.fidelity_kl:.4f}, top-1 {record.fidelity_top1:.3f}, "
                                        f"KV {record.kv_cache_bytes / 2**20:.1f} MiB")
                console.print(f"{method.name} @ {context} tok, prompt {i}: {line}")


def _fill(record, fidelity, got, decoder) -> None:
    after = got.kv_after
    record.fidelity_kl, record.fidelity_kl_max = fidelity.kl_mean, fidelity.kl_max
    record.fidelity_top1, record.fidelity_tokens = fidelity.top1_agreement, fidelity.predictions
    record.fidelity_perplexity, record.fidelity_perplexity_vanilla = fidelity.perplexity, fidelity.perplexity_vanilla
    record.kv_cache_bytes, record.kv_cache_bytes_full, record.kv_live_bytes = after.bytes, after.full_bytes, after.live_bytes
    record.kv_tokens_kept, record.kv_bytes_parts = after.tokens_kept, after.parts
    record.kv_compression_achieved, record.kv_memory_saved = after.compression_achieved, after.memory_saved
    record.kv_tokens_kept_min = min(after.tokens_per_layer) if after.tokens_per_layer else None
    record.kv_tokens_kept_max = max(after.tokens_per_layer) if after.tokens_per_layer else None
    got.method.record_fields(record, decoder)
