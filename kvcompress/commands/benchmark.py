"""benchmark.py: TTFT, decode speed, phase peaks and KV bytes of each method at each context length."""

from __future__ import annotations

import argparse

from kvcompress import cli, report
from kvcompress.tasks.cell import Cell

DESCRIPTION = ("Measure TTFT, decode speed, phase peaks and KV bytes for each method at each context length. The "
               "prompt is a needle-in-a-haystack prompt (needle at 50 %). To compare two result files: benchmark.py "
               "compare A.json B.json (see compare --help); to check a GPU run against the hardware's limits: "
               "benchmark.py check FILE; capacity at a memory budget: benchmark.py capacity --budget 80GiB (see "
               "capacity --help).")


def build_parser() -> argparse.ArgumentParser:
    return cli.parser("benchmark.py", DESCRIPTION)


def run(args: argparse.Namespace) -> int:
    cfg = cli.resolve(args, "benchmark")
    from kvcompress.run import runner  # torch and transformers: only once the arguments are good

    cells = [Cell(target_tokens=n, depth=0.5, needle_kind="single", needle_seed=cfg.settings.sampling.seed,
                  haystack=cfg.haystack) for n in cfg.contexts]
    out = runner.run(cfg, cells, task="benchmark")
    report.print_results(out.results, f"benchmark — {out.run.get('model')} ({out.run.get('weights')}), "
                         f"{cfg.settings.max_new_tokens} output tokens, {cfg.repeats} repeats")
    runner.console.print(f"wrote {cfg.out}")
    return runner.exit_status(out)
