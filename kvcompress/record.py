"""The one record builder: every BenchmarkResult for a cell is made here, measured or not.

A measured record, an error record, the record the child process sends back and the probe --resume matches all
come from `record_for`, so a cell's identity (results.IDENTITY_FIELDS, read by BenchmarkResult.identity()) is made
one way: from the model, the method, the settings and the cell.
"""

from __future__ import annotations

from kvcompress.results import BenchmarkResult


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
