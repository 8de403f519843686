"""Compare two result files: match records by identity and judge every change against the runs' own spread.

A timing change is noise when it is no larger than the two runs' combined spread (IQR_A + IQR_B of the timed
repeats) or than --threshold % of A; KV bytes are deterministic, so any change in them is real. Whatever makes the
two runs unfair to compare (GPU, versions, dtype, ...) is collected from the run headers and printed first.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kvcompress import cli
from kvcompress.errors import UserError
from kvcompress.report import make_console
from kvcompress.results import IDENTITY_FIELDS, BenchmarkResult, check_writable, load, write_json_atomic

REGRESSION, IMPROVEMENT, NOISE, UNCHANGED = "regression", "improvement", "noise", "unchanged"
CHANGED, NOT_COMPARABLE, NOT_MEASURED, FAILED_BOTH = "changed", "not comparable", "n/a", "failed in both"
CPU_ONLY = "cpu: not judged"  # wall-clock timings and process RSS of a CPU run are pipeline checks, not performance
VERDICT_STYLE = {REGRESSION: "bold red", IMPROVEMENT: "bold green", NOISE: "dim", UNCHANGED: "dim",
                 CHANGED: "yellow", NOT_COMPARABLE: "yellow", NOT_MEASURED: "dim", FAILED_BOTH: "red", CPU_ONLY: "dim"}


@dataclass(frozen=True)
class Metric:
    field: str
    label: str
    unit: str  # "s" | "tok/s" | "bytes" | "tok"
    better: str | None  # "lower" | "higher" | None: a change is reported, never judged
    kind: str  # "timing": spread from the repeats | "peak": no spread, --threshold only | "exact": any change is real


METRICS = (
    Metric("ttft_s", "TTFT", "s", "lower", "timing"),
    Metric("decode_tokens_per_s", "decode", "tok/s", "higher", "timing"),
    Metric("peak_mem_prefill_bytes", "peak prefill", "bytes", "lower", "peak"),
    Metric("peak_mem_decode_bytes", "peak decode", "bytes", "lower", "peak"),
    Metric("kv_cache_bytes", "KV after prefill", "bytes", "lower", "exact"),
    Metric("kv_cache_bytes_end", "KV at end", "bytes", "lower", "exact"),
    Metric("kv_tokens_kept", "KV kept", "tok", None, "exact"),
)

# Header fields whose difference makes timings, memory or answers incomparable ("a.b" reads run["a"]["b"]).
HEADER_FIELDS = ("gpu", "gpu_driver", "cuda", "device", "torch", "transformers", "kvpress", "python", "dtype",
                 "attn_implementation", "engine", "model", "weights", "tokenizer", "sampling", "seed", "repeats",
                 "preset", "arguments.haystack", "arguments.query_aware")
PROMPT_FIELDS = ("depth", "needle", "prompt_id")  # records of one cell (method x context) differ only in these
CELL_FIELDS = tuple(f for f in IDENTITY_FIELDS if f not in PROMPT_FIELDS)

HELP = """\
Metrics compared, per matched record (A -> B, change in % of A):
  TTFT (s)               lower is better; noise band from the timed repeats.
  decode (tok/s)         higher is better; = 1000 / TPOT, so TPOT is not listed again (nor prefill tok/s =
                         input tokens / TTFT: the same measurement as TTFT).
  peak prefill / decode  lower is better; no spread is recorded (GPU allocator peaks repeat exactly within a run;
                         CPU peak RSS is process-wide), so only --threshold absorbs a change.
  KV after prefill / at end (bytes)  lower is better; summed over the cache tensors, deterministic: any change is
                         real and --threshold does not apply.
  KV kept (tok)          reported as "changed", never judged: fewer kept tokens is not better by itself.
  status                 a record that fails in B but not in A is a regression; the reverse an improvement.
  needle found           per cell (method x context, over its depths and needles), as counts over the prompts both
                         runs answered, e.g. 2/3 -> 1/3 (1 lost, 0 gained); higher is better. Skipped for random
                         weights (their answers are noise).
