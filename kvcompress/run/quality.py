"""Quality runs (test_long_context.py --mode quality, the default): every (sample, method) answered once, as fast as
one prefill per sample allows.

Samples are grouped by context length and output budget and taken `answer_batch` at a time (by default as many
as a share of the GPU's free memory holds: auto_answer_batch). Each sample's context is prefilled once for every
method that joins a shared prefill (engine/shared_prefill.py: vanilla, the prefill presses and their quantized
compositions), each method then answers the group's samples as one batch (engine/quality.py); a method with a
prefill of its own (native DMS, decoding presses, --query-aware) answers each sample alone. Records join the result
file as each method's batch is done; the file is rewritten every SAVE_EVERY_S seconds (2 minutes), or
SAVE_COST_RATIO times its last rewrite's own time if that is longer (after every answer it would cost minutes of
JSON over thousands of answers), at the end, and when the run stops on an error, ^C or SIGTERM (with the header's
`quality` block); between rewrites each batch's records are appended to `<out>.journal.jsonl` (results.ResultFile),
so a killed process loses only the batch in flight, and --resume folds the journal in and skips every (sample,
method) already answered. Progress prints answers/s so far and the time left at that rate.

Records are quality records (`run_mode` "quality"): answer, score, KV bytes and kept tokens from the compressed
cache, no timing or memory peaks (BenchmarkResult's timing fields stay None). The whole run's answers/s goes into
the run header (`quality`), wall clock on the host: a throughput of the quality run, not a latency; beside it the
seconds spent in shared prefills and in answering (question, decode, records), the device drained at each phase's
ends.
"""

from __future__ import annotations

import contextlib
import time

import torch
from dataclasses import dataclass, field

from rich.markup import escape

from kvcompress.engine.generate import GenerationSettings, eos_ids
from kvcompress.engine.quality import QualityAnswer, answer_alone, answer_compressed
from kvcompress.engine.shared_prefill import prefill_shared
from kvcompress.memory import clear_masks
from kvcompress.methods import Method
from kvcompress.record import kv_fields, model_fields, record_for
from kvcompress.ranks import Ranks
from kvcompress.results import BenchmarkResult
from kvcompress.report import context_label
from kvcompress.run.one_cell import console, failure_line, free_memory, grade, pick_decoder, skeleton
from kvcompress.tasks import contract
from kvcompress.tasks.cell import build_all

# The result file is rewritten whole (results.ResultFile): after every record, thousands of answers would cost
# minutes of JSON. A quality run writes at most this often (and at the end, and when it stops on an error or ^C);
# the journal holds every batch in between. At 30 s, saves took ~2 % of a 5-minute RULER grid (0.3 ms a record a
# save on this project's CI machine).
SAVE_EVERY_S = 120.0
# a rewrite of thousands of records takes seconds (4,500 RULER records: 18 MB of JSON, ~1.3 s) and the file grows:
# rewrites wait at least this many times the last one's own time, so they cost at most 2 % of the run
SAVE_COST_RATIO = 50
CPU_ANSWER_BATCH = 32  # samples decoded together on a CPU (on a GPU: sized to its free memory, auto_answer_batch)
# Of the GPU's free memory, for the compressed caches a group of samples holds at once; the rest covers what stands
# beside them (a decode group's buffers and staging, the prefill's activations). Measured at 0.6 (RULER 4K, 9 methods,
# an H100, results/h100/session-2026-12-06-c/): peak 56.1 of 79.2 GiB with 15.3 of weights, i.e. 1.17x the caches'
# share. At 0.7 that is ~63 GiB on an H100 and ~117 of 140 on an H200 (the run header's device peak checks it).
MEMORY_SHARE = 0.7
PAD_SHARE = 0.8  # methods decoded together keep at least this share of the group's longest layer (decode_groups)


@dataclass
class Sample:
    cell: object  # tasks.cell.Cell
    prompt: object  # engine Prompt
    needle: object  # niah.Needle or contract.TaskContext
    budget: int  # output tokens at most: the task's tokens_to_generate, else --max-new-tokens


