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

from kvcompress.commands import script_main
from kvcompress.results import BenchmarkResult  # noqa: F401  (the one result record; importable from here)

main = script_main("benchmark")  # the command: kvcompress/commands/benchmark.py

if __name__ == "__main__":
    sys.exit(main())
