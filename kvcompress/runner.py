"""Run a grid of cells x methods: one model load, every record saved as soon as it exists, failures isolated.

Vanilla and kvpress presses run in this process; DMS-8x runs in a child process that never imports kvpress
(isolated.py) and its records join the same file and table.
"""

from __future__ import annotations

import gc
import os
import urllib.request
from functools import lru_cache
from typing import Callable

import torch
from rich.markup import escape

from kvcompress import models
from kvcompress.checks import architecture_of
from kvcompress.cli import RunConfig
from kvcompress.engine import measure
from kvcompress.engine.measure import measure_questions
from kvcompress.engine.generate import HFDecoder
from kvcompress.errors import UserError
from kvcompress.methods import Method
from kvcompress.report import make_console
from kvcompress.results import BenchmarkResult, ResultFile, run_header
from kvcompress.tasks import contract, niah
from kvcompress.tasks.cell import Cell

console = make_console()


def run(cfg: RunConfig, cells: list[Cell], *, task: str, header_extra: dict | None = None,
        annotate: Callable[[BenchmarkResult, Method], None] | None = None) -> ResultFile:
    """`annotate(record, method)`, if given, adds a script's own fields to each record before it is saved."""
    dtype = cfg.dtype or models.default_dtype(cfg.device)
    header = run_header(_public_args(cfg), device=cfg.device, dtype=dtype, attn_implementation=cfg.attn_implementation,
                        seed=cfg.settings.sampling.seed,
                        extra={"engine": cfg.engine, "sampling": cfg.settings.sampling.describe(),
                               "max_new_tokens": cfg.settings.max_new_tokens, "repeats": cfg.repeats,
                               "preset": cfg.preset, **(header_extra or {})})
    out = ResultFile(cfg.out, header, resume=cfg.resume)
    local = [m for m in cfg.methods if m.kind != "dms"]
    isolated = [m for m in cfg.methods if m.kind == "dms"]
    total = len(cells) * len(cfg.methods)
    console.print(f"{len(cfg.methods)} method(s) x {len(cells)} prompt(s) = {total} cells -> {cfg.out}")
    done = 0
    if local:
        lm = models.load(cfg.spec, device=cfg.device, dtype=cfg.dtype, random_weights=cfg.random_weights,
                         attn_implementation=cfg.attn_implementation, seed=cfg.settings.sampling.seed)
        out.run.update(model=lm.name, weights=lm.weights, tokenizer=lm.tokenizer_source, notes=lm.notes,
                       architecture=architecture_of(lm.model.config))
        for note in lm.notes:
            console.print(f"[yellow]{note}[/yellow]")
        decoders = _decoders(cfg, lm)
        for cell in cells:
            prompt, needle = cell.build(lm.tokenizer)
            for method in local:
                done += 1
                if cell.questions > 1:  # one compression, several answers: records per question
                    for record in run_cell_questions(lm, method, prompt, needle, cell, cfg.settings, task, out,
                                                     cfg.resume):
                        record.process = "main"
                        if annotate:
                            annotate(record, method)
                        out.add(record)
                        console.print(f"[{done}/{total}] q{record.question_index} {progress_line(record)}")
                    continue
                identity_probe = _skeleton(lm.name, lm.weights, method, cell, needle, task, decoders, prompt,
                                           cfg.settings)
                if cfg.resume and out.done(identity_probe.identity()):
                    console.print(f"[{done}/{total}] {method.name} @ {cell.target_tokens}: already in {cfg.out}, skipped")
                    continue
                record = run_cell(lm, method, prompt, needle, cell, cfg.settings, cfg.repeats, decoders, task)
                record.process = "main"
                if annotate:
                    annotate(record, method)
                out.add(record)
                console.print(f"[{done}/{total}] {progress_line(record)}")
        del lm
        _free_memory()
    if isolated:
        from kvcompress import isolated as iso

        by_name = {m.name: m for m in isolated}
        done_ids = {r.identity() for r in out.results if r.error is None} if cfg.resume else set()
        for record in iso.run_in_child(cfg, isolated, cells, task, done=done_ids):
            done += 1
            if annotate and record.method in by_name:
                annotate(record, by_name[record.method])
            out.add(record)
            console.print(f"[{done}/{total}] {progress_line(record)}")
    return out


def run_cell(lm, method: Method, prompt, needle, cell: Cell, settings, repeats: int, decoders: dict, task: str
             ) -> BenchmarkResult:
    """Measure one method on one prompt, or return a record that says in one line why it could not be measured."""
    method = method.for_context(prompt.context_tokens, lm.model, cell.target_tokens)  # a budget becomes a ratio
    decoder, engine_note = pick_decoder(decoders, method, lm)
    skeleton = _skeleton(lm.name, lm.weights, method, cell, needle, task, decoders, prompt, settings)
    reason = preflight(method, lm)
    if reason:
        skeleton.error = reason
        return skeleton
    try:
        record = measure(lm, method, prompt, settings, decoder, repeats=repeats, task=task,
                         target_tokens=cell.target_tokens)
    except torch.OutOfMemoryError as exc:
        _free_memory()
        skeleton.error = f"CUDA OOM: {str(exc).splitlines()[0][:160]}"
        return skeleton
    except UserError as exc:
        skeleton.error = str(exc)
        return skeleton
    except Exception as exc:  # noqa: BLE001 - one failing press must not end the run
        if os.environ.get("KVCOMPRESS_DEBUG"):
            console.print_exception()
        skeleton.error = one_line(exc)
        _free_memory()
        return skeleton
    record.engine_note = engine_note
    record.depth, record.prompt_id = cell.depth if needle else None, cell.prompt_id
    record.kv_budget = method.budget_label
    grade(record, needle, prompt, cell)
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


