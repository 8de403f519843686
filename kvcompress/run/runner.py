"""Run a grid of cells x methods: one model load, every record saved as soon as it exists, failures isolated.

Vanilla, kvpress presses and native DMS (dms-8x, methods/dms.py) run in this process; native DMS shares a random-
weight model with the others (it adds no weights) and loads the DMS checkpoint after them with pretrained weights.
The checkpoint's remote code (dms-8x-remote) runs in a child process that never imports kvpress (isolated.py); each
of its records joins the same file and table the moment the child finishes it.
"""

from __future__ import annotations

import contextlib
from argparse import Namespace
from dataclasses import replace
from typing import Callable

import torch

from kvcompress.run import isolated, quality
from kvcompress import models
from kvcompress.architecture import architecture_of
from kvcompress.cli import RunConfig
from kvcompress.engine.fast.decoder import FastDecoder
from kvcompress.engine.hf import HFDecoder
from kvcompress.errors import UserError
from kvcompress.models.loaded import LoadedModel
from kvcompress.methods import Method
from kvcompress.run.one_cell import (console, free_memory, pick_decoder,  # noqa: F401
                                 progress_line, run_cell, run_cell_questions, skeleton)
from kvcompress.results import BenchmarkResult, ResultFile, run_header
from kvcompress.tasks.cell import Cell


def run(cfg: RunConfig, cells: list[Cell], *, task: str, header_extra: dict | None = None,
        annotate: Callable[[BenchmarkResult, Method], None] | None = None,
        quality: bool = False, answer_batch: int | None = None) -> ResultFile:
    """`annotate(record, method)`, if given, adds a script's own fields to each record before it is saved.
    `quality`: a quality run (run/quality.py: each sample answered once, `answer_batch` decoded together, None: sized
    to memory) instead of measured cells."""
    with tiny_threads(cfg):
        return _run(cfg, cells, task, {**(header_extra or {}), "torch_threads": torch.get_num_threads()}, annotate,
                    quality, answer_batch)


def exit_status(out: ResultFile) -> int:
    """A script's exit status: 0 when at least one cell produced figures; 1, said in one line, when every cell failed
    (or none ran): a CI step must not pass on a run that measured nothing."""
    if any(r.error is None for r in out.results):
        return 0
    console.print("[red]no cell produced a figure: every one failed (the errors are above and in the file)[/red]")
    return 1


@contextlib.contextmanager
def tiny_threads(cfg: RunConfig):
    """The tiny preset runs on one intra-op thread. Its matrices are too small for threads to help, and on a busy
    2-core CPU every op above torch's parallel grain waits for the second thread to be scheduled: measured at batch
    4 (where more ops cross the grain), dms-8x's fast-engine TPOT was 3.5 ms on one thread and 90-230 ms on two."""
    threads = torch.get_num_threads()
    if cfg.preset == "tiny":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(cfg: RunConfig, cells: list[Cell], task: str, header_extra: dict, annotate, quality_run: bool,
         answer_batch: int | None) -> ResultFile:
    out = ResultFile(cfg.out, header_of(cfg, header_extra, task=task), resume=cfg.resume)
    in_child = [m for m in cfg.methods if m.runs_in_child]
    local = [m for m in cfg.methods if m not in in_child]
    total = len(cells) * len(cfg.batches) * len(cfg.methods)
    console.print(f"{len(cfg.methods)} method(s) x {len(cells)} prompt(s) = {total} cells -> {cfg.out}")
    progress = {"done": 0, "total": total}
    if local and quality_run:
        run_on_models(cfg, local, out, lambda lm, methods: quality.run_local(
            cfg, lm, methods, cells, task, out, annotate, progress, make_decoders(cfg, lm), answer_batch))
    elif local:
        run_on_models(cfg, local, out, lambda lm, methods: _run_local(cfg, lm, methods, cells, task, out, annotate,
                                                                      progress))
    if in_child and cfg.batches != [1]:
        model, weights = isolated.model_name(cfg.dms_model)  # what the child's batch-1 records name
        for cell in cells:  # the child process decodes batch 1 only
            for batch in (b for b in cfg.batches if b > 1):
                for method in in_child:
                    progress["done"] += 1
                    record = skeleton(model, weights, method, cell, None, task, {"hf": None}, None, cfg.settings,
                                      batch)
                    record.error = method.batch_problem(cfg.settings)
                    out.add(record)
                    console.print(f"[{progress['done']}/{total}] {progress_line(record)}")
    if in_child:
        by_name = {m.name: m for m in in_child}
        done_ids = {r.identity() for r in out.results if r.error is None} if cfg.resume else set()

        def save(record: BenchmarkResult) -> None:  # called as each child record arrives
            progress["done"] += 1
            if annotate and record.method in by_name:
                annotate(record, by_name[record.method])
            out.add(record)
            console.print(f"[{progress['done']}/{total}] {progress_line(record)}")

        isolated.run_in_child(cfg, in_child, cells, task, done=done_ids, on_record=save)
    return out


def header_of(cfg: RunConfig, extra: dict | None = None, *, task: str | None = None) -> dict:
    """The run header of a script's result file: environment, arguments and settings, then `extra` (`task`, if
    given, leads the settings)."""
    dtype = cfg.dtype or models.default_dtype(cfg.device)
    return run_header(_public_args(cfg), device=cfg.device, dtype=dtype, attn_implementation=cfg.attn_implementation,
                      seed=cfg.settings.sampling.seed,
                      extra={**({"task": task} if task is not None else {}), "engine": cfg.engine,
                             "sampling": cfg.settings.sampling.describe(),
                             "max_new_tokens": cfg.settings.max_new_tokens, "repeats": cfg.repeats,
                             "preset": cfg.preset, **(extra or {})})