@dataclass
class Progress:
    done: int
    total: int
    answered: int = 0  # answered in this process (resumed ones are not)
    start: float = field(default_factory=time.monotonic)
    phases: dict = field(default_factory=dict)  # host seconds per phase: "shared prefill", "answers"
    finished: set = field(default_factory=set)  # identities of the records a resumed file holds without error
    saved: float = field(default_factory=time.monotonic)
    save_seconds: float = 0.0  # the last rewrite's own time
    stamp: object = None  # torchrun: sets a record's rank, host and GPU (None in a plain run)
    ranks: object = None  # ranks.Ranks: under torchrun, `count` keeps the run's totals over every rank
    sizes: dict = field(default_factory=dict)  # answer batch per context length
    run_done: int = 0
    run_answered: int = 0
    earlier: list = field(default_factory=list)  # --resume: the `quality` blocks of the processes before this one
    laps: list = field(default_factory=list)  # (monotonic time, answered) at the end of each chunk (chunk_done)
    prefills: dict = field(default_factory=dict)  # context length -> shared prefills: count, context tokens, seconds

    def save_due(self) -> bool:
        if time.monotonic() - self.saved < max(SAVE_EVERY_S, SAVE_COST_RATIO * self.save_seconds):
            return False
        self.saved = time.monotonic()
        return True

    @contextlib.contextmanager
    def phase(self, name: str, device):
        """Host wall clock around one phase, the device drained at both ends (phases are whole prefills and whole
        batches: one synchronisation each costs nothing against them)."""
        _drain(device)
        start = time.monotonic()
        try:
            yield
        finally:
            _drain(device)
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - start

    def prefilled(self, context: int, tokens: int, seconds: float) -> None:
        """One shared prefill of `tokens` context tokens (a sample of the `context` cell) took `seconds`: what
        `benchmark.py check` holds against the FLOP ideal (its time per prefill at each length)."""
        tally = self.prefills.setdefault(str(context), {"count": 0, "context_tokens": 0, "seconds": 0.0})
        tally["count"] += 1
        tally["context_tokens"] += tokens
        tally["seconds"] = round(tally["seconds"] + seconds, 4)

    def answer_clock(self, device) -> _AnswerClock:
        """The clock of the "answers" phase's parts (engine.quality.answer_compressed's `clock`)."""
        return _AnswerClock(self, device)

    def summary(self) -> dict:
        """The run header's `quality` block (rewritten at every save: a killed run keeps where its time went)."""
        elapsed = time.monotonic() - self.start
        out = {"answers": self.answered, "wall_s": round(elapsed, 3),
               "answers_per_s": round(self.answered / elapsed, 3) if elapsed > 0 else None,
               "answer_batch": {str(k): v for k, v in self.sizes.items()},
               "phases_s": {k: round(v, 3) for k, v in self.phases.items()},
               "shared_prefills": self.prefills,
               **device_memory(),
               "clock": "host wall clock around the whole quality run (model load excluded); phases: the device "
                        "drained at each end; 'answers: ...' are parts of 'answers', 'answers: decode: ...' of "
                        "'answers: decode'"}
        if self.earlier:  # a resumed run: what each earlier process answered and took, and the sums with this one's
            out["earlier"] = self.earlier
            out["total"] = {"processes": len(self.earlier) + 1,
                            "answers": self.answered + sum(e.get("answers") or 0 for e in self.earlier),
                            "wall_s": round(elapsed + sum(e.get("wall_s") or 0 for e in self.earlier), 3)}
        return out

    def count(self, done: int, answered: int) -> None:
        """done (answered or skipped) and answered (without error) grow; under torchrun the run's totals over every
        rank are kept too, so the line's rate and time left are the run's, not this rank's."""
        self.done += done
        self.answered += answered
        if self.ranks is not None and self.ranks.distributed:
            self.run_done = self.ranks.add("quality/done", done)
            self.run_answered = self.ranks.add("quality/answered", answered)

    def _counts(self) -> tuple[int, int]:
        """(done, answered): the run's over every rank under torchrun, else this process's."""
        if self.ranks is not None and self.ranks.distributed:
            return self.run_done, self.run_answered
        return self.done, self.answered

    def chunk_done(self) -> None:
        self.laps.append((time.monotonic(), self._counts()[1]))

    def line(self) -> str:
        """The rate so far and the time left. The time left comes from whole chunks after the first: a chunk's
        shared prefill serves every method before its answers, and the first chunk also carries the kernels'
        compilation and graph captures, so a rate taken mid-chunk or over the first one is far off (a 6-minute
        RULER 4K run said "1h13m left" after its first batch)."""
        elapsed = time.monotonic() - self.start
        done, answered = self._counts()
        rate = answered / elapsed if elapsed > 0 else 0.0
        if done >= self.total:
            return f"{rate:.1f} answers/s, 0m00s left"
        if not self.laps:
            return f"{rate:.1f} answers/s, time left after the first chunk"
        (t0, a0), (t1, a1) = (self.start, 0) if len(self.laps) == 1 else self.laps[0], self.laps[-1]
        steady = (a1 - a0) / (t1 - t0) if t1 > t0 else 0.0
        left = (self.total - done) / steady if steady > 0 else float("nan")
        return f"{rate:.1f} answers/s, {_duration(left)} left"