def run_cell_questions(lm, method: Method, prompt, task, cell: Cell, settings, task_name: str, out: ResultFile,
                       resume: bool) -> list[BenchmarkResult]:
    """--questions K: the cell's K questions answered from one compression (engine.measure_questions), one record
    each (prompt_id .../q<i>); an error becomes K error records."""
    questions = prompt.meta["questions"]
    skeletons = []
    for i in range(len(questions)):
        skeleton = _skeleton(lm.name, lm.weights, method, cell, task, task_name, {"hf": None}, prompt, settings)
        skeleton.prompt_id, skeleton.question_index, skeleton.questions_per_context = \
            f"{cell.prompt_id}/q{i}", i, len(questions)
        skeletons.append(skeleton)
    if resume and all(out.done(s.identity()) for s in skeletons):
        console.print(f"{method.name} @ {cell.target_tokens}: {len(questions)} questions already in {out.path}, skipped")
        return []
    reason = preflight(method, lm) or (
        "several questions over one cache need a prefill press (not a decoding press)"
        if method.compresses_during_decoding else None)
    try:
        sized = method.for_context(prompt.context_tokens, lm.model, cell.target_tokens)
        if reason is None:
            records = measure_questions(lm, sized, prompt, questions, settings, task=task_name,
                                        target_tokens=cell.target_tokens)
    except UserError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - one failing press must not end the run
        if os.environ.get("KVCOMPRESS_DEBUG"):
            console.print_exception()
        reason = one_line(exc)
        _free_memory()
    if reason:
        for s in skeletons:
            s.error = reason
        return skeletons
    for i, (record, skeleton) in enumerate(zip(records, skeletons)):
        record.depth, record.prompt_id, record.kv_budget = skeleton.depth, skeleton.prompt_id, sized.budget_label
        grade(record, task, prompt, cell, i)
    return records


def preflight(method: Method, lm) -> str | None:
    if lm.spec.is_dms and method.kind != "dms":
        # its forward swaps any cache it is given for its own paged one: another method would measure nothing
        return "a DMS checkpoint runs only as method dms-8x: pass it with --dms-model, not --model"
    if method.not_runnable:
        return f"not runnable here: {method.not_runnable}"
    if method.needs_hub and not hub_available():
        return f"needs the Hugging Face Hub ({method.needs_hub}); offline, skipped"
    if method.needs_eager and lm.attn_implementation != "eager":
        return "needs attention weights: rerun with --attn eager"
    return None


@lru_cache(maxsize=1)
def hub_available() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        urllib.request.urlopen("https://huggingface.co/api/models?limit=1", timeout=5)
        return True
    except OSError:
        return False


def _decoders(cfg: RunConfig, lm) -> dict:
    decoders = {"hf": HFDecoder()}
    if cfg.engine == "fast":
        from kvcompress.engine.fast import FastDecoder

        decoders["fast"] = FastDecoder(lm)
    return decoders


def pick_decoder(decoders: dict, method: Method, lm):
    fast = decoders.get("fast")
    if fast is None:
        return decoders["hf"], None
    reason = fast.unsupported(method, lm)
    return (decoders["hf"], f"fast engine cannot run this method ({reason}); measured with hf") if reason else (fast, None)


def _skeleton(model, weights, method, cell, needle, task, decoders, prompt, settings) -> BenchmarkResult:
    """A record holding only the identity of a cell: what an error record carries, and what --resume matches."""
    engine = pick_decoder(decoders, method, None)[0].name if "fast" in decoders else "hf"
    return BenchmarkResult(
        model=model, weights=weights, method=method.name, compression_ratio=method.compression_ratio,
        context_tokens=prompt.context_tokens, input_tokens=prompt.input_tokens, engine=engine, task=task,
        target_tokens=cell.target_tokens, depth=cell.depth if needle else None,
        needle=needle.label if needle else None, prompt_id=cell.prompt_id, expected_memory=method.expected_memory,
        phase=method.phase, fixed_output_length=settings.fixed_length, max_new_tokens=settings.max_new_tokens)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def progress_line(r: BenchmarkResult) -> str:
    where = escape(f"{r.method} @ {r.target_tokens or r.input_tokens} tok" +
                   (f", depth {r.depth:g}" if r.depth is not None else ""))  # options in [...] are not rich markup
    if r.error:
        return f"{where}: [red]error[/red] {escape(r.error)}"
    found = "" if r.correct is None else (" [green]found[/green]" if r.correct else " [red]missed[/red]")
    if r.ttft_s is None:  # --questions: one answer over a shared compressed context (not timed per token)
        return (f"{where}: answer {r.e2e_s:.3f} s, KV {r.kv_cache_bytes / 2**20:.1f} MiB ({r.kv_tokens_kept:.0f} kept)"
                f"{found}")
    return (f"{where}: TTFT {r.ttft_s:.3f} s, {r.decode_tokens_per_s:.1f} tok/s, KV {r.kv_cache_bytes / 2**20:.1f} MiB"
            f" ({r.kv_tokens_kept:.0f} kept){found}")


def _public_args(cfg: RunConfig):
    from argparse import Namespace

    return Namespace(**{k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list)) else v)
                        for k, v in vars(cfg.args).items() if not k.startswith("_")})


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