def run_on_models(cfg: RunConfig, methods: list[Method], out: ResultFile,
                  work: Callable[[LoadedModel, list[Method]], None],
                  say: Callable[[str], None] = console.print) -> None:
    """`work(lm, methods)` on the model each method runs on, one model in memory at a time, both named in the run
    header: --model for every method but native DMS on pretrained weights, then the DMS checkpoint (cfg.dms_model)
    for those. Random weights: native DMS runs on the same model (it adds no weights; its decisions are calibrated)
    unless --dms-model names a checkpoint (models.dms_runs_on_main). A model no method runs on is not loaded."""
    on_main = models.dms_runs_on_main(cfg.spec, random_weights=cfg.random_weights, dms_model_given=cfg.dms_model_given)
    later = [m for m in methods if m.needs_dms_checkpoint and not m.runs_in_child and not on_main]
    first = [m for m in methods if m not in later]
    if first or not later:
        lm = _load_main(cfg)
        out.run.update(model=lm.name, weights=lm.weights, tokenizer=lm.tokenizer_source, notes=lm.notes,
                       architecture=architecture_of(lm.model.config))
        for note in lm.notes:
            say(f"[yellow]{note}[/yellow]")
        work(lm, first)
        del lm  # before the checkpoint loads: never two models in memory (nor under a capacity budget)
        free_memory()
    if later:
        spec = models.resolve_spec(cfg.dms_model)
        say(f"native DMS: loading {spec.hub_id or spec.name} with transformers' Qwen3 class")
        lm = models.load_dms_native(spec, device=cfg.device, dtype=cfg.dtype, revision=cfg.dms_revision)
        out.run.update(dms_model=lm.name, dms_notes=lm.notes)
        if not first:  # the only model loaded: the header's model is the checkpoint
            out.run.update(model=lm.name, weights=lm.weights, tokenizer=lm.tokenizer_source, notes=lm.notes,
                           architecture=architecture_of(lm.model.config))
        work(lm, later)
        del lm
        free_memory()


def _load_main(cfg: RunConfig) -> LoadedModel:
    if cfg.spec.is_dms:  # --model <a DMS checkpoint>: only dms-8x runs on it (Method.problem refuses the others)
        return models.load_dms_native(cfg.spec, device=cfg.device, dtype=cfg.dtype, revision=cfg.dms_revision)
    return models.load(cfg.spec, device=cfg.device, dtype=cfg.dtype, random_weights=cfg.random_weights,
                       attn_implementation=cfg.attn_implementation, seed=cfg.settings.sampling.seed)


def _run_local(cfg, lm, methods, cells, task, out, annotate, progress) -> None:
    decoders = make_decoders(cfg, lm)
    # Every prompt is built before the first measurement: a cell that cannot be built (a target too short for a
    # task's text, say) ends the run in one line before anything is measured, not half-way through.
    built = [cell.build(lm.tokenizer) for cell in cells]
    too_long = next((p for p, _ in built if p.input_tokens + cfg.settings.max_new_tokens > lm.max_positions), None)
    if too_long is not None:  # a --prompts text past the model's positions: refuse it, do not run it for minutes
        raise UserError(f"a prompt of {too_long.input_tokens} tokens + {cfg.settings.max_new_tokens} new tokens "
                        f"exceeds {lm.name}'s {lm.max_positions} positions")
    for cell, (prompt, needle) in zip(cells, built):
        for batch in cfg.batches:
            # a batch: sequence b has needle seed + b (Cell.build_batch); batch 1 is the cell's own prompt
            if batch == 1:
                prompts = prompt
            elif cfg.admission == "cloned":  # only the first and the last sequence are prefilled
                prompts = [prompt] * (batch - 1) + [_nth(cell, lm.tokenizer, batch - 1)]
            else:
                prompts = cell.build_batch(lm.tokenizer, batch)[0]
            for method in methods:
                progress["done"] += 1
                where = f"[{progress['done']}/{progress['total']}]"
                if cell.questions > 1:  # one compression, several answers: records per question
                    for record in run_cell_questions(lm, method, prompt, needle, cell, cfg.settings, task, out,
                                                     cfg.resume):
                        record.process = "main"
                        if annotate:
                            annotate(record, method)
                        out.add(record)
                        console.print(f"{where} q{record.question_index} {progress_line(record)}")
                    continue
                identity_probe = skeleton(lm.name, lm.weights, method, cell, needle, task, decoders, prompt,
                                          cfg.settings, batch)
                if cfg.resume and out.done(identity_probe.identity()):
                    console.print(f"{where} {method.name} @ {cell.target_tokens}: already in {cfg.out}, skipped")
                    continue
                record = run_cell(lm, method, prompts, needle, cell, cfg.settings, cfg.repeats, decoders, task,
                                  admission=cfg.admission)
                record.process = "main"
                if annotate:
                    annotate(record, method)
                out.add(record)
                console.print(f"{where} {progress_line(record)}")


def _nth(cell: Cell, tokenizer, b: int):
    """Sequence b of a batch of this cell (needle seed + b), as Cell.build_batch makes it."""
    return replace(cell, needle_seed=cell.needle_seed + b).build(tokenizer)[0]


def make_decoders(cfg: RunConfig, lm) -> dict:
    """{"hf": HFDecoder} and, for --engine fast, "fast": its FastDecoder on `lm`."""
    decoders = {"hf": HFDecoder()}
    if cfg.engine == "fast":
        decoders["fast"] = FastDecoder(lm)
    return decoders


def _public_args(cfg: RunConfig):
    return Namespace(**{k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list)) else v)
                        for k, v in vars(cfg.args).items() if not k.startswith("_")})