@dataclass
class _AnswerClock:
    """`clock(name)`: Progress.phase under "answers: <name>"; `laps()`: decode_batch's `mark`, each part of the decode
    under "answers: decode: <part>": "load" up to its "admitted" mark (the caches moved into the engine's buffers),
    "forced steps at once" up to "fed" (the questions' common part in one forward, fast/forced_prefill.py),
    "first step" up to "steady" (one eager step: Triton compiles what is new, the CUDA graph is captured), "steps"
    up to "end" (the graph's replays). The device is drained at each mark."""

    progress: Progress
    device: object
    PARTS = {"admitted": "load", "fed": "forced steps at once", "steady": "first step", "end": "steps"}

    def __call__(self, name: str):
        return self.progress.phase(f"answers: {name}", self.device)

    def laps(self):
        phases = self.progress.phases
        _drain(self.device)
        last = time.monotonic()

        def mark(name: str, *rest) -> None:
            nonlocal last
            _drain(self.device)
            now = time.monotonic()
            key = f"answers: decode: {self.PARTS.get(name, name)}"
            phases[key] = phases.get(key, 0.0) + now - last
            last = now
        return mark


def run_local(cfg, lm, methods: list[Method], cells, task: str, out, annotate, progress: dict, decoders: dict,
              answer_batch: int | None = None) -> None:
    """`answer_batch`: samples decoded together (None: auto_answer_batch per context length)."""
    settings = cfg.settings
    samples = [Sample(cell, prompt, needle, budget_of(needle, settings))
               for cell, (prompt, needle) in zip(cells, build_all(cells, lm.tokenizer))]
    ranks = progress.get("ranks") or Ranks()  # a plain run (tools call this without the runner)
    state = Progress(progress.get("done", 0), progress["total"])
    sizes = state.sizes  # answer batch per context length, filled by size()
    state.finished = out.finished_identities() if cfg.resume else set()
    state.earlier = earlier_processes(getattr(out, "resumed_from", None)) if cfg.resume else []
    state.ranks = ranks
    if ranks.distributed:
        gpu = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else None
        state.stamp = lambda record: (setattr(record, "rank", ranks.rank), setattr(record, "host", ranks.host),
                                      setattr(record, "gpu", gpu))

    def size(s: Sample) -> int:  # one size per context length, fixed by its first group
        if s.cell.target_tokens not in sizes:
            tokens = s.prompt.input_tokens + s.budget
            sizes[s.cell.target_tokens] = answer_batch or auto_answer_batch(lm, methods, tokens)
        return sizes[s.cell.target_tokens]

    try:
        for chunk in chunks(samples, size, lambda s: ranks.claim(repr(s.cell.to_dict()))):
            _answer_chunk(cfg, lm, methods, chunk, task, out, annotate, state, decoders)
            if ranks.writer and ranks.distributed:  # the other ranks' answers, written with this rank's
                out.add_all([BenchmarkResult.from_dict(d) for d in ranks.receive()], write=False)
            state.chunk_done()
    finally:  # whatever was answered, and where its time went, also when the run stops on an error, ^C or SIGTERM
        out.run["quality"] = state.summary()
        out.save()
    progress["done"] = state.done


def earlier_processes(header: dict | None) -> list:
    """The `quality` blocks of the processes that wrote a resumed file, oldest first (a process killed before its
    first save left none)."""
    block = (header or {}).get("quality")
    if not block:
        return []
    return [*block.get("earlier", []), {k: v for k, v in block.items() if k not in ("earlier", "total")}]


