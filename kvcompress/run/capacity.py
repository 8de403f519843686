"""The capacity search behind `benchmark.py capacity`: how many sequences fit a memory budget, and how fast they
decode together.

For each method x context: the largest batch whose whole generation (its prefills and compression, then the decode
of --max-new-tokens) fits the budget, measured with the allocator capped at the budget; then the aggregate decode
speed at that batch (and at batch 1); and, per method, the longest context that fits at batch 1.

The search runs real generations: two probes (batch 1 and 2) measure the peak's intercept and its cost per sequence
(weights + activation and workspace, KV + per-sequence workspace) and so predict the largest batch from bytes; then
a few runs bracket and bisect around the prediction. A run that runs out of memory is recorded and the search goes
on. Probes decode --search-tokens steps with the fast engine's buffers sized for the whole --max-new-tokens, and use
cloned admission (engine.batch): the first and the last sequence are prefilled for real, the rows between copy the
first's compressed cache, so each probe holds the memory of B distinct sequences at the cost of two prefills.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

import kvcompress.engine
from kvcompress.engine.batch import generate_batch
from kvcompress.errors import UserError
from kvcompress.record import record_for
from kvcompress.report import make_console
from kvcompress.results import ResultFile, load
from kvcompress.run.one_cell import free_memory
from kvcompress.ranks import Ranks, RunStopped, stop_on_sigterm
from kvcompress.run.runner import (deliver, finish, header_of, label, make_decoders, open_output, run_on_models,
                                   stopped, tiny_threads)
from kvcompress.tasks.cell import Cell

# the header entries a resumed capacity file must share with the new run (its cells would be searched otherwise)
RESUME_SEARCH = ("budget_bytes", "budget_kind", "search_tokens", "max_batch", "search_runs")


def size_label(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


# --------------------------------------------------------------------------------------------------------------------
# budgets: what "fits" means
# --------------------------------------------------------------------------------------------------------------------

class AllocatorBudget:
    """The CUDA caching allocator capped at the budget (torch.cuda.set_per_process_memory_fraction): a run that would
    reserve more raises torch.OutOfMemoryError, as a GPU of that size would. Weights count; the CUDA context does not."""

    kind = "cuda_allocator_cap"

    def __init__(self, budget: int, device: torch.device):
        # set_per_process_memory_fraction needs an indexed device ("cuda" alone is refused)
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.budget, self.device = budget, torch.device(device.type, index)

    def apply(self) -> None:
        total = torch.cuda.get_device_properties(self.device).total_memory
        if self.budget > total:
            raise UserError(f"budget {self.budget / 2**30:.1f} GiB exceeds this GPU's {total / 2**30:.1f} GiB")
        torch.cuda.set_per_process_memory_fraction(self.budget / total, self.device)

    def release(self) -> None:
        torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    def used(self, generation, lm) -> dict[str, int]:
        """Peak allocated bytes per phase (the allocator already refused what did not fit)."""
        return {"prefill": generation.peak_prefill, "decode": generation.peak_decode}

    def reserved(self) -> int | None:
        """Peak bytes the caching allocator reserved in the run's last phase (decode; PhasePeaks resets the peaks
        per phase): beside the allocated peaks, the share of the cap held in blocks never handed out (its pools,
        the fast engine's MemPool among them, each keep their own)."""
        return int(torch.cuda.max_memory_reserved(self.device))

    def check(self, used: dict[str, int]) -> None:
        pass

    def at_refusal(self) -> str:
        """The allocator when it refused: the cap bounds reserved bytes, the peaks count allocated ones, so blocks
        reserved but unallocated (the caching allocator's, other pools') can refuse a batch whose peak would fit."""
        return (f" [at the refusal: {size_label(torch.cuda.memory_allocated(self.device))} allocated, "
                f"{size_label(torch.cuda.memory_reserved(self.device))} reserved]")


class BytesBudget:
    """Where there is no allocator to cap (CPU, tests): a run fits when weights + the batch's KV bytes at the end,
    read from the cache tensors, stay within the budget; otherwise it raises torch.OutOfMemoryError like a real one."""

    kind = "weights_plus_kv_bytes"

    def __init__(self, budget: int):
        self.budget = budget

    def apply(self) -> None:
        pass

    def release(self) -> None:
        pass

    def used(self, generation, lm) -> dict[str, int]:
        return {"decode": lm.weights_bytes + generation.kv_end.bytes}

    def reserved(self) -> int | None:
        return None  # no allocator

    def check(self, used: dict[str, int]) -> None:
        peak = max(used.values())
        if peak > self.budget:
            raise torch.OutOfMemoryError(f"budget exceeded: {peak:,} B > {self.budget:,} B (weights + KV bytes)")

    def at_refusal(self) -> str:
        return ""  # the refusal is this budget's own arithmetic, said in its message


# --------------------------------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class Probe:
    """One real run at a batch size (or, for the longest context, a context length)."""

    batch: int
    context: int
    fits: bool
    used: dict[str, int] | None
    error: str | None
    seconds: float
    reserved: int | None = None  # a run that fit: the allocator's reserved peak in its last phase (CUDA only)

    def line(self) -> str:
        """'fits' (with the peaks, where the allocator reports them) or why not."""
        if not self.fits:
            return self.error
        if self.reserved is None:
            return "fits"
        return f"fits: {size_label(max(self.used.values()))} allocated, {size_label(self.reserved)} reserved at peak"

    def to_dict(self) -> dict:
        return {"batch": self.batch, "context": self.context, "fits": self.fits, "peak_bytes": self.used,
                "reserved_bytes": self.reserved, "error": self.error, "seconds": round(self.seconds, 3)}


def predict(one: Probe, two: Probe, budget: int) -> int | None:
    """Largest batch the bytes allow: each phase's peak is intercept + batch x per-sequence cost, both measured
    (batch 1 and batch 2); the tighter phase decides."""
    if not (one.fits and two.fits):
        return None
    limits = []
    for phase, peak_one in one.used.items():
        per_sequence = two.used.get(phase, peak_one) - peak_one
        if per_sequence > 0:
            limits.append(1 + math.floor((budget - peak_one) / per_sequence))
    return max(1, min(limits)) if limits else None


def search(try_batch: Callable[[int], bool], start: int, max_batch: int, max_runs: int,
           known: dict[int, bool] | None = None, tolerance: float = 0.02) -> tuple[int, int]:
    """(lo, hi): lo the largest batch seen to fit (0: none), hi the smallest seen not to (max_batch + 1: none).

    Starts at `start` (the prediction); while the bracket is wide it gallops away from the last run (5 % of the
    start, doubling), then it bisects until hi - lo <= max(1, tolerance x lo): exact up to 50 sequences, within
    2 % above (each run costs real prefills). `known` holds results of earlier runs. At most max_runs calls of try_batch."""
    known = dict(known or {})
    lo = max([b for b, ok in known.items() if ok], default=0)
    hi = min([b for b, ok in known.items() if not ok], default=max_batch + 1)
    b = min(max(start, lo + 1), hi - 1, max_batch)
    step = max(1, round(0.05 * start))
    runs = 0
    def bracketed() -> bool:
        return hi - lo <= max(1, math.floor(tolerance * lo))

    while not bracketed() and runs < max_runs:
        runs += 1
        if try_batch(b):
            lo = b
        else:
            hi = b
        if bracketed():
            break
        if hi - lo > 2 * step:  # the bracket is still wide: gallop from the last run, doubling the step
            b = min(max_batch, lo + step) if b == lo else max(lo + 1, hi - step)
            step *= 2
        else:
            b = (lo + hi) // 2
    return lo, hi


# --------------------------------------------------------------------------------------------------------------------
# one run under the budget
# --------------------------------------------------------------------------------------------------------------------

class Runner:
    """Real runs of one model under a budget; every run frees what it allocated, whether it fitted or not."""

    def __init__(self, lm, decoder, settings, budget, search_tokens: int):
        self.lm, self.decoder, self.budget = lm, decoder, budget
        # The fast engine sizes its buffers for the whole generation and decodes a few steps of it; the hf engine's
        # cache grows as it decodes, so it must decode everything to reach its peak.
        self.search_settings = (replace(settings, max_new_tokens=min(search_tokens, settings.max_new_tokens),
                                        reserve_tokens=settings.max_new_tokens)
                                if decoder.sizes_buffers_up_front else settings)

    def probe(self, method, prompts: list, context: int) -> Probe:
        start = time.perf_counter()
        used = error = reserved = None
        try:
            generation = generate_batch(self.lm, method, prompts, self.search_settings, self.decoder,
                                        admission="cloned")
            used, reserved = self.budget.used(generation, self.lm), self.budget.reserved()
            del generation
            self.budget.check(used)
        except torch.OutOfMemoryError as exc:
            error = (f"OOM: {str(exc).strip().splitlines()[0][:160]}" if str(exc).strip() else "OOM") + \
                self.budget.at_refusal()
        finally:
            self.free()
        return Probe(len(prompts), context, error is None, used, error, time.perf_counter() - start, reserved)

    def free(self) -> None:
        self.decoder.release()
        free_memory()


def capacity_cell(runner: Runner, method, prompts: tuple, context: int, max_batch: int, max_runs: int,
                  progress: Callable[[str], None] = lambda line: None) -> tuple[int, int, int | None, list[Probe]]:
    """(max batch, smallest failing batch, bytes-predicted max batch, probes) for one method at one context.
    `prompts` = (first, last): the two sequences a cloned batch prefills."""
    first, last = prompts
    probes: list[Probe] = []

    def run(batch: int) -> bool:
        probe = runner.probe(method, [first] * (batch - 1) + [last] if batch > 1 else [first], context)
        probes.append(probe)
        progress(f"  batch {batch}: {probe.line()} ({probe.seconds:.1f} s)")
        return probe.fits

    if not run(1):
        return 0, 1, None, probes
    if max_batch < 2 or not run(2):
        return 1, 2 if max_batch >= 2 else max_batch + 1, None, probes
    predicted = predict(probes[0], probes[1], runner.budget.budget)
    lo, hi = search(run, min(predicted or 4, max_batch), max_batch, max_runs, known={1: True, 2: True})
    return lo, hi, predicted, probes


def context_grid(limit: int) -> tuple[int, int]:
    """(step, top) of the longest-context search: 1K steps (64 below 4K positions); top = `limit` rounded down to a
    step, the longest context it can find."""
    step = 1024 if limit >= 4096 else 64
    return step, limit // step * step


def longest_context(runner: Runner, method, build: Callable[[int], object], known_fit: int, limit: int,
                    max_runs: int, progress: Callable[[str], None] = lambda line: None) -> tuple[int, list[Probe]]:
    """The longest context (in `context_grid` steps) whose batch-1 generation fits; `known_fit` already fitted;
    `limit` is the model's (positions - new tokens). Tries the limit first: on a large budget every method reaches
    it."""
    probes: list[Probe] = []
    step, top = context_grid(limit)

    def fits(context: int) -> bool:
        prompt = build(context)
        sized = method.for_context(prompt.context_tokens, runner.lm.model, context)  # a kept budget at this length
        probe = runner.probe(sized, [prompt], context)
        probes.append(probe)
        progress(f"  context {context}: {probe.line()}")
        return probe.fits

    if top <= known_fit or fits(top):
        return max(top, known_fit), probes
    lo, hi = known_fit // step, top // step  # in steps: lo fits, hi does not
    while hi - lo > 1 and len(probes) < max_runs:
        mid = (lo + hi) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid
    return max(lo * step, known_fit), probes


# --------------------------------------------------------------------------------------------------------------------
# the search over every cell
# --------------------------------------------------------------------------------------------------------------------

def search_all(cfg, budget, *, search_tokens: int, max_batch: int, max_runs: int, console=None):
    """Every cell of cfg.contexts x cfg.methods; records are saved as they come (a cell that fails is a record)."""
    console = console or make_console()
    say = console.print
    with tiny_threads(cfg):
        return _run(cfg, budget, search_tokens, max_batch, max_runs, say)


def _run(cfg, budget, search_tokens: int, max_batch: int, max_runs: int, say):
    header = header_of(cfg, {"budget_bytes": budget.budget, "budget_kind": budget.kind, "search_tokens": search_tokens,
                             "max_batch": max_batch, "search_runs": max_runs,
                             "torch_threads": torch.get_num_threads()}, task="capacity")
    if cfg.resume and Path(cfg.out).is_file():
        old = load(cfg.out)[0]
        differs = next((key for key in RESUME_SEARCH if key in old and old[key] != header[key]), None)
        if differs:
            raise UserError(f"--resume: {cfg.out} was written with {differs} {old[differs]!r}, this run has "
                            f"{header[differs]!r}; rerun with the same settings or name a new --out")
    ranks = Ranks.from_env()
    if ranks.distributed and cfg.resume:  # a cell's resume reads its records, which only rank 0 holds
        raise UserError("capacity --resume runs in one process: rerun it without torchrun (the file may come from "
                        "any number of ranks)")
    out = open_output(cfg, header, ranks)
    if ranks.distributed:
        say = rank_say(say, ranks)
    budget.apply()  # before loading: the weights count towards the budget (of this rank's GPU under torchrun)
    stop_on_sigterm(ranks)
    try:
        # each method on the model it runs on: native DMS with pretrained weights on the DMS checkpoint, after the rest
        run_on_models(cfg, cfg.methods, out, lambda lm, methods: _methods(cfg, lm, methods, budget, out, search_tokens,
                                                                          max_batch, max_runs, say, ranks), say)
        methods = [m.name for m in cfg.methods]
        finish(ranks, out, lambda r: (r.task != "capacity", cfg.contexts.index(r.target_tokens)
                                      if r.target_tokens in cfg.contexts else 0,
                                      methods.index(r.method) if r.method in methods else len(methods), r.batch))
    except RunStopped:
        stopped(ranks, out, cfg, [label(m.name, c, 1) for c in cfg.contexts for m in cfg.methods],
                lambda r: label(r.method, r.target_tokens, 1) if r.task == "capacity" else None)
    except torch.OutOfMemoryError as exc:  # every cell catches its own: this one is the weights' load
        raise UserError(f"budget {size_label(budget.budget)}: the model's weights do not fit it "
                        f"({str(exc).strip().splitlines()[0][:120]})") from None
    finally:
        budget.release()
    return out


def finished(out: ResultFile, method: str, context: int) -> bool:
    """Whether a resumed file holds this cell's search: its batch-1 record and the one at the batch found, error-free
    (a cell that does not fit at batch 1 is searched again, as a failed cell of the other scripts is)."""
    done = [r for r in out.results if r.task == "capacity" and r.method == method and r.target_tokens == context
            and r.error is None]
    return any(r.batch == max(1, r.capacity_max_batch or 1) for r in done) and any(r.batch == 1 for r in done)


def longest_done(out: ResultFile, method: str) -> bool:
    return any(r.task == "capacity_context" and r.method == method and r.error is None for r in out.results)


def rank_say(say, ranks: Ranks):
    return lambda line: say(f"r{ranks.rank}: {line}")


def _methods(cfg, lm, methods, budget, out, search_tokens: int, max_batch: int, max_runs: int, say,
             ranks: Ranks) -> None:
    """Every context x `methods` on one loaded model, then each method's longest context at batch 1. Under torchrun
    each (context, method) cell goes to one rank, longest first, and a method's longest-context search to one rank
    once all its cells are done (it starts from the longest context any rank saw fit)."""
    gpu = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else None
    decoders = make_decoders(cfg, lm)
    decoder = decoders.get("fast", decoders["hf"])  # one engine: every run of the search and the timed ones
    runner = Runner(lm, decoder, cfg.settings, budget, search_tokens)
    seed = cfg.settings.sampling.seed
    built: dict[int, object] = {}  # length -> its batch-1 prompt (sequence 0's), built once for every method

    def build(n: int):
        if n not in built:
            built[n] = Cell(target_tokens=n, needle_seed=seed, haystack=cfg.haystack).build(lm.tokenizer)[0]
        return built[n]

    work = [(context, method) for context in cfg.contexts for method in methods]
    if ranks.distributed:
        work.sort(key=lambda item: -item[0])  # longest first (a stable sort)
    for context, method in work:
        if not ranks.claim(f"capacity/{lm.name}/{method.name}/{context}"):
            continue
        pair = (build(context),
                Cell(target_tokens=context, needle_seed=seed + 1, haystack=cfg.haystack).build(lm.tokenizer)[0])
        if finished(out, method.name, context):  # --resume: the file holds this cell's search
            say(f"capacity: {method.name} @ {context} tok: in {cfg.out} already")
            ranks.mark(f"fits/{method.name}/{context}")
            ranks.count(f"cells/{method.name}")
            continue
        say(f"capacity: {method.name} @ {context} tok, budget {size_label(budget.budget)}")
        for record in _cell(runner, lm, method, pair, context, cfg, max_batch, max_runs, say):
            deliver(out, record, ranks, gpu)
            if not record.error and record.batch == 1:
                ranks.mark(f"fits/{method.name}/{context}")
        ranks.count(f"cells/{method.name}")
    limit = (cfg.spec.max_positions or 4 * max(cfg.contexts)) - cfg.settings.max_new_tokens
    fitted: dict[str, int] = {}  # method -> longest context seen to fit at batch 1
    for method in methods:
        if longest_done(out, method.name) or not ranks.claim(f"capacity/{lm.name}/{method.name}/longest"):
            continue
        ranks.wait_count(f"cells/{method.name}", len(cfg.contexts))  # its cells on the other ranks
        fits = [c for c in cfg.contexts if ranks.marked(f"fits/{method.name}/{c}")]
        if not fits:
            continue
        fitted[method.name] = max(fits)
        say(f"capacity: longest context of {method.name} at batch 1")
        ready = method.prepare(lm, build(fitted[method.name]))
        longest, probes = longest_context(runner, ready, build, fitted[method.name], limit, max_runs, say)
        record = _record(lm, method, cfg, longest, 1, decoder.name, "capacity_context")
        record.capacity_budget_bytes, record.capacity_probes = budget.budget, [p.to_dict() for p in probes]
        record.notes.append(f"longest context at batch 1: {longest} tokens" +
                            (" (the model's position limit less the new tokens)"
                             if longest >= context_grid(limit)[1] else ""))
        deliver(out, record, ranks, gpu)


def _cell(runner, lm, method, pair, context, cfg, max_batch, max_runs, say):
    method = method.for_context(pair[0].context_tokens, lm.model, context)  # a kept budget becomes a ratio
    reason = method.problem(lm) or method.batch_problem(cfg.settings)
    engine = runner.decoder.name
    unsupported = runner.decoder.unsupported(method, lm)
    if reason is None and unsupported:
        reason = f"fast engine cannot run this method ({unsupported})"
    if reason:
        record = _record(lm, method, cfg, context, 1, engine, "capacity")
        record.error = reason
        say(f"  error: {reason}")
        return [record]
    method = method.prepare(lm, pair[0])  # DMS calibrated once, shared by every sequence of every batch
    lo, hi, predicted, probes = capacity_cell(runner, method, pair, context, max_batch, max_runs, say)
    details = {"capacity_budget_bytes": runner.budget.budget, "capacity_max_batch": lo,
               "capacity_predicted_batch": predicted, "capacity_probes": [p.to_dict() for p in probes]}
    if lo == 0:
        record = _record(lm, method, cfg, context, 1, engine, "capacity")
        record.error = f"does not fit the budget at batch 1 ({probes[0].error})"
        vars(record).update(details)
        say(f"  error: {record.error}")
        return [record]
    records = []
    for batch in sorted({1, lo}):
        record, failures = None, []
        # The timed run (warm-up, repeats, memory pass) at the search's max can still run out of memory where the
        # search's run fitted; then it is timed up to twice at 2 % fewer sequences, and the record says so.
        for attempt in range(3 if batch == lo > 1 else 1):
            timed = batch if not attempt else max(1, batch - attempt * max(1, round(0.02 * batch)))
            prompts = pair[0] if timed == 1 else [pair[0]] * (timed - 1) + [pair[1]]
            try:
                record = kvcompress.engine.measure(lm, method, prompts, cfg.settings, runner.decoder, repeats=cfg.repeats,
                                                   task="capacity", target_tokens=context, admission="cloned")
                break
            except torch.OutOfMemoryError as exc:
                failures.append(f"the timed run at batch {timed} ran out of memory "
                                f"({str(exc).strip().splitlines()[0][:120]})")
                record = None
            finally:
                runner.free()
        if record is None:
            record = _record(lm, method, cfg, context, batch, engine, "capacity")
            record.error = "; ".join(failures)
        elif failures:
            record.notes.append(f"timed at batch {record.batch}: " + "; ".join(failures))
        vars(record).update(details)
        method.record_fields(record, runner.decoder)
        record.kv_budget = method.budget_label
        if lo < max_batch and hi - lo > 1:
            record.notes.append(f"search stopped after {len(probes)} runs: the boundary lies in [{lo}, {hi})")
        if lo >= max_batch:
            record.notes.append(f"fits at --max-batch {max_batch}: the true maximum may be larger")
        say(f"  batch {record.batch}: " + (record.error or f"{record.aggregate_decode_tokens_per_s:,.0f} tok/s aggregate"))
        records.append(record)
    return records


def _record(lm, method, cfg, context: int, batch: int, engine: str, task: str):
    return record_for(lm.name, lm.weights, method, cfg.settings, task=task, engine=engine, target_tokens=context,
                      batch=batch)
