"""Needle in a haystack and RULER-style tasks at 8K-32K: does a method still find what the context says, and what
does it cost?

    uv run python test_long_context.py                  # Qwen3-8B, the cheap tasks, 8K/16K/32K x 3 depths x 3 trials
    uv run python test_long_context.py --tasks niah     # the needle alone
    uv run python test_long_context.py --haystack paul_graham --needle multikey --depths 0,0.25,0.5,0.75,1
    uv run python test_long_context.py --thinking                   # Qwen3 thinking mode (4096-token budget)
    uv run python test_long_context.py --model smollm2 --contexts 1K,2K --methods vanilla,snapkv@0.5   # CPU, real
    uv run python test_long_context.py --preset tiny                # CPU pipeline check
    uv run python test_long_context.py --tasks niah,multiquery,vt,cwe,fwe,nolima   # RULER-style tasks
    uv run python test_long_context.py --tasks vt,nolima --questions 3     # 3 questions per compressed context
    uv run python test_long_context.py --methods vanilla,knorm@2048tok,snapkv@64MiB   # kept budgets, not ratios
    uv run python test_long_context.py --methods knorm@0.5 --match-kv dms-8x --match-from DMS.json
"""

import sys

from kvcompress.commands import script_main

main = script_main("long-context")  # the command: kvcompress/commands/long_context.py

if __name__ == "__main__":
    sys.exit(main())
