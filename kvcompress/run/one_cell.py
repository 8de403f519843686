"""One method on one prompt: a measured record, or a record that says in one line why it could not be measured.

Shared by the grid runner (runner.py) and the DMS child process (isolated.py), which both sit above it.
"""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING

import torch
from rich.markup import escape

from kvcompress.engine import measure
from kvcompress.engine.measure import measure_questions
from kvcompress.errors import UserError
from kvcompress.methods import Method
from kvcompress.record import record_for
from kvcompress.report import context_label, make_console
from kvcompress.results import BenchmarkResult
from kvcompress.tasks import contract, niah

if TYPE_CHECKING:  # annotations only: the cell's prompt is built by the caller
    from kvcompress.tasks.cell import Cell

console = make_console()


def run_cell(lm, method: Method, prompt, needle, cell: Cell, settings, repeats: int, decoders: dict, task: str,
             admission: str = "each") -> BenchmarkResult:
    """Measure one method on one prompt (or a list of prompts: one batch), or return a record that says in one line
    why it could not be measured."""
    batch = len(prompt) if isinstance(prompt, list) else 1
    first = prompt[0] if batch > 1 else prompt  # a batch's record is graded on its first sequence (the cell's needle)
    method = method.for_context(first.context_tokens, lm.model, cell.target_tokens)  # a budget becomes a ratio
    decoder, engine_note = pick_decoder(decoders, method, lm)
    blank = skeleton(lm.name, lm.weights, method, cell, needle, task, decoders, first, settings, batch)
    reason = method.problem(lm) or (method.batch_problem(settings) if batch > 1 else None)
    if reason:
        blank.error = reason
        return blank
    error = None
    try:
        method = method.prepare(lm, first)  # a batch: DMS calibrated once, on sequence 0's prompt; all share it
        record = measure(lm, method, prompt, settings, decoder, repeats=repeats, task=task,
                         target_tokens=cell.target_tokens, admission=admission)
    except Exception as exc:  # noqa: BLE001 - one failing press must not end the run
        error = failure_line(exc)
    if error is not None:
        # Outside the except clause: the exception's traceback (and every tensor its frames hold, e.g. a batch's
        # admitted caches) is gone by now, so the memory really returns before the next cell.
        free_memory()
        blank.error = error
        return blank
    record.engine_note = engine_note
    method.record_fields(record, decoder)
    record.notes.extend(method.batch_notes(batch))
    record.depth, record.prompt_id = cell.depth if needle else None, cell.prompt_id
    record.kv_budget = method.budget_label
    grade(record, needle, first, cell)
    return record


def grade(record: BenchmarkResult, needle, prompt, cell: Cell, index: int = 0) -> None:
    """needle, correct, score, depth reached, unfinished thinking: niah's needle or a tasks/contract.py task."""
    if needle is None:
        return
    if isinstance(needle, contract.TaskContext):
        contract.grade(record, needle, prompt, index)
    else:
        niah.grade(record, needle, prompt)
        record.task_family, record.scorer, record.expected = "niah", "niah", list(needle.values)


def run_cell_questions(lm, method: Method, prompt, task, cell: Cell, settings, task_name: str, out,
                       resume: bool) -> list[BenchmarkResult]:
    """--questions K: the cell's K questions answered from one compression (engine.measure_questions), one record
    each (prompt_id .../q<i>); an error becomes K error records."""
    questions = prompt.meta["questions"]
    blanks = []
    for i in range(len(questions)):
        blank = skeleton(lm.name, lm.weights, method, cell, task, task_name, {"hf": None}, prompt, settings)
        blank.prompt_id, blank.question_index, blank.questions_per_context = \
            f"{cell.prompt_id}/q{i}", i, len(questions)
        blanks.append(blank)
    if resume and all(out.done(s.identity()) for s in blanks):
        console.print(f"{method.name} @ {cell.target_tokens}: {len(questions)} questions already in {out.path}, skipped")
        return []
    reason = method.problem(lm) or (
        "several questions over one cache need a prefill press (not a decoding press)"
        if method.compresses_during_decoding else None)
    try:
        sized = method.for_context(prompt.context_tokens, lm.model, cell.target_tokens)
        if reason is None:
            records = measure_questions(lm, sized, prompt, questions, settings, task=task_name,
                                        target_tokens=cell.target_tokens)
    except Exception as exc:  # noqa: BLE001 - one failing press must not end the run
        reason = failure_line(exc)
    if reason:
        free_memory()
        for s in blanks:
            s.error = reason
        return blanks
    for i, (record, blank) in enumerate(zip(records, blanks)):
        record.depth, record.prompt_id, record.kv_budget = blank.depth, blank.prompt_id, sized.budget_label
        grade(record, task, prompt, cell, i)
    return records


