"""DMS-8x in a process of its own: `import kvpress` patches transformers' attention functions globally, so DMS
must run where kvpress was never imported. The parent sends the job on the child's stdin; the child measures with
the same engine and streams each BenchmarkResult back on a pipe (one JSON line) the moment it is finished, so the
parent saves it at once: a Ctrl-C or a kill of the parent keeps every record the child finished. The child dies
with its parent (Linux: PR_SET_PDEATHSIG; elsewhere it watches its parent), and nothing is written to disk but the
parent's result file. A record measured in a process where kvpress got imported anyway carries an error instead
of numbers. Every cell the child could not measure comes back as a record with a one-line error, with the same
identity a measured record would have (so --resume can replace it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from kvcompress import models
from kvcompress.engine.generate import GenerationSettings, HFDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.errors import UserError
from kvcompress.methods import parse_method
from kvcompress.record import record_for
from kvcompress.results import BenchmarkResult, record_json, write_json_atomic
from kvcompress.run.one_cell import console, progress_line, run_cell
from kvcompress.tasks.cell import Cell

KVPRESS_IMPORTED = "kvpress was imported in the DMS process; its attention patch may have altered DMS"


def run_in_child(cfg, methods, cells, task: str, done: set[tuple] = frozenset(),
                 on_record: Callable[[BenchmarkResult], None] | None = None) -> list[BenchmarkResult]:
    """Measure `methods` x `cells` in a child process; cells whose identity is in `done` are skipped (--resume).
    `on_record(record)` runs for each record as it arrives (the runner saves it there); all are also returned."""
    job = job_for(cfg, methods, cells, task, done)
    wanted = [(c, m) for c in cells for m in methods if identity(job, c, m.name) not in done]
    if not wanted:
        return []
    records: list[BenchmarkResult] = []
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as stderr:  # already unlinked: a killed parent leaves nothing behind
        try:
            proc = subprocess.Popen([sys.executable, "-m", "kvcompress.run.isolated", str(write_fd), str(os.getpid())],
                                    stdin=subprocess.PIPE, stderr=stderr, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)  # the child holds the only write end: end of file = the child is gone
        interrupted = []

        def stop_child(signum, frame):  # Ctrl-C: stop the child, then keep reading what it had finished
            interrupted.append(signum)
            if proc.poll() is None:
                proc.kill()

        previous = (signal.signal(signal.SIGINT, stop_child)
                    if threading.current_thread() is threading.main_thread() else None)
        try:
            try:
                proc.stdin.write(json.dumps(job).encode())
                proc.stdin.close()
            except BrokenPipeError:  # the child died at once; its stderr says why
                pass
            for line in _lines(read_fd):  # until end of file: every complete record is saved, even after Ctrl-C
                record = BenchmarkResult.from_dict(json.loads(line))
                records.append(record)
                if on_record:
                    on_record(record)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            os.close(read_fd)
            if proc.poll() is None:  # the parent failed while the child ran: it must not run on
                proc.kill()
            proc.wait()
        if interrupted:
            raise KeyboardInterrupt
        stderr.seek(0)
        reason = _last_line(stderr.read().decode(errors="replace"))
    measured = {r.identity() for r in records}
    missing = [(c, m) for c, m in wanted if identity(job, c, m.name) not in measured]
    if missing:
        reason = reason or (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
                            else f"exit code {proc.returncode}")
        for c, m in missing:
            records.append(error_record(job, c, m.name, f"DMS worker failed: {reason}"))
            if on_record:
                on_record(records[-1])
    return records


def _lines(fd: int):
    """Complete lines from a pipe until end of file; a line cut short by the child's death (no newline) is dropped."""
    buffer = b""
    while chunk := os.read(fd, 1 << 16):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from lines