Verdicts:
  noise                  |B - A| <= IQR_A + IQR_B (each run's spread over its repeats), or <= --threshold % of A.
                         Repeats inside one run share a warm process, so their spread understates run-to-run
                         variation; the threshold covers that. Needle counts: net change <= --threshold
                         percentage points of the prompts compared (seeded, prompt for prompt: a flip is real).
  regression / improvement  beyond noise, in the metric's bad / good direction.
  unchanged              identical.  changed: a real change with no better direction.
  not comparable         measured differently (CUDA events vs wall clock, allocator peak vs RSS).
Records match by identity: task, model, weights, method, context (target tokens), depth, needle, prompt id,
engine (unless --across-engines), output length, batch (sequences decoded together; records written before
batches existed are batch 1). In a batch, decode tok/s is per sequence (aggregate = batch x decode), TTFT the
sequences' median, KV bytes and peaks the whole batch's. Header differences (GPU, driver, CUDA, versions, dtype,
attention, engine, weights, sampling, ...) are printed first, as warnings.
Exit status: 0; 1 with --fail-on-regression when anything regressed or no cell matched; 2 for bad input (missing, truncated,
corrupt or other-schema files).
"""


@dataclass
class Side:
    path: Path
    run: dict
    results: list[BenchmarkResult]


@dataclass
class Row:
    metric: str  # a METRICS field, "status" or "needle_found"
    label: str
    unit: str
    a: float | str | None
    b: float | str | None
    verdict: str
    change_pct: float | None = None
    spread: float | None = None  # timings: IQR_A + IQR_B, in the metric's unit
    band: float | None = None  # a change within +-band is noise: max(spread, threshold); None: exact
    detail: str = ""
    prompt: str = ""  # which record of the cell (depth, needle, prompt id), when the cell has several


@dataclass
class CellComparison:
    cell: dict
    name: str  # "knorm@0.5 @ 512 tok"
    title: str  # the name with the rest of the cell's identity
    records: int
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    a: Side
    b: Side
    threshold: float
    header_differences: list[dict]
    cells: list[CellComparison]
    only_in_a: list[BenchmarkResult]
    only_in_b: list[BenchmarkResult]
    unmatched_because: list[str] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        random = [c.name for c in self.cells if c.cell["weights"] == "random"]
        return [f"weights random in {len(random)} cell(s): their answers are noise, needle counts not compared"
                ] if random else []

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cell in self.cells:
            for row in cell.rows:
                counts[row.verdict] = counts.get(row.verdict, 0) + 1
        return counts

    def regressions(self) -> list[tuple[CellComparison, Row]]:
        return [(c, r) for c in self.cells for r in c.rows if r.verdict == REGRESSION]

    def to_dict(self) -> dict:
        return {
            "kind": "kvcompress.compare",
            "a": _side_summary(self.a), "b": _side_summary(self.b),
            "threshold_pct": self.threshold,
            "metrics": [asdict(m) for m in METRICS],
            "header_differences": self.header_differences,
            "cells": [{"cell": c.cell, "title": c.title, "records": c.records, "notes": c.notes,
                       "rows": [asdict(r) for r in c.rows]} for c in self.cells],
            "only_in_a": [_identity_dict(r) for r in self.only_in_a],
            "only_in_b": [_identity_dict(r) for r in self.only_in_b],
            "unmatched_because": self.unmatched_because,
            "notes": self.notes,
            "summary": self.counts(),
            "regressed": bool(self.regressions()),
        }


# --- reading -------------------------------------------------------------------------------------------------------

def read_side(path: Path) -> Side:
    """Load a result file and check the fields compare reads, so a corrupt value is one line, not a traceback."""
    run, results = load(path)
    for i, r in enumerate(results):
        _check_record(Path(path), i, r)
    return Side(Path(path), run, results)


def _check_record(path: Path, i: int, r: BenchmarkResult) -> None:
    def refuse(name, value, what):
        raise UserError(f"{path}: record {i} ({r.method!r}): {name} is {value!r}, not {what}")

    for name in IDENTITY_FIELDS + ("error", "timing", "memory_source", "press"):
        value = getattr(r, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            refuse(name, value, "a string or a number")
    numbers = [m.field for m in METRICS] + ["ttft_iqr_s", "tpot_ms", "tpot_iqr_ms", "input_tokens", "output_tokens"]
    for name in numbers:
        value = getattr(r, name)
        if value is not None and not _is_number(value):
            refuse(name, value, "a finite number")
    for name in ("ttft_samples_s", "tpot_samples_ms"):
        value = getattr(r, name)
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            refuse(name, value, "a list of numbers")
    if r.correct is not None and not isinstance(r.correct, bool):
        refuse("correct", r.correct, "true, false or null")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- comparing -----------------------------------------------------------------------------------------------------

def compare_files(path_a: Path, path_b: Path, threshold: float = 5.0, *, across_engines: bool = False) -> Comparison:
    return compare(read_side(path_a), read_side(path_b), threshold, across_engines=across_engines)


def compare(a: Side, b: Side, threshold: float = 5.0, *, across_engines: bool = False) -> Comparison:
    """across_engines: match records whatever their decode engine (the same cells run with --engine hf and fast)."""
    index_a, index_b = _index(a, across_engines), _index(b, across_engines)
    cells: dict[tuple, list[tuple[BenchmarkResult, BenchmarkResult]]] = {}
    for key, ra in index_a.items():
        if key in index_b:
            cells.setdefault(_cell_key(ra), []).append((ra, index_b[key]))
    only_a = [r for k, r in index_a.items() if k not in index_b]
    only_b = [r for k, r in index_b.items() if k not in index_a]
    return Comparison(a, b, threshold, header_differences(a.run, b.run),
                      [compare_cell(pairs, threshold) for pairs in cells.values()], only_a, only_b,
                      _why_nothing_matched(a, b, across_engines) if a.results and b.results and not cells else [])


def header_differences(run_a: dict, run_b: dict) -> list[dict]:
    diffs = []
    for name in HEADER_FIELDS:
        va, vb = _header_value(run_a, name), _header_value(run_b, name)
        if va != vb:
            diffs.append({"field": name, "a": va, "b": vb})
    return diffs


def compare_cell(pairs: list[tuple[BenchmarkResult, BenchmarkResult]], threshold: float) -> CellComparison:
    first = pairs[0][0]
    several = len(pairs) > 1
    rows, notes = [], []
    for ra, rb in pairs:
        prompt = _prompt_label(ra) if several else ""
        for row in compare_records(ra, rb, threshold):
            row.prompt = prompt
            rows.append(row)
        notes += [f"{prompt + ': ' if prompt else ''}{note}" for note in _pair_notes(ra, rb)]
    accuracy = needle_counts(pairs, threshold)
    if accuracy is not None:
        rows.append(accuracy)
    cell = {name: getattr(first, name) for name in CELL_FIELDS}
    return CellComparison(cell, _cell_name(first), _cell_title(first), len(pairs), rows, notes)


def compare_records(ra: BenchmarkResult, rb: BenchmarkResult, threshold: float) -> list[Row]:
    """One row per metric; a record that failed on either side gets one status row instead."""
    if ra.error or rb.error:
        if ra.error and rb.error:
            detail = rb.error if ra.error == rb.error else f"A: {ra.error} | B: {rb.error}"
            return [Row("status", "status", "", "error", "error", FAILED_BOTH, detail=detail)]
        if rb.error:
            return [Row("status", "status", "", "ok", "error", REGRESSION, detail=f"B failed: {rb.error}")]
        return [Row("status", "status", "", "error", "ok", IMPROVEMENT, detail=f"A failed: {ra.error}")]
    return [compare_metric(m, ra, rb, threshold) for m in METRICS]


def compare_metric(m: Metric, ra: BenchmarkResult, rb: BenchmarkResult, threshold: float) -> Row:
    a, b = getattr(ra, m.field), getattr(rb, m.field)
    row = Row(m.field, m.label, m.unit, a, b, NOT_MEASURED)
    if a is None or b is None:
        row.detail = "not measured in " + ("A and B" if a is None and b is None else "A" if a is None else "B")
        return row
    source = {"timing": "timing", "peak": "memory_source"}.get(m.kind)
    if source and getattr(ra, source) != getattr(rb, source):
        row.verdict, row.detail = NOT_COMPARABLE, f"{getattr(ra, source)} vs {getattr(rb, source)}"
        return row
    if a == b or math.isclose(a, b, rel_tol=1e-12):
        row.verdict, row.change_pct = UNCHANGED, 0.0
        return row
    row.change_pct = 100.0 * (b - a) / abs(a) if a else None
    if source and getattr(ra, source) in ("wall_clock", "process_peak_rss"):  # a CPU run's figures
        row.verdict = CPU_ONLY
        return row
    if m.kind != "exact":
        spread = 0.0
        if m.kind == "timing":
            spread_a, spread_b = timing_spread(ra, m.field), timing_spread(rb, m.field)
            spread = (spread_a or 0.0) + (spread_b or 0.0)
            if spread_a is None or spread_b is None:
                row.detail = "one repeat: no spread, --threshold only"
            row.spread = spread
        row.band = max(spread, threshold / 100.0 * abs(a))
    if row.band is not None and abs(b - a) <= row.band:
        row.verdict = NOISE
    elif m.better is None:
        row.verdict = CHANGED
    else:
        worse = b > a if m.better == "lower" else b < a
        row.verdict = REGRESSION if worse else IMPROVEMENT
    return row


def timing_spread(r: BenchmarkResult, metric: str) -> float | None:
    """IQR of a timing metric over the record's repeats, in the metric's own unit; None with fewer than 2 repeats."""
    if metric == "ttft_s":
        samples, recorded = r.ttft_samples_s, r.ttft_iqr_s
    else:  # decode tok/s: the repeats' TPOTs as tok/s; without samples, the TPOT IQR scaled by d(1000/t) = tok/s / t
        samples = [1000.0 / t for t in r.tpot_samples_ms if t > 0]
        recorded = (r.tpot_iqr_ms * r.decode_tokens_per_s / r.tpot_ms
                    if r.tpot_iqr_ms is not None and r.tpot_ms and r.decode_tokens_per_s else None)
    if len(samples) >= 2:
        q75, q25 = np.percentile(samples, [75, 25])
        return float(q75 - q25)
    return recorded


def needle_counts(pairs: list[tuple[BenchmarkResult, BenchmarkResult]], threshold: float) -> Row | None:
    """Needles found in A and in B over the prompts both answered, with the flips in each direction."""
    answered = [(ra, rb) for ra, rb in pairs if ra.correct is not None and rb.correct is not None
                and not ra.error and not rb.error and ra.weights != "random"]
    if not answered:
        return None
    n = len(answered)
    found_a, found_b = sum(ra.correct for ra, _ in answered), sum(rb.correct for _, rb in answered)
    lost = sum(ra.correct and not rb.correct for ra, rb in answered)
    gained = sum(rb.correct and not ra.correct for ra, rb in answered)
    net = found_b - found_a
    row = Row("needle_found", "needle found", "count", f"{found_a}/{n}", f"{found_b}/{n}", UNCHANGED,
              detail=f"{net:+d} ({lost} lost, {gained} gained)", band=threshold / 100.0 * n)
    if lost or gained:
        row.verdict = NOISE if abs(net) <= row.band else (REGRESSION if net < 0 else IMPROVEMENT)
    return row


def _pair_notes(ra: BenchmarkResult, rb: BenchmarkResult) -> list[str]:
    """Differences inside a matched pair that make it a different experiment, not a different result."""
    notes = []
    if ra.input_tokens != rb.input_tokens:
        notes.append(f"prompts differ: {ra.input_tokens} vs {rb.input_tokens} input tokens")
    if ra.output_tokens != rb.output_tokens and not (ra.error or rb.error):
        notes.append(f"outputs differ: {ra.output_tokens} vs {rb.output_tokens} tokens generated")
    if ra.press != rb.press and ra.press and rb.press:
        notes.append(f"press built differently: {ra.press} vs {rb.press}")
    return notes


def _index(side: Side, across_engines: bool) -> dict[tuple, BenchmarkResult]:
    index: dict[tuple, BenchmarkResult] = {}
    for r in side.results:
        key = r.identity(across_engines=across_engines)
        if key in index:
            raise UserError(f"{side.path}: two records share one identity ({describe(r)}): cannot tell which to "
                            "compare")
        index[key] = r
    return index


def _cell_key(r: BenchmarkResult) -> tuple:
    return tuple(getattr(r, name) for name in CELL_FIELDS)


def _why_nothing_matched(a: Side, b: Side, across_engines: bool) -> list[str]:
    """The identity fields whose values the two files never share: why no record matched."""
    reasons = []
    for name in IDENTITY_FIELDS:
        if across_engines and name == "engine":
            continue
        values_a = {getattr(r, name) for r in a.results}
        values_b = {getattr(r, name) for r in b.results}
        if not values_a & values_b:
            reasons.append(f"{name}: {_listing(values_a)} vs {_listing(values_b)}")
    return reasons


def _header_value(run: dict, name: str):
    value = run
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# --- describing ----------------------------------------------------------------------------------------------------

def describe(r: BenchmarkResult) -> str:
    prompt = _prompt_label(r)
    return _cell_name(r) + (f", {prompt}" if prompt else "")


def _prompt_label(r: BenchmarkResult) -> str:
    parts = [f"depth {r.depth:g}" if isinstance(r.depth, (int, float)) else None, r.needle,
             f"prompt {r.prompt_id}" if r.prompt_id else None]
    return ", ".join(str(p) for p in parts if p)


def _cell_name(r: BenchmarkResult) -> str:
    batch = f", batch {r.batch}" if isinstance(r.batch, int) and r.batch > 1 else ""
    return f"{r.method} @ {r.target_tokens or r.input_tokens} tok{batch}"


def _cell_title(r: BenchmarkResult) -> str:
    budget = f", {r.max_new_tokens} new tokens" if r.max_new_tokens is not None else ""
    return f"{_cell_name(r)} — {r.task}, {r.model} ({r.weights}), {r.engine} engine{budget}"


def _identity_dict(r: BenchmarkResult) -> dict:
    return {name: getattr(r, name) for name in IDENTITY_FIELDS}


def _side_summary(side: Side) -> dict:
    return {"path": str(side.path), "time_utc": side.run.get("time_utc"), "git_commit": side.run.get("git_commit"),
            "host": side.run.get("host"), "records": len(side.results)}


def _listing(values: set) -> str:
    shown = sorted(map(str, values))
    return ", ".join(shown[:4]) + (f" (+{len(shown) - 4})" if len(shown) > 4 else "") if shown else "none"


def _format(value, unit: str, scale_from=None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if unit == "bytes":
        reference = abs(scale_from if isinstance(scale_from, (int, float)) else value)
        for name, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if reference >= size:
                return f"{value / size:,.2f} {name}"
        return f"{value:,.0f} B"
    if unit == "s":
        return f"{value:.4g} s"
    if unit == "tok/s":
        return f"{value:,.1f} tok/s"
    return f"{value:,.1f}"


def _format_pair(row: Row) -> tuple[str, str]:
    """A and B in one unit (A's); exact byte counts when the rounded figures would hide a real difference."""
    a, b = _format(row.a, row.unit, row.a), _format(row.b, row.unit, row.a)
    if a == b and row.a != row.b and row.unit == "bytes":
        a, b = f"{row.a:,} B", f"{row.b:,} B"
    return a, b


def _format_change(row: Row) -> str:
    if row.metric in ("status", "needle_found"):
        return row.detail
    if row.verdict == UNCHANGED:
        return "0 %"
    if row.change_pct is None:
        return row.detail or ("" if row.verdict == NOT_MEASURED else "from 0")
    pct = f"{row.change_pct:+.1f} %" if abs(row.change_pct) >= 0.05 or row.change_pct == 0 else f"{row.change_pct:+.2g} %"
    return pct + (f" ({row.detail})" if row.detail else "")


def _format_band(row: Row) -> str:
    if row.verdict in (NOT_MEASURED, NOT_COMPARABLE) or row.metric == "status":
        return ""
    if row.metric == "needle_found":
        return f"±{row.band:.2g} prompts"
    if row.band is None:
        return "exact"
    return "±" + _format(row.band, row.unit, row.a)


# --- printing ------------------------------------------------------------------------------------------------------

def print_comparison(c: Comparison, console: Console | None = None, *, changes_only: bool = False) -> None:
    console = console or make_console()
    for label, side in (("A", c.a), ("B", c.b)):
        run = side.run
        commit = run.get("git_commit") or "unknown"
        commit = commit[:12] + commit[40:] if len(commit) >= 40 else commit  # short hash, "+dirty" kept
        console.print(f"{label}: {side.path} — {len(side.results)} records, {run.get('time_utc') or 'time unknown'}, "
                      f"commit {commit}, host {run.get('host') or 'unknown'}")
    for diff in c.header_differences:
        console.print(f"[yellow]warning: {diff['field']} differs: {diff['a']!r} (A) vs {diff['b']!r} (B)[/yellow]")
    if c.header_differences:
        console.print("[yellow]warning: the runs differ in the above, so a change may come from them rather than "
                      "from the code under test[/yellow]")
    console.print(f"noise: a change within IQR_A + IQR_B of the repeats (timings) or within {c.threshold:g} % of A "
                  "(timings, peaks); KV bytes are exact")
    if c.counts().get(CPU_ONLY):
        console.print("[yellow]CPU runs: their timings and peaks (wall clock, process RSS) are pipeline checks, not "
                      "performance, so they are shown but never called regressions; KV bytes and answers are still "
                      "compared[/yellow]")
    for cell in c.cells:
        rows = [r for r in cell.rows if not changes_only or r.verdict not in (NOISE, UNCHANGED, NOT_MEASURED)]
        if rows:
            console.print(_cell_table(cell, rows))
        for note in cell.notes:
            console.print(f"  [yellow]note[/yellow] {cell.name}: {note}")
    for label, records in (("only in A (missing from B)", c.only_in_a), ("only in B (added)", c.only_in_b)):
        if records:
            console.print(f"[yellow]{label}:[/yellow] {len(records)} record(s)")
            for r in records:
                console.print(f"  {_cell_title(r).replace(_cell_name(r), describe(r), 1)}"
                              + (" [red](error)[/red]" if r.error else ""))
    if c.unmatched_because:
        console.print("[yellow]no record matched: the files never share[/yellow] " + "; ".join(c.unmatched_because))
    for note in c.notes:
        console.print(f"[yellow]note[/yellow] {note}")
    console.print(summary_line(c))
    for cell, row in c.regressions():
        a, b = _format_pair(row)
        console.print(f"  [red]regression[/red] {cell.name}"
                      f"{', ' + row.prompt if row.prompt else ''}: {row.label} {a} → {b} ({_format_change(row)})")


def summary_line(c: Comparison) -> str:
    counts = c.counts()
    records = sum(cell.records for cell in c.cells)
    order = (REGRESSION, IMPROVEMENT, CHANGED, NOISE, UNCHANGED, FAILED_BOTH, NOT_COMPARABLE, CPU_ONLY, NOT_MEASURED)
    parts = ", ".join(f"{v}: {counts[v]}" for v in order if counts.get(v))
    line = (f"{len(c.cells)} cell(s) matched ({records} record(s)): {parts or 'nothing to compare'}; "
            f"{len(c.only_in_a)} only in A, {len(c.only_in_b)} only in B")
    if c.cells and not any(counts.get(v) for v in (REGRESSION, IMPROVEMENT, CHANGED)):
        line += " — no change beyond noise"
    return line


def _cell_table(cell: CellComparison, rows: list[Row]) -> Table:
    table = Table(title=cell.title, title_justify="left", header_style="bold")
    several = any(r.prompt for r in rows)
    if several:
        table.add_column("prompt")
    for header, justify in (("metric", "left"), ("A", "right"), ("B", "right"), ("change", "right"),
                            ("noise band", "right"), ("verdict", "left")):
        table.add_column(header, justify=justify, overflow="fold", max_width=60 if header == "change" else None)
    for r in rows:
        a, b = _format_pair(r)
        style = VERDICT_STYLE.get(r.verdict, "")
        change = _format_change(r)  # words (an error, flips) read left to right; numbers align right
        change = Text(change, justify="left") if r.metric in ("status", "needle_found") else change
        cells = [r.label, a, b, change, _format_band(r), f"[{style}]{r.verdict}[/{style}]"]
        table.add_row(*([r.prompt] if several else []) + cells)
    return table


# --- command line --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="benchmark.py compare", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP,
        description="Compare two result files (before/after an upgrade, this GPU vs that one): match records by "
                    "identity, print each metric A -> B with its change, marked regression, improvement or noise.")
    p.add_argument("a", type=Path, metavar="A.json", help="the baseline result file")
    p.add_argument("b", type=Path, metavar="B.json", help="the result file judged against A")
    p.add_argument("--threshold", type=float, default=5.0, metavar="PCT",
                   help="changes within PCT %% of A are noise, whatever the spread (default 5; KV bytes: never)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 when any metric regresses beyond noise (for CI)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the comparison as JSON")
    p.add_argument("--across-engines", action="store_true",
                   help="match records whatever their decode engine: the same cells run with --engine hf (A) and "
                        "--engine fast (B) show what the engine changes (TTFT and KV should not move; decode speed "
                        "and the decode-phase peak do)")
    p.add_argument("--changes-only", action="store_true",
                   help="hide rows that are noise, unchanged or not measured (tables stay complete in --json)")
    return p


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.threshold) or args.threshold < 0:
        raise UserError(f"--threshold must be a percentage >= 0, not {args.threshold:g}")
    if args.json is not None:
        if args.json.resolve() in (args.a.resolve(), args.b.resolve()):
            raise UserError(f"--json {args.json} would overwrite an input file")
        check_writable(args.json)
    comparison = compare_files(args.a, args.b, args.threshold, across_engines=args.across_engines)
    console = make_console()
    print_comparison(comparison, console, changes_only=args.changes_only)
    if args.json is not None:
        write_json_atomic(args.json, comparison.to_dict())
        console.print(f"wrote {args.json}")
    if args.fail_on_regression and not comparison.cells:  # a gate that compared nothing must not pass
        console.print(f"[red]--fail-on-regression: no cell of {args.b} matches one of {args.a} (B is empty or from "
                      f"another run): nothing was compared[/red]")
        return 1
    return 1 if args.fail_on_regression and comparison.regressions() else 0
