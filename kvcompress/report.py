"""Tables (rich) for people; the JSON file is for machines."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from kvcompress.results import BenchmarkResult

GIB, MIB = 2**30, 2**20


def _num(value, fmt: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value / scale, fmt)


def make_console() -> Console:
    """Wide enough for the tables even when the output goes to a file or a CI log (rich assumes 80 columns)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console


def results_table(results: list[BenchmarkResult], title: str, answers: bool = False) -> Table:
    """One row per method x context, units in the headers."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for header, justify in [("method", "left"), ("context\n(tok)", "right"), ("TTFT\n(s)", "right"),
                            ("prefill\n(tok/s)", "right"), ("TPOT\n(ms)", "right"), ("decode\n(tok/s)", "right"),
                            ("peak prefill\n(GiB)", "right"), ("peak decode\n(GiB)", "right"),
                            ("KV\n(MiB)", "right"), ("KV kept\n(tok)", "right"), ("evicted\n(frac)", "right"),
                            ("mem\nsaved", "center"), ("engine", "left")]:
        table.add_column(header, justify=justify)
    if answers:
        table.add_column("answer / error", overflow="fold", max_width=40)
    for r in results:
        row = [r.method, str(r.input_tokens or r.target_tokens or "")]
        if r.error:
            row += ["—"] * 10 + [r.engine or ""]
            if answers:
                row.append(f"[red]{r.error}[/red]")
        else:
            row += [_num(r.ttft_s, ".3f"), _num(r.prefill_tokens_per_s, ",.0f"), _num(r.tpot_ms, ".2f"),
                    _num(r.decode_tokens_per_s, ".1f"), _num(r.peak_mem_prefill_bytes, ".2f", GIB),
                    _num(r.peak_mem_decode_bytes, ".2f", GIB), _num(r.kv_cache_bytes, ",.1f", MIB),
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


def print_results(results: list[BenchmarkResult], title: str, console: Console | None = None, *,
                  weights_note: bool = True) -> None:
    console = console or make_console()
    console.print(results_table(results, title))
    for r in results:
        if r.error:
            console.print(f"[red]error[/red] {r.method} @ {r.input_tokens or r.target_tokens}: {r.error}")
    answered = [r for r in results if not r.error and r.answer is not None and r.weights != "random"]
    if answered:
        console.print("answers (first 100 characters):")
        for r in answered:
            mark = "" if r.correct is None else ("[green]found[/green] " if r.correct else "[red]missed[/red] ")
            console.print(f"  {r.method} @ {r.input_tokens}: {mark}{(r.answer or '').replace(chr(10), ' ')[:100]!r}")
    if weights_note and any(r.weights == "random" for r in results):
        console.print("[yellow]weights: random — speed and memory are real; answers are noise.[/yellow]")
    if any(r.timing == "wall_clock" for r in results):
        console.print("[yellow]CPU wall-clock timings: a pipeline check, not a performance figure.[/yellow]")