def auto_answer_batch(lm, methods: list[Method], tokens: int) -> int:
    """Samples one group can hold: every joining method's compressed cache of every sample stays in memory until
    its method's batch is answered, about (1 - ratio) x tokens x KV bytes per token each; a share of the GPU's free
    memory over that (CPU: CPU_ANSWER_BATCH). An estimate: a group that still runs out of memory fails as a one-line
    error on its records, and --answer-batch sets the size by hand."""
    import torch

    from kvcompress.methods.press_chain import kv_bytes_per_token

    if lm.device.type != "cuda":
        return CPU_ANSWER_BATCH
    free, _ = torch.cuda.mem_get_info(lm.device)
    kept = sum(1.0 - (m.compression_ratio or 0.0) for m in methods if m.joins_shared_prefill) or 1.0
    per_sample = kept * tokens * kv_bytes_per_token(lm.model)
    return max(1, min(256, int(MEMORY_SHARE * free / per_sample)))


def budget_of(needle, settings: GenerationSettings) -> int:
    """The task's own output budget (RULER's tokens_to_generate, where the task says it), else --max-new-tokens."""
    if isinstance(needle, contract.TaskContext):
        own = getattr(needle, "tokens_to_generate", None) or getattr(needle.questions[0], "tokens_to_generate", None)
        if own:
            return int(own)
    return settings.max_new_tokens


def chunks(samples: list[Sample], size, claim=lambda sample: True):
    """Samples of one context length and budget, `size(first sample)` at a time, in the order the grid gives them.
    Under torchrun each rank keeps only the samples it `claim`s (ranks.Ranks.claim: each sample to one rank), claimed
    lazily, as its next chunk is filled, so a faster rank takes more; a plain run claims every one."""
    groups: dict[tuple, list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.cell.target_tokens, s.budget), []).append(s)
    for group in groups.values():
        chunk: list[Sample] = []
        for s in group:
            if claim(s):
                chunk.append(s)
            if len(chunk) == size(group[0]):
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _answer_chunk(cfg, lm, methods, chunk: list[Sample], task, out, annotate, state: Progress, decoders) -> None:
    settings = cfg.settings
    probes = {}  # (sample index, method name) -> the record's skeleton, for those still to answer
    for i, s in enumerate(chunk):
        for m in methods:
            sized = m.for_context(s.prompt.context_tokens, lm.model, s.cell.target_tokens)
            probe = skeleton(lm.name, lm.weights, sized, s.cell, s.needle, task, decoders, s.prompt, settings)
            probe.run_mode, probe.max_new_tokens = "quality", s.budget  # the budget it answers with
            if probe.identity() in state.finished:
                state.count(1, 0)
                continue
            probes[i, m.name] = (sized, probe)
    if not probes:
        return
    shared_ok = not settings.query_aware
    compressed = {}
    for i, s in enumerate(chunk):
        joiners = [sized for (j, _), (sized, _) in probes.items()
                   if j == i and shared_ok and sized.joins_shared_prefill and sized.problem(lm) is None]
        if not joiners:
            continue
        try:
            before = state.phases.get("shared prefill", 0.0)
            with state.phase("shared prefill", lm.device):
                shared = prefill_shared(lm, joiners, s.prompt.context_ids)
            # the phase's own clock (drained at both ends), not one beside it that also waited for earlier work
            state.prefilled(s.cell.target_tokens, s.prompt.context_ids.shape[1],
                            state.phases["shared prefill"] - before)
            for name, c in shared.items():
                compressed[i, name] = c
        except Exception as exc:  # noqa: BLE001 - the sample's shared prefill failed: every joiner's record says so
            line = failure_line(exc)
            for m in joiners:
                compressed[i, m.name] = _Failed(line)
            free_memory()
    rows_of = {m.name: [i for i in range(len(chunk)) if (i, m.name) in probes] for m in methods}
    sized = {m.name: probes[rows[0], m.name][0] for m in methods for rows in [rows_of[m.name]] if rows}
    for group in decode_groups([m for m in methods if rows_of[m.name]], rows_of, compressed, lm, decoders, sized):
        with state.phase("answers", lm.device):
            answers = (_answers_together(lm, group, rows_of, chunk, compressed, settings, decoders,
                                         state.answer_clock(lm.device)) if len(group) > 1 else {})
            for m in group:
                _answer_method(lm, m, chunk, rows_of[m.name], probes, compressed, settings, task, out, annotate,
                               state, decoders, answers.get(m.name))


