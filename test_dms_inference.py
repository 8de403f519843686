"""Vanilla Qwen3-8B and NVIDIA's DMS-8x side by side on the same prompts, same seed, same sampling.

    uv run python test_dms_inference.py                        # GPU: Qwen3-8B vs nvidia/Qwen3-8B-DMS-8x
    uv run python test_dms_inference.py --prompts mine.jsonl   # your own prompts
    uv run python test_dms_inference.py --preset tiny          # CPU: tiny Qwen3 vs native DMS on it vs the fixture
"""

import sys

from kvcompress.commands import script_main

main = script_main("dms-side-by-side")  # the command: kvcompress/commands/dms_side_by_side.py

if __name__ == "__main__":
    sys.exit(main())
