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
from kvcompress.ranks import OtherRankDone, Ranks, RunStopped, stop_on_sigterm, unfinished
from kvcompress.results import BenchmarkResult, ResultFile, run_header
from kvcompress.tasks.cell import Cell, build_all


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
    ranks = Ranks.from_env()
    out = open_output(cfg, header_of(cfg, header_extra, task=task), ranks)
    in_child = [m for m in cfg.methods if m.runs_in_child] if ranks.writer else []  # the DMS child: rank 0's
    local = [m for m in cfg.methods if not m.runs_in_child]
    total = len(cells) * len(cfg.batches) * len(cfg.methods)
    if ranks.writer:
        console.print(f"{len(cfg.methods)} method(s) x {len(cells)} prompt(s) = {total} cells -> {cfg.out}"
                      + (f" over {ranks.world} ranks" if ranks.distributed else ""))
    progress = {"total": total, "ranks": ranks}
    stop_on_sigterm(ranks)
    try:
        if local and quality_run:
            run_on_models(cfg, local, out, lambda lm, methods: quality.run_local(
                cfg, lm, methods, cells, task, out, annotate, progress, make_decoders(cfg, lm), answer_batch))
        elif local:
            run_on_models(cfg, local, out, lambda lm, methods: _run_local(cfg, lm, methods, cells, task, out,
                                                                          annotate, progress))
        if in_child:
            _run_in_child(cfg, in_child, cells, task, out, annotate, progress)
        finish(ranks, out, plan_order(cfg, cells))
    except RunStopped:
        stopped(ranks, out, cfg, [f"{label(m.name, c.target_tokens, b)}" for c in cells for b in cfg.batches
                                  for m in cfg.methods])
    return out


def open_output(cfg: RunConfig, header: dict, ranks: Ranks):
    """Rank 0 (or a plain run): the result file, its resume set shared with the other ranks; another rank: an
    Outbox that sends each record to rank 0."""
    if not ranks.distributed:
        return ResultFile(cfg.out, header, resume=cfg.resume)
    roster = ranks.announce({"device": str(cfg.device), "gpu": _gpu_name(cfg.device)})
    if not ranks.writer:
        return Outbox(ranks, ranks.share_start(), cfg.out)
    try:
        out = ResultFile(cfg.out, {**header, "ranks": roster}, resume=cfg.resume)
    except UserError as exc:
        ranks.share_start(error=str(exc))  # the other ranks stop with the same line
        raise
    ranks.share_start(done={r.identity() for r in out.results if r.error is None})
    return out


class Outbox:
    """The result file as a rank other than 0 sees it: records go to rank 0 through the store; what was finished
    before a --resume is the set rank 0 shared."""

    def __init__(self, ranks: Ranks, done: set[tuple], path):
        self.ranks, self.finished, self.path, self.run, self.results = ranks, done, path, {}, []

    def done(self, record_identity: tuple) -> bool:
        return record_identity in self.finished

    def finished_identities(self) -> set[tuple]:
        return self.finished

    def add(self, record: BenchmarkResult) -> None:
        self.ranks.send(record.to_dict())

    def add_all(self, records: list[BenchmarkResult], write: bool = True) -> None:
        for record in records:
            self.add(record)

    def save(self) -> None:  # rank 0 writes the file
        pass


def save_record(out, record: BenchmarkResult, progress: dict, line: str, count: bool = True) -> None:
    """Stamp a distributed run's record with its rank, add it to the output, print its progress line (`count`: it
    ends one cell of the total); rank 0 then adds what the other ranks sent meanwhile."""
    deliver(out, record, progress["ranks"], progress.get("gpu"))
    say(progress, line, count)


def deliver(out, record: BenchmarkResult, ranks: Ranks, gpu: str | None) -> None:
    """Add a record to the output, stamped with its rank, host and GPU in a distributed run; rank 0 then adds what
    the other ranks sent meanwhile."""
    if ranks.distributed:
        record.rank, record.host, record.gpu = ranks.rank, ranks.host, gpu
    out.add(record)
    if ranks.writer:
        _take_arrivals(out, ranks)


