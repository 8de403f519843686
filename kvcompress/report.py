"""Tables (rich) for people; the JSON file is for machines."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvcompress.readings import answer_length_change, by_method, group_of
from kvcompress.results import BenchmarkResult, median_kv_bytes

GIB, MIB = 2**30, 2**20


def _num(value, fmt: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value / scale, fmt)


def held_live(held, live, fmt: str = ",.1f", scale: float = MIB) -> str:
    """KV bytes held by the cache tensors, and the live bytes attention still sees where they differ ("0.2 / 0.1"):
    a cache that masks (the hf engine's DMS, mask-only presses) or reserves rows holds more than it uses."""
    if held is None:
        return "—"
    if live is None or live == held:
        return _num(held, fmt, scale)
    return f"{_num(held, fmt, scale)} / {_num(live, fmt, scale)}"


def context_label(r: BenchmarkResult) -> str:
    """The prompt length asked for, with the measured one beside it when they differ ("512 (511 measured)"): every
    row, progress line and error names a cell by the same target."""
    target, measured = r.target_tokens, r.input_tokens
    if target and measured and measured != target:
        return f"{target} ({measured} measured)"
    return str(target or measured or "")


def make_console() -> Console:
    """Wide enough for the tables even when the output goes to a file or a CI log (rich assumes 80 columns)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console


def results_table(results: list[BenchmarkResult], title: str, answers: bool = False) -> Table:
    """One row per method x context (x batch), units in the headers; batch columns only when a record is batched."""
    batched = any(r.batch > 1 for r in results)
    table = Table(title=title, title_justify="left", header_style="bold")
    headers = [("method", "left"), ("context\n(tok)", "right")] + ([("batch", "right")] if batched else []) + [
        ("TTFT\n(s)", "right"), ("prefill\n(tok/s)", "right"), ("TPOT\n(ms)", "right"), ("decode\n(tok/s)", "right")]
    headers += [("aggregate\n(tok/s)", "right")] if batched else []
    headers += [("peak prefill\n(GiB)", "right"), ("peak decode\n(GiB)", "right"), ("KV held\n/ live (MiB)", "right"),
                ("KV kept\n(tok)", "right"), ("evicted\n(frac)", "right"), ("mem\nsaved", "center"),
                ("engine", "left")]
    for header, justify in headers:
        table.add_column(header, justify=justify)
    if answers:
        table.add_column("answer / error", overflow="fold", max_width=40)
    for r in results:
        row = [escape(r.method), context_label(r)] + ([str(r.batch)] if batched else [])
        if r.error:
            row += ["—"] * (len(headers) - len(row) - 1) + [r.engine or ""]
            if answers:
                row.append(f"[red]{r.error}[/red]")
        else:
            row += [_num(r.ttft_s, ".3f"), _num(r.prefill_tokens_per_s, ",.0f"), _num(r.tpot_ms, ".2f"),
                    _num(r.decode_tokens_per_s, ".1f")]
            row += [_num(r.aggregate_decode_tokens_per_s, ",.0f")] if batched else []
            row += [_num(r.peak_mem_prefill_bytes, ".2f", GIB),
                    _num(r.peak_mem_decode_bytes, ".2f", GIB), held_live(r.kv_cache_bytes, r.kv_live_bytes),
                    _num(r.kv_tokens_kept, ",.0f"), _num(r.kv_compression_achieved, ".3f"),
                    _saved(r), r.engine or ""]
            if answers:
                answer = (r.answer or "").replace("\n", " ")[:80]
                mark = "" if r.correct is None else ("[green]✓[/green] " if r.correct else "[red]✗[/red] ")
                row.append(mark + answer)
        table.add_row(*row)
    return table


def _saved(r: BenchmarkResult) -> str:
    if r.method == "vanilla":
        return "n/a"
    return "yes" if r.kv_memory_saved else "[yellow]no[/yellow]"


RESULTS_LEGEND = (
    "TTFT: prefill start -> first token, compression included; prefill = input tokens / TTFT; TPOT: one decode step "
    "per sequence; decode = 1000 / TPOT (aggregate: x batch).",
    "peak prefill / decode: the allocator's peak in each phase (process RSS on CPU), weights included.",
    "KV held / live: bytes the cache tensors hold after the context / those attention still sees (shown where "
    "fewer); kept: live tokens per layer; evicted: 1 - kept / context tokens; mem saved: held < vanilla's bytes.",
)


def print_legend(lines, console: Console) -> None:
    for line in lines:
        console.print(f"[dim]{escape(line)}[/dim]")


def print_results(results: list[BenchmarkResult], title: str, console: Console | None = None, *,
                  weights_note: bool = True) -> None:
    console = console or make_console()
    console.print(results_table(results, title))
    print_legend(RESULTS_LEGEND, console)
    for r in results:
        if r.error:
            console.print(f"[red]error[/red] {escape(r.method)} @ {context_label(r)} tok: "
                          f"{escape(r.error)}")
    answered = [r for r in results if not r.error and r.answer is not None and r.weights != "random"]
    if answered:
        console.print("answers (first 100 characters):")
        for r in answered:
            mark = "" if r.correct is None else ("[green]found[/green] " if r.correct else "[red]missed[/red] ")
            answer = escape(repr((r.answer or "").replace(chr(10), " ")[:100]))
            console.print(f"  {escape(r.method)} @ {context_label(r)} tok: {mark}{answer}")
    if weights_note and any(r.weights == "random" for r in results):
        console.print("[yellow]weights: random — speed and memory are real; answers are noise.[/yellow]")
    if any(r.timing == "wall_clock" for r in results):
        console.print("[yellow]CPU wall-clock timings: a pipeline check, not a performance figure.[/yellow]")


# --- test_kvpress_api.py: the press x ratio grid and the registry -------------------------------------------------

_GRID_METRICS = ("achieved", "KV (MiB)", "KV end (MiB)", "TTFT (s)", "decode (tok/s)", "mem saved", "answer")


def press_grid_table(results: list[BenchmarkResult], ratios: list[float], title: str) -> Table:
    """Grouped by press, requested ratios as columns; a press that sizes itself fills the 'own' column.

    Rows per press: achieved ratio (1 - kept / positions; for decoding-phase presses at the end of decoding), KV bytes
    after compression and at the end, TTFT, decode tok/s, whether memory was saved, and the first characters of the
    answer. Errors show as 'error' and are listed under the table.
    """
    groups: dict[str, list[BenchmarkResult]] = {}
    for r in results:
        groups.setdefault(group_of(r), []).append(r)
    own = any(r.compression_ratio is None or r.method == "vanilla" for r in results)
    table = Table(title=title, title_justify="left", header_style="bold", show_lines=False)
    table.add_column("press", overflow="fold", max_width=34)
    table.add_column("metric")
    for ratio in ratios:
        table.add_column(f"{ratio:g}", justify="right")
    if own:
        table.add_column("own\nsettings", justify="right")
    for group, records in groups.items():
        by_column = {(None if r.compression_ratio is None or r.method == "vanilla" else r.compression_ratio): r
                     for r in records}
        columns = list(ratios) + ([None] if own else [])
        head = [escape(group), *_memory_lines(records)]
        if all(r.error for r in records):  # one row: the reasons are listed under the table
            table.add_row("\n".join(head), "not measured", *["[red]error[/red]" if by_column.get(c) else ""
                                                              for c in columns], end_section=True)
            continue
        decoding = records[0].phase == "decoding"
        for i, metric in enumerate(_GRID_METRICS):
            label = f"{metric} (end)" if decoding and metric in ("achieved", "mem saved") else metric
            cells = [_grid_cell(by_column.get(c), metric, decoding) for c in columns]
            table.add_row(head[i] if i < len(head) else "", label, *cells, end_section=i == len(_GRID_METRICS) - 1)
    return table


def _memory_lines(records: list[BenchmarkResult]) -> list[str]:
    if records[0].method == "vanilla":
        return ["[dim]reference[/dim]"]
    documented = records[0].expected_memory or "?"
    measured = sorted({r.kv_memory_measured for r in records if r.kv_memory_measured})
    if not measured:
        return [f"[dim]documented {documented}[/dim]"]
    style = "green" if measured == [documented] else "yellow"
    return [f"[dim]documented {documented}[/dim]", f"[{style}]measured {'/'.join(measured)}[/{style}]"]


def _grid_cell(r: BenchmarkResult | None, metric: str, decoding: bool) -> str:
    if r is None:
        return ""
    if r.error:
        return "[red]error[/red]" if metric == "achieved" else "—"
    if metric == "achieved":
        return _num(r.kv_compression_achieved_end if decoding else r.kv_compression_achieved, ".3f")
    if metric == "KV (MiB)":
        return _num(r.kv_cache_bytes, ",.2f", MIB)
    if metric == "KV end (MiB)":
        return _num(r.kv_cache_bytes_end, ",.2f", MIB)
    if metric == "TTFT (s)":
        return _num(r.ttft_s, ".3f")
    if metric == "decode (tok/s)":
        return _num(r.decode_tokens_per_s, ",.1f")
    if metric == "mem saved":
        if r.method == "vanilla":
            return "n/a"
        saved = r.kv_memory_measured in ("real", "uneven") if decoding else r.kv_memory_saved
        if saved:
            return "yes"
        return "[yellow]no (mask)[/yellow]" if r.kv_memory_measured == "mask" else "[yellow]no[/yellow]"
    answer = (r.answer or "").replace("\n", " ")
    mark = "" if r.correct is None else ("[green]✓[/green] " if r.correct else "[red]✗[/red] ")  # needle found?
    return mark + escape(repr(answer[:10]))


def print_press_grid(results: list[BenchmarkResult], ratios: list[float], title: str,
                     console: Console | None = None) -> None:
    console = console or make_console()
    console.print(press_grid_table(results, ratios, title))
    errors: dict[tuple[str, str], list[str]] = {}
    for r in results:
        if r.error:
            where = "own" if r.compression_ratio is None else f"{r.compression_ratio:g}"
            errors.setdefault((group_of(r), r.error), []).append(where)
    if errors:
        console.print("not measured (one line each):")
        for (group, error), where in errors.items():
            console.print(f"  {escape(group)} @ {', '.join(where)}: [red]{escape(error)}[/red]")
    if any(r.timing == "wall_clock" for r in results):
        console.print("[yellow]CPU wall-clock timings: a pipeline check, not a performance figure.[/yellow]")
    if any(r.weights == "random" for r in results):
        console.print("[yellow]weights: random — bytes are real; answers are noise.[/yellow]")


def registry_table(rows: list[dict]) -> Table:
    """The kvpress registry (test_kvpress_api.py --list): one row per press; notes go under it (print_registry)."""
    table = Table(title="kvpress presses (kvcompress registry)", title_justify="left", header_style="bold")
    headers = [("name", "name"), ("class", "class"), ("role", "role"), ("phase", "phase"), ("memory", "memory"),
               ("@ratio", "ratio"), ("needs Hub", "hub"), ("attention", "attention")]
    for header, _ in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        cells = [escape(str(row[key])) for _, key in headers]
        if row["memory"] == "mask":
            cells[4] = f"[yellow]{cells[4]}[/yellow]"
        table.add_row(*cells)
    return table


def print_registry(rows: list[dict], console: Console | None = None) -> None:
    console = console or make_console()
    console.print(registry_table(rows))
    console.print("memory: real = tensors shrink; uneven = real, layers differ; mask = full-size tensors, entries "
                  "hidden (no memory saved); none = no size change.")
    console.print("@ratio: what name@ratio sets (scorer's = the wrapped scorer's compression_ratio; no = the press "
                  "sizes itself). attention: eager = needs --attn eager; no eager = refuses it.")
    console.print("notes:")
    for row in rows:
        if row["note"]:
            console.print(f"  {escape(row['name'])}: {escape(row['note'])}")


# --- test_dms_inference.py: methods side by side, one table per prompt --------------------------------------------

_SIDE_BY_SIDE = (
    ("input (tok)", lambda r: _num(r.input_tokens, ",.0f")),
    ("TTFT (s)", lambda r: _num(r.ttft_s, ".3f")),
    ("decode (tok/s)", lambda r: _num(r.decode_tokens_per_s, ",.1f")),
    ("peak prefill (GiB)", lambda r: _num(r.peak_mem_prefill_bytes, ".3f", GIB)),
    ("peak decode (GiB)", lambda r: _num(r.peak_mem_decode_bytes, ".3f", GIB)),
    ("KV held (MiB)", lambda r: _num(r.kv_cache_bytes, ",.2f", MIB)),
    ("KV live (MiB)", lambda r: _num(r.kv_live_bytes, ",.2f", MIB)),
    ("KV held, end (MiB)", lambda r: _num(r.kv_cache_bytes_end, ",.2f", MIB)),
    ("kept (tok/head)", lambda r: _num(r.kv_tokens_kept, ",.1f")),
    ("live ratio (x)", lambda r: _ratio(r.kv_cache_bytes_full, r.kv_live_bytes)),
    ("vanilla / held (x)", lambda r: _ratio(r.kv_cache_bytes_full, r.kv_cache_bytes)),
    ("mem saved", lambda r: _saved(r)),
    ("DMS", lambda r: "—" if not r.dms_impl else escape(
        "; ".join(filter(None, (r.dms_impl, r.dms_layout, r.dms_decisions))))),
)


SIDE_BY_SIDE_LEGEND = (
    "input: context + question, one prefill for every method (as DMS needs); TTFT, decode and peaks as in "
    "benchmark.py.",
    "KV held: bytes the cache tensors occupy (DMS remote: its block pool as allocated; hf: the masked cache); KV "
    "live: the entries attention reads; kept: live tokens per head.",
    "live ratio = positions / live entries (DMS's '8x'); vanilla / held = a vanilla cache's bytes for the same "
    "positions / bytes held (> 1: smaller than vanilla). DMS: implementation; cache layout; whose decisions.",
)


def _ratio(full, part) -> str:
    return "—" if not full or not part else f"{full / part:.2f}"


def side_by_side_tables(results: list[BenchmarkResult], title: str) -> list[Table]:
    """One table per prompt: metrics as rows, methods as columns, the answers (truncated) last.

    'KV held' is what the cache tensors occupy (for DMS its block pool, allocated), 'KV live' the entries attention
    reads; 'live ratio' = positions / live entries (DMS's "8x" convention) and 'vanilla / held' = bytes a vanilla
    cache holds for the same positions / bytes held, both from measured bytes (> 1: smaller than vanilla).
    """
    prompts: dict[str, list[BenchmarkResult]] = {}
    for r in results:
        prompts.setdefault(r.prompt_id or str(r.target_tokens), []).append(r)
    tables = []
    for prompt, records in prompts.items():
        table = Table(title=f"{title} — {prompt}", title_justify="left", header_style="bold")
        table.add_column("metric")
        for r in records:
            table.add_column(escape(r.method), justify="right", overflow="fold", max_width=60)
        for label, cell in _SIDE_BY_SIDE:
            table.add_row(label, *["—" if r.error else cell(r) for r in records])
        answers = []
        for r in records:
            text = f"[red]{escape(r.error)}[/red]" if r.error else escape((r.answer or "").replace("\n", " ")[:200])
            mark = "" if r.correct is None else ("[green]found[/green] " if r.correct else "[red]missed[/red] ")
            answers.append(mark + text)
        table.add_row("answer", *answers, end_section=True)
        tables.append(table)
    return tables


def print_side_by_side(results: list[BenchmarkResult], title: str, console: Console | None = None) -> None:
    console = console or make_console()
    for table in side_by_side_tables(results, title):
        console.print(table)
    print_legend(SIDE_BY_SIDE_LEGEND, console)
    if any(r.weights == "random" for r in results):
        console.print("[yellow]weights: random — speed and memory are real; answers are noise.[/yellow]")
    if any(r.timing == "wall_clock" for r in results):
        console.print("[yellow]CPU wall-clock timings and process RSS peaks: a pipeline check, not a performance "
                      "figure.[/yellow]")


def print_dms_agreement(results: list[BenchmarkResult], console: Console | None = None) -> None:
    """Native dms-8x against the checkpoint's remote code, per prompt: live entries per (layer, kv head) after
    prefill and at the end, and the answers. Says nothing when one of the two is missing or failed."""
    console = console or make_console()
    pairs: dict[str, dict[str, BenchmarkResult]] = {}
    for r in results:
        if r.dms_impl and r.error is None:
            pairs.setdefault(r.prompt_id or str(r.target_tokens), {})[r.dms_impl] = r
    for prompt, pair in pairs.items():
        native, remote = pair.get("native"), pair.get("remote")
        if native is None or remote is None:
            continue
        heads = [(a, b) for la, lb in zip(native.kv_tokens_per_head or [], remote.kv_tokens_per_head or [])
                 for a, b in zip(la, lb)]
        same = sum(a == b for a, b in heads)
        console.print(f"{escape(prompt)}: native vs remote DMS — live entries equal on {same}/{len(heads)} "
                      f"(layer, head) after prefill; at the end "
                      f"{'equal' if native.kv_tokens_per_head_end == remote.kv_tokens_per_head_end else 'different'}"
                      f"; answers {'identical' if native.answer == remote.answer else 'different'}")


# --- test_long_context.py: retrieval per (method, context, depth) cell ----------------------------------------------

def niah_table(summaries, title: str) -> Table:
    """One row per method x context x depth: found / trials, then the medians of the measured trials."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for header, justify in [("method", "left"), ("context\n(tok)", "right"), ("depth", "right"),
                            ("reached\n(median)", "right"), ("found", "right"), ("TTFT\n(s)", "right"),
                            ("decode\n(tok/s)", "right"), ("KV held\n/ live (MiB)", "right"), ("KV kept\n(tok)", "right"),
                            ("answer\n(tok)", "right"), ("an answer's end (a missed one first)", "left")]:
        table.add_column(header, justify=justify, overflow="fold", max_width=40 if header.startswith("an ") else None)
    for i, s in enumerate(summaries):
        last_of_method = i + 1 == len(summaries) or summaries[i + 1].method != s.method
        if not s.total:
            found = f"[red]error ×{s.errors}[/red]"
        else:
            style = "green" if s.found == s.total else ("red" if s.found == 0 else "yellow")
            found = f"[{style}]{s.counts}[/{style}]" + (f" [red](+{s.errors} err)[/red]" if s.errors else "")
        example = next((r for r in s.measured if not r.correct), s.measured[0] if s.measured else None)
        answer = escape(_tail((example.answer or "").replace("\n", " "), 36)) if example else ""
        table.add_row(escape(s.method), f"{s.target_tokens:,}", f"{s.depth:.0%}", _num(s.median("depth_achieved"), ".1%"),
                      found, _num(s.median("ttft_s"), ".3f"), _num(s.median("decode_tokens_per_s"), ",.1f"),
                      held_live(s.median("kv_cache_bytes"), s.median("kv_live_bytes")), _num(s.median("kv_tokens_kept"), ",.0f"),
                      _num(s.median("answer_tokens"), ".0f"), answer, end_section=last_of_method)
    return table


def _tail(text: str, n: int) -> str:
    """The last n characters: an answer's value usually comes at its end."""
    return text if len(text) <= n else "…" + text[-(n - 1):]


def niah_overall_table(summaries, title: str) -> Table:
    """Per method: found / measured over the whole grid and per context length."""
    contexts = sorted({s.target_tokens for s in summaries})
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("method")
    table.add_column("overall", justify="right")
    for n in contexts:
        table.add_column(f"{n:,} tok", justify="right")
    for method, cells in by_method(summaries).items():
        found, total = sum(s.found for s in cells), sum(s.total for s in cells)
        row = [method, f"{found}/{total}" + (f" ({found / total:.0%})" if total else "")]
        for n in contexts:
            at = [s for s in cells if s.target_tokens == n]
            row.append(f"{sum(s.found for s in at)}/{sum(s.total for s in at)}" if at else "")
        table.add_row(*row)
    return table


def print_niah(summaries, title: str, console: Console | None = None, max_misses: int = 20) -> None:
    """Both tables, then the errors and the missed answers (the JSON holds every answer)."""
    console = console or make_console()
    console.print(niah_table(summaries, title))
    console.print(niah_overall_table(summaries, "found / trials, per method"))
    records = [r for s in summaries for r in s.records]
    errors = {(r.method, r.error) for r in records if r.error}
    for method, error in sorted(errors):
        console.print(f"[red]error[/red] {escape(method)}: {escape(error)}")
    missed = [r for r in records if r.error is None and not r.correct]
    if missed and not all(r.weights == "random" for r in missed):
        console.print(f"missed answers ({len(missed)}; expected values in the needle label):")
        for r in missed[:max_misses]:
            console.print(f"  {escape(r.method)} @ {r.target_tokens}, depth {r.depth:.0%}, {escape(r.needle or '')}: "
                          f"{escape(repr((r.answer or '')[:100]))}")
        if len(missed) > max_misses:
            console.print(f"  … {len(missed) - max_misses} more in the JSON")
    unfinished = sum(any("think block was not closed" in n for n in r.notes) for r in records)
    if unfinished:
        console.print(f"[yellow]{unfinished} answer(s) ended inside a think block (raise --max-new-tokens)[/yellow]")
    if any(r.weights == "random" for r in records):
        console.print("[yellow]weights: random — speed and memory are real; answers are noise.[/yellow]")
    if any(r.timing == "wall_clock" for r in records):
        console.print("[yellow]CPU wall-clock timings: a pipeline check, not a performance figure.[/yellow]")


def capacity_table(results: list[BenchmarkResult], title: str) -> Table:
    """benchmark.py capacity: per context and method, the measured max batch beside the bytes prediction, the
    aggregate decode there and its multiple of vanilla's, and batch 1's decode for reference."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for header in ("method", "context\n(tok)", "max batch\n(measured)", "max batch\n(bytes)", "aggregate\n(tok/s)",
                   "x vanilla", "per seq\n(tok/s)", "batch 1\n(tok/s)", "KV / seq held\n/ live (MiB)", "peak\n(GiB)", "runs"):
        table.add_column(header, justify="left" if header == "method" else "right")
    cells: dict[tuple, dict[int, BenchmarkResult]] = {}
    for r in results:
        if r.task == "capacity":
            cells.setdefault((r.target_tokens, r.method), {})[r.batch] = r
    for (context, method), by_batch in sorted(cells.items(), key=lambda kv: kv[0][0]):
        top = by_batch[max(by_batch)]
        one = by_batch.get(1)
        if top.error and not top.capacity_max_batch:
            table.add_row(escape(method), str(context), str(top.capacity_max_batch or 0), "—", "—", "—", "—", "—", "—",
                          "—", str(len(top.capacity_probes)))
            continue
        vanilla = cells.get((context, "vanilla"), {})
        base = vanilla.get(max(vanilla)) if vanilla else None
        ratio = (top.aggregate_decode_tokens_per_s / base.aggregate_decode_tokens_per_s
                 if base and base.aggregate_decode_tokens_per_s and top.aggregate_decode_tokens_per_s else None)
        peak = max(filter(None, (top.peak_mem_prefill_bytes, top.peak_mem_decode_bytes)), default=None)
        table.add_row(escape(method), str(context), str(top.capacity_max_batch),
                      "—" if top.capacity_predicted_batch is None else str(top.capacity_predicted_batch),
                      _num(top.aggregate_decode_tokens_per_s, ",.0f"),
                      _num(ratio, ".2f"), _num(top.decode_tokens_per_s, ".1f"),
                      _num(one.decode_tokens_per_s if one else None, ".1f"),
                      held_live(top.kv_cache_bytes / top.batch if top.kv_cache_bytes else None,
                                top.kv_live_bytes / top.batch if top.kv_live_bytes else None),
                      _num(peak, ".2f", GIB), str(len(top.capacity_probes)))
    return table


def print_capacity(results: list[BenchmarkResult], title: str, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(capacity_table(results, title))
    for r in results:
        if r.task == "capacity_context":
            console.print(f"{escape(r.method)}: longest context at batch 1 = {r.target_tokens:,} tokens"
                          f" ({len(r.capacity_probes)} runs)")
    for r in results:
        if r.error:
            console.print(f"[red]error[/red] {escape(r.method)} @ {r.target_tokens}, batch {r.batch}: {escape(r.error)}")
        for note in r.notes:
            if note.startswith(("search stopped", "fits at --max-batch", "timed at batch")):
                console.print(f"[yellow]{escape(r.method)} @ {r.target_tokens}: {escape(note)}[/yellow]")
    console.print("max batch (measured): largest batch whose whole generation ran under the budget; (bytes): predicted "
                  "from the batch-1 and batch-2 peaks (intercept + per-sequence cost); aggregate = batch x 1000 / TPOT "
                  "at the measured max batch (or where a note says it was timed); x vanilla against vanilla's aggregate at its own max batch.")
# --- benchmark.py fidelity: closeness to vanilla beside the KV bytes ------------------------------------------------

def fidelity_table(results: list[BenchmarkResult], title: str) -> Table:
    """One row per context and method: KV bytes after the prefill (median over prompts) and its share of vanilla's,
    then the means over prompts of KL(vanilla || method), top-1 agreement and the perplexity change."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for header in ("method", "context\n(tok)", "KV\n(MiB)", "of\nvanilla", "KL mean\n(nats)", "KL max\n(nats)",
                   "top-1\nagree", "ppl", "ppl\nchange", "prompts"):
        table.add_column(header, justify="left" if header == "method" else "right")
    cells: dict[tuple, list[BenchmarkResult]] = {}
    for r in results:
        if r.task == "fidelity" and r.error is None:
            cells.setdefault((r.target_tokens, r.method), []).append(r)
    for (context, method), records in sorted(cells.items(), key=lambda kv: kv[0][0]):
        vanilla = median_kv_bytes(cells.get((context, "vanilla"), []))
        held = median_kv_bytes(records)
        mean = lambda name: sum(getattr(r, name) for r in records) / len(records)  # noqa: E731
        ppl, ppl_vanilla = mean("fidelity_perplexity"), mean("fidelity_perplexity_vanilla")
        table.add_row(escape(method), str(context), _num(held, ",.2f", MIB), _num(held / vanilla if vanilla else None,
                      ".3f"), f"{mean('fidelity_kl'):.4f}", f"{max(r.fidelity_kl_max for r in records):.3f}",
                      f"{mean('fidelity_top1'):.3f}", f"{ppl:.2f}", f"{ppl / ppl_vanilla - 1:+.1%}", str(len(records)))
    return table


