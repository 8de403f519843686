"""DMS-8x in a process of its own: `import kvpress` patches transformers' attention functions globally, so DMS
must run where kvpress was never imported. The parent sends a job file; the child measures with the same engine
and writes BenchmarkResult records back (atomically, after each one). A record measured in a process where kvpress
got imported anyway carries an error instead of numbers. Every cell the child could not measure comes back as a
record with a one-line error, with the same identity a measured record would have (so --resume can replace it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from kvcompress.results import BenchmarkResult

KVPRESS_IMPORTED = "kvpress was imported in the DMS process; its attention patch may have altered DMS"


def run_in_child(cfg, methods, cells, task: str, done: set[tuple] = frozenset()) -> list[BenchmarkResult]:
    """Measure `methods` x `cells` in a child process; cells whose identity is in `done` are skipped (--resume)."""
    job = job_for(cfg, methods, cells, task, done)
    wanted = [(c, m) for c in cells for m in methods if identity(job, c, m.name) not in done]
    if not wanted:
        return []
    with tempfile.TemporaryDirectory(prefix="kvcompress-dms-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "records.json"
        job_path.write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "kvcompress.isolated", str(job_path), str(out_path)],
                              stdout=None, stderr=subprocess.PIPE, text=True)
        records = [BenchmarkResult.from_dict(r) for r in json.loads(out_path.read_text())] if out_path.exists() else []
    measured = {r.identity() for r in records}
    missing = [(c, m) for c, m in wanted if identity(job, c, m.name) not in measured]
    if missing:
        reason = _last_line(proc.stderr) or f"exit code {proc.returncode}"
        records += [error_record(job, c, m.name, f"DMS worker failed: {reason}") for c, m in missing]
    return records


def job_for(cfg, methods, cells, task: str, done=frozenset()) -> dict:
    """Everything the child needs, as JSON: the slice of RunConfig it reads, the methods and the cells."""
    return {
        "model": cfg.dms_model, "revision": cfg.dms_revision, "device": str(cfg.device),
        "dtype": str(cfg.dtype).removeprefix("torch.") if cfg.dtype else None, "repeats": cfg.repeats,
        "settings": {"max_new_tokens": cfg.settings.max_new_tokens, "fixed_length": cfg.settings.fixed_length,
                     "query_aware": cfg.settings.query_aware, "sampling": vars(cfg.settings.sampling)},
        "methods": [m.name for m in methods], "cells": [c.to_dict() for c in cells], "task": task,
        "done": [list(i) for i in done],
    }


def model_name(job) -> tuple[str, str]:
    """(model, weights) as the loaded model will name itself in its records."""
    from kvcompress import models

    spec = models.resolve_spec(job["model"])
    return spec.hub_id or spec.name, "random" if spec.name == "tiny-dms" else "pretrained"


def identity(job, cell, method: str) -> tuple:
    return error_record(job, cell, method, "").identity()


def error_record(job, cell, method: str, reason: str) -> BenchmarkResult:
    model, weights = model_name(job)
    needle = None if cell.text is not None else cell.task().label
    return BenchmarkResult(model=model, weights=weights, method=method, task=job["task"],
                           target_tokens=cell.target_tokens, prompt_id=cell.prompt_id, needle=needle,
                           depth=cell.depth if needle else None, error=reason or None, process="isolated",
                           engine="hf", max_new_tokens=job["settings"]["max_new_tokens"])


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ")[:300] if lines else ""


def _child(job_path: str, out_path: str) -> int:
    import torch

    from kvcompress import models
    from kvcompress.engine.generate import GenerationSettings, HFDecoder
    from kvcompress.engine.sampling import SamplingConfig
    from kvcompress.errors import UserError
    from kvcompress.methods import parse_method
    from kvcompress.results import write_json_atomic
    from kvcompress.runner import console, progress_line, run_cell
    from kvcompress.tasks.cell import Cell

    job = json.loads(Path(job_path).read_text())
    device = torch.device(job["device"])
    dtype = getattr(torch, job["dtype"]) if job["dtype"] else None
    spec = models.resolve_spec(job["model"])
    if not spec.is_dms:
        spec = models.ModelSpec(spec.name, spec.hub_id, spec.tokenizer_id, is_dms=True)
    methods = [parse_method(name) for name in job["methods"]]
    cells = [Cell(**c) for c in job["cells"]]
    done = {tuple(i) for i in job["done"]}
    s = job["settings"]
    sampling = SamplingConfig(**s["sampling"])
    settings = GenerationSettings(s["max_new_tokens"], sampling, s["fixed_length"], s["query_aware"])
    console.print(f"DMS: loading {job['model']} in its own process (kvpress is never imported there)")
    try:
        lm = models.load(spec, device=device, dtype=dtype, dms_revision=job["revision"], seed=sampling.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    decoders = {"hf": HFDecoder()}  # DMS keeps its own paged cache; the fast engine's buffers cannot hold it
    records = []
    for cell in cells:
        todo = [m for m in methods if identity(job, cell, m.name) not in done]
        if not todo:
            continue
        prompt, needle = cell.build(lm.tokenizer)
        for method in todo:
            record = run_cell(lm, method, prompt, needle, cell, settings, job["repeats"], decoders, job["task"])
            record.process = "isolated"
            record.engine_note = "DMS keeps its own paged cache: measured with the hf engine"
            if "kvpress" in sys.modules:  # the isolation this process exists for
                record.error = KVPRESS_IMPORTED
            records.append(record)
            write_json_atomic(Path(out_path), [r.to_dict() for r in records])  # type: ignore[arg-type]
            console.print(f"DMS: {progress_line(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