def say(progress: dict, line: str, count: bool = True) -> None:
    """A progress line, '[done/total] ...' ('rN' names the rank of a distributed run)."""
    ranks: Ranks = progress.setdefault("ranks", Ranks())  # tools call this without _run
    if count:
        progress["done"] = ranks.tick()
    console.print(f"[{progress.get('done', 0)}/{progress['total']}" + (f" r{ranks.rank}]" if ranks.distributed
                                                                         else "]") + f" {line}")


def _take_arrivals(out: ResultFile, ranks: Ranks) -> None:
    for data in ranks.receive():
        out.add(BenchmarkResult.from_dict(data))


def finish(ranks: Ranks, out, order) -> None:
    """The end of a rank's share: another rank says so and exits; rank 0 adds the others' records as they come,
    puts every record in the single-process order (`order`, a sort key: arrival order varies from run to run, a
    file to diff must not), then the ranks' GPU probes in the header."""
    if not ranks.distributed:
        return
    if not ranks.writer:
        ranks.finish()
        raise OtherRankDone()
    ranks.wait_for_others(lambda data: out.add(BenchmarkResult.from_dict(data)))
    out.results.sort(key=order)
    probes = [p for share in ranks.gather("gpu_probes") for p in share]
    if probes:
        out.run["rank_probes"] = probes
    out.save()


def stopped(ranks: Ranks, out: ResultFile, cfg: RunConfig, planned: list[str],
            finished_label: Callable[[BenchmarkResult], str | None] | None = None) -> None:
    """The writer (a plain run, or rank 0) got SIGTERM: save what arrived and name, in one line, the planned cells
    (labels) the file lacks; `finished_label(record)` is the label a finished record stands for (default:
    method@context/batch)."""
    try:
        _take_arrivals(out, ranks)
    except Exception:  # noqa: BLE001 - the store may be gone with torchrun's agent; the file is what counts
        pass
    out.save()
    finished_label = finished_label or (lambda r: label(r.method, r.target_tokens, r.batch))
    finished = [finished_label(r) for r in {r.identity(): r for r in out.results if r.error is None}.values()]
    left = unfinished(planned, finished)
    why = " (torchrun stops every rank when one fails)" if ranks.distributed else ""
    raise UserError(f"run stopped by SIGTERM{why}: {len(left)} cell(s) not in {cfg.out}: {', '.join(left[:12])}"
                    f"{', ...' if len(left) > 12 else ''}; the same command with --resume"
                    f"{' (any number of ranks)' if ranks.distributed else ''} completes them")


def plan_order(cfg: RunConfig, cells: list[Cell]):
    """A record's place in the single-process order: its cell (length, prompt), batch, method; then its identity,
    so that the order never depends on which rank finished first."""
    places = {}
    for i, c in enumerate(cells):
        places.setdefault((c.target_tokens, c.prompt_id), i)
    methods = [m.name for m in cfg.methods]

    def key(r: BenchmarkResult):
        return (places.get((r.target_tokens, r.prompt_id), len(places)),
                cfg.batches.index(r.batch) if r.batch in cfg.batches else len(cfg.batches),
                methods.index(r.method) if r.method in methods else len(methods), repr(r.identity()))
    return key


def label(method: str, target_tokens: int, batch: int) -> str:
    return f"{method}@{target_tokens}" + (f"/b{batch}" if batch > 1 else "")


def _run_in_child(cfg, in_child, cells, task, out, annotate, progress) -> None:
    """dms-8x-remote: batch-1 records from the child process (isolated.py), error records for larger batches."""
    if cfg.batches != [1]:
        model, weights = isolated.model_name(cfg.dms_model)  # what the child's batch-1 records name
        for cell in cells:  # the child process decodes batch 1 only
            for batch in (b for b in cfg.batches if b > 1):
                for method in in_child:
                    record = skeleton(model, weights, method, cell, None, task, {"hf": None}, None, cfg.settings,
                                      batch)
                    record.error = method.batch_problem(cfg.settings)
                    save_record(out, record, progress, progress_line(record))
    by_name = {m.name: m for m in in_child}
    done_ids = {r.identity() for r in out.results if r.error is None} if cfg.resume else set()

    def save(record: BenchmarkResult) -> None:  # called as each child record arrives
        if annotate and record.method in by_name:
            annotate(record, by_name[record.method])
        save_record(out, record, progress, progress_line(record))

    isolated.run_in_child(cfg, in_child, cells, task, done=done_ids, on_record=save)


