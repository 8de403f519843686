"""Speed and memory of KV-cache compression: vanilla Qwen3-8B vs DMS-8x vs kvpress presses, same prompts, same GPU.

    uv run python benchmark.py                                   # Qwen3-8B, 8K/16K/32K, default methods
    uv run python benchmark.py --random-weights                  # no weights needed: true speed and memory
    uv run python benchmark.py --methods vanilla,knorm@0.875 --contexts 32K
    uv run python benchmark.py --preset tiny                     # CPU pipeline check in about a minute
    uv run python benchmark.py compare A.json B.json             # what changed between two result files
    uv run python benchmark.py check results.json                # physics checks: KV bytes, roofline, FLOPs, noise
    uv run python benchmark.py --batch 1,8,32                    # batched decode: aggregate tok/s per batch
    uv run python benchmark.py capacity --budget 80GiB           # max batch that fits a budget, and its throughput
"""

import sys

from kvcompress import cli
from kvcompress.results import BenchmarkResult  # noqa: F401  (the one result record; importable from here)


@cli.main
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:  # a subcommand only in first position, so every benchmark option keeps its meaning
        from kvcompress.commands import compare

        return compare.main(argv[1:])
    if argv[:1] == ["check"]:
        from kvcompress.commands import checks

        return checks.main(argv[1:])
    if argv[:1] == ["capacity"]:
        from kvcompress.commands import capacity

        return capacity.main(argv[1:])
    parser = cli.parser("benchmark.py", "Measure TTFT, decode speed, phase peaks and KV bytes for each method at "
                        "each context length. The prompt is a needle-in-a-haystack prompt (needle at 50 %). "
                        "To compare two result files: benchmark.py compare A.json B.json (see compare --help); to check a GPU "
                        "run against the hardware's limits: benchmark.py check FILE; capacity at a memory budget: "
                        "benchmark.py capacity --budget 80GiB (see capacity --help).")
    args = parser.parse_args(argv)
    cfg = cli.resolve(args, "benchmark")
    from kvcompress import report  # torch and transformers: only once the arguments are good
    from kvcompress.run import runner
    from kvcompress.tasks.cell import Cell

    cells = [Cell(target_tokens=n, depth=0.5, needle_kind="single", needle_seed=cfg.settings.sampling.seed,
                  haystack=cfg.haystack) for n in cfg.contexts]
    out = runner.run(cfg, cells, task="benchmark")
    report.print_results(out.results, f"benchmark — {out.run.get('model')} ({out.run.get('weights')}), "
                         f"{cfg.settings.max_new_tokens} output tokens, {cfg.repeats} repeats")
    runner.console.print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
