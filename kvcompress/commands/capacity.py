"""benchmark.py capacity: how many sequences fit a memory budget, and how fast they decode together (the search
itself: run/capacity.py)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from kvcompress import cli, report
from kvcompress.errors import UserError

DEFAULT_METHODS = "vanilla,knorm@0.5,knorm@0.875,snapkv@0.875,dms-8x"
DESCRIPTION = ("For each method x context: the largest batch whose whole generation fits --budget, measured with the "
               "allocator capped at the budget (real runs; an out-of-memory run is recorded and the search goes on), "
               "the bytes-predicted batch beside it, the aggregate decode tok/s at that batch and at batch 1; per "
               "method the longest context that fits at batch 1. Writes the JSON and a plot (.png) beside it.")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("benchmark.py capacity", DESCRIPTION,
                        cli.Defaults(methods=DEFAULT_METHODS, contexts="8K,32K", max_new_tokens=128, repeats=1),
                        tiny=cli.Defaults(methods="vanilla,knorm@0.5,knorm@0.875", contexts="256", max_new_tokens=8,
                                          repeats=1),
                        without=("batch",))  # the search picks the batches; --resume continues a capacity file
    g = parser.add_argument_group("capacity")
    g.add_argument("--budget", default=None, help="memory for weights, KV, activations and workspace, e.g. 80GiB "
                   "(an H100's memory), 141GB (default 80GiB; tiny preset: 8MiB). On CUDA the allocator is capped at "
                   "it; on CPU a run fits when weights + its KV bytes do")
    g.add_argument("--search-tokens", type=int, default=4, help="decode steps of each search run; its buffers "
                   "still hold the whole --max-new-tokens (default 4)")
    g.add_argument("--max-batch", type=int, default=1024, help="largest batch tried (default 1024)")
    g.add_argument("--search-runs", type=int, default=6, help="search runs per cell after the two probes at batch 1 "
                   "and 2 that predict it (default 6)")
    return parser


def main(argv: list[str]) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if args.search_tokens < 2 or args.max_batch < 1 or args.search_runs < 1:
        raise UserError("--search-tokens must be at least 2, --max-batch and --search-runs at least 1")
    if args.budget is not None:
        parse_budget(args.budget)  # a typo answers now, before torch is imported
    cfg = cli.resolve(args, "capacity")
    # torch, and matplotlib for the plot: only once the arguments are good
    from kvcompress import plots
    from kvcompress.run.capacity import AllocatorBudget, BytesBudget, search_all, size_label

    size = parse_budget(args.budget or ("8MiB" if cfg.preset == "tiny" else "80GiB"))
    budget = AllocatorBudget(size, cfg.device) if cfg.device.type == "cuda" else BytesBudget(size)
    out = search_all(cfg, budget, search_tokens=args.search_tokens, max_batch=args.max_batch, max_runs=args.search_runs)
    console = report.make_console()
    report.print_capacity(out.results, f"capacity — {out.run.get('model')} ({out.run.get('weights')}), budget "
                          f"{size_label(size)} ({budget.kind}), {cfg.settings.max_new_tokens} new tokens", console)
    figure = plots.aggregate_vs_batch(out.results, Path(cfg.out).with_suffix(".png"),
                                      f"aggregate decode vs batch — {out.run.get('model')}, budget {size_label(size)}")
    console.print(f"wrote {cfg.out} and {figure}")
    from kvcompress.run.runner import exit_status

    return exit_status(out)


UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
         "gib": 2**30, "tib": 2**40}
MIN_BUDGET = 2**20


def parse_budget(text: str) -> int:
    """--budget in bytes: a number and a unit (decimal kB..TB, binary KiB..TiB; none: bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match[2].lower() if match else None
    if not match or unit not in UNITS:
        raise UserError(f"budget {text!r} is not a memory size (write 80GiB, 141GB, 512MiB)")
    value = int(float(match[1]) * UNITS[unit])
    if value < MIN_BUDGET:  # every run would fail, cell by cell, with the allocator's or transformers' messages
        raise UserError(f"budget {text!r} is below 1 MiB: no model's weights fit it (write 80GiB, 141GB, 8MiB)")
    return value