def _gpu_name(device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


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
    ranks: Ranks = progress.setdefault("ranks", Ranks())  # tools call this without _run
    progress["gpu"] = _gpu_name(cfg.device)
    # Every prompt is built before the first measurement: a cell that cannot be built (a target too short for a
    # task's text, say) ends the run in one line before anything is measured, not half-way through.
    built = build_all(cells, lm.tokenizer)
    too_long = next((p for p, _ in built if p.input_tokens + cfg.settings.max_new_tokens > lm.max_positions), None)
    if too_long is not None:  # a --prompts text past the model's positions: refuse it, do not run it for minutes
        raise UserError(f"a prompt of {too_long.input_tokens} tokens + {cfg.settings.max_new_tokens} new tokens "
                        f"exceeds {lm.name}'s {lm.max_positions} positions")
    work = [(cell, prompt, needle, batch, method) for cell, (prompt, needle) in zip(cells, built)
            for batch in cfg.batches for method in methods]
    if ranks.distributed:  # longest first, so no rank is left with a long cell at the end (a stable sort)
        work.sort(key=lambda item: -item[1].input_tokens * item[3])
        _probe_gpu(cfg, lm, methods, cells, built, decoders, task, ranks)
    for cell, prompt, needle, batch, method in work:
        identity = skeleton(lm.name, lm.weights, method, cell, needle, task, decoders, prompt, cfg.settings,
                            batch).identity()
        if cfg.resume and out.done(identity):
            if ranks.writer:
                say(progress, f"{method.name} @ {cell.target_tokens}: already in {cfg.out}, skipped")
            continue
        if not ranks.claim(repr(identity)):  # another rank has it
            continue
        if cell.questions > 1:  # one compression, several answers: records per question
            records = run_cell_questions(lm, method, prompt, needle, cell, cfg.settings, task, out, cfg.resume)
            if not records:  # all already in the file (run_cell_questions said so)
                progress["done"] = progress["ranks"].tick()
            for i, record in enumerate(records):
                record.process = "main"
                if annotate:
                    annotate(record, method)
                save_record(out, record, progress, f"q{record.question_index} {progress_line(record)}", count=i == 0)
            continue
        # a batch: sequence b has needle seed + b (Cell.build_batch); batch 1 is the cell's own prompt
        if batch == 1:
            prompts = prompt
        elif cfg.admission == "cloned":  # only the first and the last sequence are prefilled
            prompts = [prompt] * (batch - 1) + [_nth(cell, lm.tokenizer, batch - 1)]
        else:
            prompts = cell.build_batch(lm.tokenizer, batch)[0]
        record = run_cell(lm, method, prompts, needle, cell, cfg.settings, cfg.repeats, decoders, task,
                          admission=cfg.admission)
        record.process = "main"
        if annotate:
            annotate(record, method)
        save_record(out, record, progress, progress_line(record))


def _probe_gpu(cfg, lm, methods, cells, built, decoders, task, ranks: Ranks) -> None:
    """Vanilla at batch 1 once per context length on every rank, beside the queue: `check` compares the ranks' GPUs
    on the same cell, so a slow GPU shows instead of being averaged in (run only when vanilla is in the run)."""
    vanilla = next((m for m in methods if m.name == "vanilla"), None)
    if vanilla is None:
        return
    probes, seen = [], set()
    for cell, (prompt, needle) in zip(cells, built):
        if cell.target_tokens in seen:  # own prompts (no target length) are probed once, on the first
            continue
        seen.add(cell.target_tokens)
        r = run_cell(lm, vanilla, prompt, needle, cell, cfg.settings, cfg.repeats, decoders, task)
        probes.append({"rank": ranks.rank, "host": ranks.host, "gpu": _gpu_name(cfg.device), "device": str(cfg.device),
                       "target_tokens": cell.target_tokens or prompt.input_tokens, "ttft_s": r.ttft_s, "tpot_ms": r.tpot_ms,
                       "decode_tokens_per_s": r.decode_tokens_per_s, "error": r.error})
    ranks.share("gpu_probes", probes)


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