def job_for(cfg, methods, cells, task: str, done=frozenset()) -> dict:
    """Everything the child needs, as JSON: the slice of RunConfig it reads, the methods and the cells."""
    return {
        "model": cfg.dms_model, "revision": cfg.dms_revision, "device": str(cfg.device),
        "dtype": str(cfg.dtype).removeprefix("torch.") if cfg.dtype else None, "repeats": cfg.repeats,
        "settings": {"max_new_tokens": cfg.settings.max_new_tokens, "fixed_length": cfg.settings.fixed_length,
                     "query_aware": cfg.settings.query_aware, "sampling": vars(cfg.settings.sampling)},
        "methods": [m.name for m in methods], "cells": [c.to_dict() for c in cells], "task": task,
        "done": [list(i) for i in done],
        # the parent's intra-op threads, which runner.tiny_threads has set for the preset: the child measures
        # under the same rule (on a busy 2-core CPU, two threads slowed the tiny DMS child ~7x)
        "threads": torch.get_num_threads(),
    }


def model_name(dms_model: str) -> tuple[str, str]:
    """(model, weights) as the child's loaded --dms-model will name itself in its records."""
    spec = models.resolve_spec(dms_model)
    return spec.hub_id or spec.name, "random" if spec.name == "tiny-dms" else "pretrained"


def job_settings(job: dict) -> GenerationSettings:
    s = job["settings"]
    return GenerationSettings(s["max_new_tokens"], SamplingConfig(**s["sampling"]), s["fixed_length"],
                              s["query_aware"])


def identity(job, cell, method: str) -> tuple:
    """The identity the child's record of `method` on `cell` will have: made as the child makes it (record_for)."""
    return error_record(job, cell, method, "").identity()


def error_record(job, cell, method: str, reason: str) -> BenchmarkResult:
    """The record of a cell the child did not send back, as the child's own error record would be (no prompt). The
    method is parsed from its name, as the child parses it."""
    model, weights = model_name(job["model"])
    needle = None if cell.text is not None else cell.task()
    return record_for(model, weights, parse_method(method), job_settings(job), task=job["task"], engine="hf",
                      target_tokens=cell.target_tokens, cell=cell, needle=needle, error=reason or None,
                      process="isolated")


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ")[:300] if lines else ""


def measure_job(job: dict, emit: Callable[[BenchmarkResult], None]) -> int:
    """The child's work: load the DMS checkpoint, measure every cell not done, `emit` each record when finished."""
    device = torch.device(job["device"])
    dtype = getattr(torch, job["dtype"]) if job["dtype"] else None
    spec = models.resolve_spec(job["model"])
    if not spec.is_dms:
        spec = models.ModelSpec(spec.name, spec.hub_id, spec.tokenizer_id, is_dms=True)
    methods = [parse_method(name) for name in job["methods"]]
    cells = [Cell(**c) for c in job["cells"]]
    done = {tuple(i) for i in job["done"]}
    settings = job_settings(job)
    sampling = settings.sampling
    torch.set_num_threads(job["threads"])
    console.print(f"DMS: loading {job['model']} in its own process (kvpress is never imported there)")
    try:
        lm = models.load(spec, device=device, dtype=dtype, dms_revision=job["revision"], seed=sampling.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    decoders = {"hf": HFDecoder()}  # DMS keeps its own paged cache; the fast engine's buffers cannot hold it
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
            emit(record)  # first to the parent, then the progress line: what was announced is saved
            console.print(f"DMS: {progress_line(record)}")
    return 0


def _child(job_path: str, out_path: str) -> int:
    """measure_job in this process, from a job file, its records to a JSON file (tests use it)."""
    records = []

    def emit(record: BenchmarkResult) -> None:
        records.append(record.to_dict())
        write_json_atomic(Path(out_path), records)  # type: ignore[arg-type]

    return measure_job(json.loads(Path(job_path).read_text()), emit)


def _die_with_parent(parent_pid: int) -> None:
    """Measuring on after the parent died would hold the GPU for records nobody saves."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _serve(stream_fd: int, parent_pid: int) -> int:
    """The child's entry: job on stdin, one JSON line per finished record on `stream_fd`."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle: it stops this process
    job = json.loads(sys.stdin.read())
    with os.fdopen(stream_fd, "w") as stream:
        def emit(record: BenchmarkResult) -> None:
            stream.write(record_json(record) + "\n")
            stream.flush()

        return measure_job(job, emit)


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1]), int(sys.argv[2])))
