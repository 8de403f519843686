"""The one record builder: every BenchmarkResult for a cell is made here, measured or not.

A measured record, an error record, the record the child process sends back and the probe --resume matches all
come from `record_for`, so a cell's identity (results.IDENTITY_FIELDS, read by BenchmarkResult.identity()) is made
one way: from the model, the method, the settings and the cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvcompress.results import BenchmarkResult

if TYPE_CHECKING:
    from kvcompress.memory import KVState


def record_for(model: str, weights: str, method, settings, *, task: str, engine: str, target_tokens: int | None,
               batch: int = 1, cell=None, needle=None, prompt=None, **measured) -> BenchmarkResult:
    """A cell's record: its identity, what the method and the settings say about it, and the `measured` fields
    (which win over the defaults taken from `prompt`). `cell` and `needle` place a graded prompt (depth, needle,
    prompt id); a record made before grading (engine.measure) leaves them to the grader."""
    values = dict(
        model=model, weights=weights, method=method.name, compression_ratio=method.compression_ratio, batch=batch,
        context_tokens=prompt.context_tokens if prompt else 0, input_tokens=prompt.input_tokens if prompt else 0,
        engine=engine, task=task, target_tokens=target_tokens,
        depth=cell.depth if cell is not None and needle else None, needle=needle.label if needle else None,
        prompt_id=cell.prompt_id if cell is not None else None, expected_memory=method.expected_memory,
        phase=method.phase, fixed_output_length=settings.fixed_length, max_new_tokens=settings.max_new_tokens,
        dms_impl=method.dms_impl)
    values.update(measured)
    return BenchmarkResult(**values)


def kv_fields(after: KVState, end: KVState | None = None) -> dict:
    """A measured record's KV fields: the cache read after the context (`after`) and, where read, at the end of the
    answer (`end`)."""
    layers = after.tokens_per_layer
    fields = dict(
        kv_cache_bytes=after.bytes, kv_positions=after.positions, kv_tokens_kept=after.tokens_kept,
        kv_compression_achieved=after.compression_achieved, kv_memory_saved=after.memory_saved,
        kv_tokens_kept_min=min(layers) if layers else None,
        kv_tokens_kept_max=max(layers) if layers else None,
        kv_cache_bytes_full=after.full_bytes, kv_live_bytes=after.live_bytes, kv_tokens_per_head=after.tokens_per_head,
        kv_tokens_kept_rows=after.tokens_per_row, kv_bytes_parts=after.parts)
    if end is not None:
        fields.update(kv_cache_bytes_end=end.bytes, kv_live_bytes_end=end.live_bytes, kv_tokens_end=end.tokens_kept,
                      kv_tokens_per_head_end=end.tokens_per_head, kv_bytes_parts_end=end.parts)
    return fields


def model_fields(lm, method, settings) -> dict:
    """What a measured record says of the loaded model, the press it ran and the sampling."""
    return dict(press=method.press_label(lm.model), weights_bytes=lm.weights_bytes,
                sampling=settings.sampling.describe(), seed=settings.sampling.seed,
                dtype=str(lm.dtype).removeprefix("torch."), attn_implementation=lm.attn_implementation,
                notes=list(lm.notes))