def print_fidelity(results: list[BenchmarkResult], title: str, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(fidelity_table(results, title))
    for r in results:
        if r.error:
            console.print(f"[red]error[/red] {escape(r.method)} @ {r.target_tokens}: {escape(r.error)}")
    console.print("KL: KL(vanilla || method) of the next-token distributions, nats, mean over the teacher-forced "
                  "positions (max: the largest single position); top-1: fraction of positions where the argmaxes "
                  "agree; ppl: perplexity of the text's true tokens (change: against vanilla's on the same prompts).")


# --- test_long_context.py --tasks: accuracy per task x method x context -----------------------------------------------

def task_table(summaries, records: list[BenchmarkResult], title: str) -> Table:
    """One row per method: per task and context, RULER's score (mean %, the fraction of expected strings named) with
    correct/measured; then KV bytes held (median) and the answer-length change against vanilla on the same prompts."""
    tasks = list(dict.fromkeys(s.task_family for s in summaries))
    columns = sorted({(s.task_family, s.target_tokens) for s in summaries}, key=lambda c: (tasks.index(c[0]), c[1]))
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("method")
    for task, n in columns:
        table.add_column(f"{task}\n{n:,} tok", justify="right")
    table.add_column("KV held\n/ live (MiB)", justify="right")
    table.add_column("ratio\n(asked)", justify="right")
    table.add_column("answer tok\nvs vanilla", justify="right")
    lengths = answer_length_change(records)
    for method, cells in by_method(summaries).items():
        row = [escape(method)]
        for task, n in columns:
            at = [s for s in cells if (s.task_family, s.target_tokens) == (task, n)]
            measured = [r for s in at for r in s.measured]
            errors = sum(s.errors for s in at)
            if not measured:
                row.append(f"[red]error ×{errors}[/red]" if errors else "")
                continue
            score = sum(r.score or 0.0 for r in measured) / len(measured)
            right = sum(bool(r.correct) for r in measured)
            row.append(f"{score:.0%} ({right}/{len(measured)})" + (f" [red]+{errors} err[/red]" if errors else ""))
        ratios = sorted({r.compression_ratio for s in cells for r in s.measured if r.compression_ratio is not None})
        measured = [r for s in cells for r in s.measured]
        row.append(held_live(median_kv_bytes(measured), median_kv_bytes(measured, "kv_live_bytes")))
        row.append("—" if not ratios else f"{ratios[0]:.3g}" if len(ratios) == 1 else f"{ratios[0]:.3g}–{ratios[-1]:.3g}")
        change = lengths.get(method)
        row.append("—" if change is None else f"{change[0]:+.1f} ({change[1]})")
        table.add_row(*row)
    chance = [_chance([s for s in summaries if (s.task_family, s.target_tokens) == c]) for c in columns]
    if any(c is not None for c in chance):
        table.add_section()
        table.add_row("[dim]chance[/dim]", *("" if c is None else f"[dim]{c:.0%}[/dim]" for c in chance), "", "", "",
                      style="dim", end_section=False)
    return table


def _chance(cells) -> float | None:
    """The family's baseline score (BenchmarkResult.chance) at one task x context, averaged over its prompts: every
    method answers the same prompts, so each counts once."""
    by_prompt = {r.prompt_id: r.chance for s in cells for r in s.records if r.chance is not None}
    return sum(by_prompt.values()) / len(by_prompt) if by_prompt else None


def print_tasks(summaries, records: list[BenchmarkResult], title: str, console: Console | None = None,
                max_misses: int = 12) -> None:
    """The task table, then errors and a few missed answers (the JSON holds every answer)."""
    console = console or make_console()
    console.print(task_table(summaries, records, title))
    console.print("score: RULER's string_match_all (string_match_part for nolima), mean over trials and questions; "
                  "(n/N): answers naming every expected string and no distractor. KV held / live: median KV bytes "
                  "the cache tensors hold after the context / that attention still sees (shown where they differ), "
                  "over the method's measured trials (every task and context). answer tok vs vanilla: "
                  "mean change in answer length on the same prompts (pairs).")
    if any(r.chance is not None for r in records):
        console.print("chance: the score of a strategy without the tested ability, mean over the prompts (cwe, fwe: "
                      "the better of naming random words of the list and copying its first distinct words; nolima: "
                      "guessing one of the context's characters).")
    for method, error in sorted({(r.method, r.error) for r in records if r.error}):
        console.print(f"[red]error[/red] {escape(method)}: {escape(error)}")
    missed = [r for r in records if r.error is None and not r.correct and r.weights != "random"]
    if missed:
        console.print(f"missed answers ({len(missed)}; the first {min(len(missed), max_misses)}):")
        for r in missed[:max_misses]:
            console.print(f"  {escape(r.task_family or '')} {escape(r.method)} @ {r.target_tokens}: expected "
                          f"{escape(','.join(r.expected or []))}: {escape(repr((r.answer or '')[:90]))}")
    if any(r.weights == "random" for r in records):
        console.print("[yellow]weights: random — speed and memory are real; answers are noise.[/yellow]")


# --- quality: scores with intervals, differences from vanilla (quality.py, stats.py) --------------------------------

def _pm(it) -> str:
    """A score x100 with its 95 % interval: '91.3 [86.5, 94.6]'."""
    return f"{100 * it.estimate:.1f} [{100 * it.low:.1f}, {100 * it.high:.1f}]"


def _delta(it) -> str:
    """method - vanilla x100 with its interval; '*' marks an interval that excludes 0 (a measured difference)."""
    if it is None:
        return "—"
    return f"{100 * it.estimate:+.1f} [{100 * it.low:+.1f}, {100 * it.high:+.1f}]" + (" *" if it.excludes_zero else "")


def quality_table(rows, title: str) -> Table:
    """quality.quality_rows: one row per (task, method, context), then the averages over tasks."""
    table = Table(title=title, title_justify="left")
    for name in ("task", "context", "method", "score x100 [95 % CI]", "n", "vs vanilla [95 % CI]", "errors"):
        table.add_column(name, justify="left" if name in ("task", "method") else "right")
    last = None
    for row in rows:
        if last is not None and (row.task, row.tasks > 1) != last:
            table.add_section()
        last = (row.task, row.tasks > 1)
        task = f"{row.task} ({row.tasks} tasks)" if row.tasks > 1 else row.task
        table.add_row(escape(task), f"{row.context:,}", escape(row.method), _pm(row.score), str(row.score.n),
                      _delta(row.vs_vanilla), str(row.errors) if row.errors else "")
    return table


def print_quality(rows, title: str, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(quality_table(rows, title))
    methods = sorted({r.score.method for r in rows})
    console.print("score: RULER's metric x100, mean over samples; [95 % CI]: "
                  + ", ".join({"wilson": "Wilson's interval for 0/1 scores",
                               "bootstrap": "percentile bootstrap over samples (2,000 resamples, seed 0) for "
                                            "fractional scores and for averages over tasks (resampled within each "
                                            "task)"}[m] for m in methods)
                  + ". vs vanilla: mean difference on the same samples, paired bootstrap; * = its interval excludes 0. "
                  "Averages weigh every task the same (RULER's, kvpress's leaderboard).")