def decode_groups(methods: list[Method], rows_of: dict, compressed: dict, lm, decoders, sized: dict
                  ) -> list[list[Method]]:
    """The methods of a chunk in the order they answer, those decoded as one batch together in one list. On the fast
    engine (its buffers pad each layer on its own, its step reads the weights once for every row) the methods whose
    answers come from the shared prefill's caches are decoded together when they keep about the same length: sorted
    by their longest layer, a method joins the group whose first method is at most 1/PAD_SHARE as long (the pads a
    row gets are then at most 1 - PAD_SHARE of the layer), and fp8 caches only with fp8 caches. Every other method
    answers on its own, as before. `sized`: {method name: the method as sized for the chunk's context}; a method
    has shared-prefill caches in `compressed` only where it joined the prefill without a problem."""
    alone, shared = [], []
    for m in methods:
        rows = rows_of[m.name]
        decoder, _ = pick_decoder(decoders, sized[m.name], lm)
        ready = decoder.name == "fast" and all((i, m.name) in compressed for i in rows)
        caches = [compressed[i, m.name].cache for i in rows] if ready else []
        if ready and all(c is not None for c in caches):
            longest = max(max(layer.get_seq_length() for layer in c.layers) for c in caches)
            shared.append((type(caches[0]).__name__, repr(getattr(caches[0], "spec", None)), longest, m))
        else:
            alone.append([m])
    groups: list[list] = []
    for kind, spec, longest, m in sorted(shared, key=lambda x: (x[0], x[1], -x[2])):
        first = groups[-1][0] if groups else None
        if first and first[:2] == (kind, spec) and longest >= PAD_SHARE * first[2]:
            groups[-1].append((kind, spec, longest, m))
        else:
            groups.append([(kind, spec, longest, m)])
    order = {m.name: n for n, m in enumerate(methods)}  # answers in the grid's method order, as far as it goes
    together = [[entry[3] for entry in g] for g in groups]
    return sorted(together + alone, key=lambda g: min(order[m.name] for m in g))


def _answers_together(lm, group, rows_of, chunk, compressed, settings, decoders, clock) -> dict:
    """{method name: {row: answer}} for methods decoded as one batch (decode_groups): one admission and one
    decode for every (sample, method) row whose cache is ready; a failing batch is each row's error."""
    decoder, _ = pick_decoder(decoders, group[0], lm)  # fast: decode_groups groups no other
    pairs = [(m, i) for m in group for i in rows_of[m.name]]
    answers: dict = {m.name: {} for m in group}
    ready = []
    for m, i in pairs:
        c = compressed[i, m.name]
        if c.error is None:
            ready.append((m, i))
        else:
            answers[m.name][i] = c.error
    if ready:
        try:
            got = answer_compressed(lm, [compressed[i, m.name] for m, i in ready], [chunk[i].prompt for _, i in ready],
                                    [chunk[i].budget for _, i in ready], settings, decoder, clock)
        except Exception as exc:  # noqa: BLE001 - one failing batch must not end the run
            got = [failure_line(exc)] * len(ready)
            free_memory()
        for (m, i), answer in zip(ready, got):
            answers[m.name][i] = answer
    return answers


@dataclass
class _Failed:
    error: str
    cache: None = None


