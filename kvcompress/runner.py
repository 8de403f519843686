"""Run a grid of cells x methods: one model load, every record saved as soon as it exists, failures isolated.

Vanilla and kvpress presses run in this process; DMS-8x runs in a child process that never imports kvpress
(isolated.py); each of its records joins the same file and table the moment the child finishes it.
"""

from __future__ import annotations

from typing import Callable

from kvcompress import isolated, models
from kvcompress.checks import architecture_of
from kvcompress.cli import RunConfig
from kvcompress.engine.generate import HFDecoder
from kvcompress.methods import Method
from kvcompress.one_cell import (console, free_memory, pick_decoder, preflight, progress_line,  # noqa: F401
                                 run_cell, skeleton)
from kvcompress.results import BenchmarkResult, ResultFile, run_header
from kvcompress.tasks.cell import Cell


def run(cfg: RunConfig, cells: list[Cell], *, task: str, header_extra: dict | None = None,
        annotate: Callable[[BenchmarkResult, Method], None] | None = None) -> ResultFile:
    """`annotate(record, method)`, if given, adds a script's own fields to each record before it is saved."""
    dtype = cfg.dtype or models.default_dtype(cfg.device)
    header = run_header(_public_args(cfg), device=cfg.device, dtype=dtype, attn_implementation=cfg.attn_implementation,
                        seed=cfg.settings.sampling.seed,
                        extra={"task": task, "engine": cfg.engine, "sampling": cfg.settings.sampling.describe(),
                               "max_new_tokens": cfg.settings.max_new_tokens, "repeats": cfg.repeats,
                               "preset": cfg.preset, **(header_extra or {})})
    out = ResultFile(cfg.out, header, resume=cfg.resume)
    local = [m for m in cfg.methods if m.kind != "dms"]
    in_child = [m for m in cfg.methods if m.kind == "dms"]
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
                identity_probe = skeleton(lm.name, lm.weights, method, cell, needle, task, decoders, prompt,
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
        free_memory()
    if in_child:
        by_name = {m.name: m for m in in_child}
        done_ids = {r.identity() for r in out.results if r.error is None} if cfg.resume else set()

        def save(record: BenchmarkResult) -> None:  # called as each child record arrives
            nonlocal done
            done += 1
            if annotate and record.method in by_name:
                annotate(record, by_name[record.method])
            out.add(record)
            console.print(f"[{done}/{total}] {progress_line(record)}")

        isolated.run_in_child(cfg, in_child, cells, task, done=done_ids, on_record=save)
    return out


def _decoders(cfg: RunConfig, lm) -> dict:
    decoders = {"hf": HFDecoder()}
    if cfg.engine == "fast":
        from kvcompress.engine.fast import FastDecoder

        decoders["fast"] = FastDecoder(lm)
    return decoders


def _public_args(cfg: RunConfig):
    from argparse import Namespace

    return Namespace(**{k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list)) else v)
                        for k, v in vars(cfg.args).items() if not k.startswith("_")})
