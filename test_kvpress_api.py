"""Every kvpress press x compression ratio on the shared engine: what each saves (KV bytes measured in the cache's
tensors; real eviction vs masking), what it costs (TTFT with compression, decode tok/s), and a short answer to eyeball.

    uv run python test_kvpress_api.py --list                   # the registry: class, phase, memory, Hub, attention
    uv run python test_kvpress_api.py                          # Qwen3-8B, 8K prompt, every press x 4 ratios
    uv run python test_kvpress_api.py --random-weights         # no weights needed: true speed and memory
    uv run python test_kvpress_api.py --presses knorm,adakv+snapkv,decoding+knorm --ratios 0.5,0.875
    uv run python test_kvpress_api.py --preset tiny            # CPU pipeline check (a few minutes)
"""

import sys

from kvcompress.commands import script_main

main = script_main("press-sweep")  # the command: kvcompress/commands/press_sweep.py

if __name__ == "__main__":
    sys.exit(main())