def _answer_method(lm, method, chunk, rows, probes, compressed, settings, task, out, annotate, state, decoders,
                   given: dict | None = None):
    """One method's answers to the chunk's `rows` (`given`: already answered with other methods, _answers_together),
    recorded and printed."""
    sized_of = {i: probes[i, method.name][0] for i in rows}
    decoder, engine_note = pick_decoder(decoders, sized_of[rows[0]], lm)
    answers: dict[int, QualityAnswer | str] = {}
    reason = sized_of[rows[0]].problem(lm)
    if given is not None:
        answers = given
    elif reason:
        answers = {i: reason for i in rows}
    elif all((i, method.name) in compressed for i in rows):
        ready = [i for i in rows if compressed[i, method.name].error is None]
        answers.update({i: compressed[i, method.name].error for i in rows if i not in ready})
        # the hf engine pads a batch with one attention mask for every layer and stacks quantized caches only of one
        # length: a press whose layers keep different lengths, or a quantized cache, answers one sample at a time
        # there (the fast engine pads each layer on its own)
        one_by_one = decoder.name != "fast" and (method.expected_memory == "uneven" or any(
            getattr(compressed[i, method.name].cache, "spec", None) is not None for i in ready))
        groups = [[i] for i in ready] if one_by_one else [ready]
        for group in (g for g in groups if g):
            try:
                got = answer_compressed(lm, [compressed[i, method.name] for i in group],
                                        [chunk[i].prompt for i in group], [chunk[i].budget for i in group],
                                        settings, decoder, state.answer_clock(lm.device))
                answers.update(zip(group, got))
            except Exception as exc:  # noqa: BLE001 - one failing press must not end the run
                line = failure_line(exc)
                answers.update({i: line for i in group})
                free_memory()
    else:
        for i in rows:
            try:
                sized_of[i] = sized_of[i].prepare(lm, chunk[i].prompt)  # DMS: calibrated on this prompt
                answers[i] = answer_alone(lm, sized_of[i], chunk[i].prompt, chunk[i].budget, settings, decoder)
            except Exception as exc:  # noqa: BLE001
                answers[i] = failure_line(exc)
                free_memory()
    clear_masks(lm.model)
    with state.phase("answers: records", lm.device):  # records, grading, the file's writes
        mine = []
        for i in rows:
            compressed.pop((i, method.name), None)  # whatever a failed batch left
            record = _record(lm, sized_of[i], probes[i, method.name][1], chunk[i], answers[i], settings, task, decoder,
                             engine_note)
            record.process = "main"
            if annotate:
                annotate(record, method)
            if state.stamp:
                state.stamp(record)
            mine.append(record)
        due = state.save_due()
        if due:
            out.run["quality"] = state.summary()
        start = time.monotonic()
        out.add_all(mine, write=due)
        if due:
            state.save_seconds = time.monotonic() - start
    state.count(len(mine), sum(r.error is None for r in mine))
    scores = [r.score for r in mine if r.score is not None]
    errors = [r.error for r in mine if r.error]
    where = escape(f"{method.name} @ {context_label(mine[0])} tok")
    said = (f"{len(rows) - len(errors)} answers (decoded {max((r.answer_batch or 1) for r in mine)} together)"
            + (f", mean score {sum(scores) / len(scores):.2f}" if scores else "")
            + (f", [red]{len(errors)} error(s)[/red] {escape(errors[0])}" if errors else ""))
    shown = state.run_done if state.ranks is not None and state.ranks.distributed else state.done
    console.print(f"[{shown}/{state.total}] {where}: {said} — {state.line()}")


def _record(lm, method, blank, sample: Sample, answer, settings, task, decoder, engine_note):
    if isinstance(answer, str):  # why it could not answer
        blank.error = answer
        return blank
    eos = eos_ids(lm)
    answer_ids = [t for t in answer.token_ids if t not in eos]  # cut() ends a row at its first end-of-sequence
    record = record_for(
        lm.name, lm.weights, method, settings, task=task, engine=decoder.name, target_tokens=sample.cell.target_tokens,
        prompt=sample.prompt, **model_fields(lm, method, settings), **kv_fields(answer.kv_after),
        output_tokens=len(answer.token_ids), max_new_tokens=sample.budget, repeats=1,
        answer=lm.tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
        protocol="query_aware" if settings.query_aware else (
            "single_prefill" if method.single_prefill else "query_agnostic"),
        answer_tokens=len(answer_ids), timing=None, run_mode="quality", answer_batch=answer.decoded_with,
        shared_prefill=method.joins_shared_prefill and not settings.query_aware, engine_note=engine_note)
    method.record_fields(record, decoder)
    record.depth, record.prompt_id, record.kv_budget = blank.depth, blank.prompt_id, method.budget_label
    grade(record, sample.needle, sample.prompt, sample.cell)
    return record


def device_memory() -> dict:
    """The run's device memory so far (the run header's `quality` block): the allocator's peak and the card's
    total, which MEMORY_SHARE is tuned against. Empty on a CPU."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"device_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "device_total_gib": round(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
                                      / 2**30, 2)}


def _drain(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _duration(seconds: float) -> str:
    if seconds != seconds:  # nan: no answer yet
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