def pick_decoder(decoders: dict, method: Method, lm):
    fast = decoders.get("fast")
    if fast is None:
        return decoders["hf"], None
    reason = fast.unsupported(method, lm)
    return (decoders["hf"], f"fast engine cannot run this method ({reason}); measured with hf") if reason else (fast, None)


def skeleton(model, weights, method, cell, needle, task, decoders, prompt, settings, batch: int = 1
             ) -> BenchmarkResult:
    """A record holding only the identity of a cell: what an error record carries, and what --resume matches."""
    engine = pick_decoder(decoders, method, None)[0].name if "fast" in decoders else "hf"
    return record_for(model, weights, method, settings, task=task, engine=engine, target_tokens=cell.target_tokens,
                      batch=batch, cell=cell, needle=needle, prompt=prompt)


def failure_line(exc: BaseException) -> str:
    """What a cell's error record says: one line (call it inside the except clause: it may print the traceback)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return f"CUDA OOM: {str(exc).splitlines()[0][:160]}"
    if isinstance(exc, UserError):
        return str(exc)
    if os.environ.get("KVCOMPRESS_DEBUG"):
        console.print_exception()
    return one_line(exc)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def progress_line(r: BenchmarkResult) -> str:
    task = f"{r.task_family}: " if r.task == "long_context" and r.task_family else ""  # its tasks share lengths
    where = escape(f"{task}{r.method} @ {context_label(r)} tok" +  # options in [...] are not rich markup
                   (f", depth {r.depth:g}{_reached(r)}" if r.depth is not None else "")
                   + (f", batch {r.batch}" if r.batch > 1 else ""))
    if r.error:
        return f"{where}: [red]error[/red] {escape(r.error)}"
    found = "" if r.correct is None else (" [green]found[/green]" if r.correct else " [red]missed[/red]")
    if r.run_mode == "quality":  # answered once, nothing timed
        return f"{where}: {r.answer_tokens} answer tokens, KV {r.kv_cache_bytes / 2**20:.1f} MiB{found}"
    if r.ttft_s is None:  # --questions: one answer over a shared compressed context (not timed per token)
        return f"{where}: answer {r.e2e_s:.3f} s, KV {_kv(r)}{found}"
    aggregate = (f" ({r.aggregate_decode_tokens_per_s:.0f} aggregate)"
                 if r.batch > 1 and r.aggregate_decode_tokens_per_s else "")
    return f"{where}: TTFT {r.ttft_s:.3f} s, {r.decode_tokens_per_s:.1f} tok/s{aggregate}, KV {_kv(r)}{found}"


def _reached(r: BenchmarkResult) -> str:
    """Where the needle really is, when the snap to a sentence start moved it far from the depth asked (a short
    haystack of long sentences: the tiny preset's 256-token prompt puts it at 0)."""
    if r.depth_achieved is None or abs(r.depth_achieved - r.depth) <= 0.05:
        return ""
    return f" (reached {r.depth_achieved:g}: the nearest sentence start before it)"


def _kv(r: BenchmarkResult) -> str:
    """KV bytes after the context: held, and live where attention sees fewer (a masked or reserved cache)."""
    live = f", {r.kv_live_bytes / 2**20:.1f} live" if r.kv_live_bytes not in (None, r.kv_cache_bytes) else ""
    return f"{r.kv_cache_bytes / 2**20:.1f} MiB held{live} ({r.kv_tokens_kept:.0f} kept)"


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
