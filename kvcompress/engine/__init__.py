"""The measurement engine: one timed generation (prefill + compression, question, decode), repeated.

Every script measures through `measure()`, so every number in every table means the same thing:
- TTFT: from the start of the context prefill (press compression included) to the first sampled token on the host.
- TPOT: (end-to-end - TTFT) / (output tokens - 1); decode tok/s = 1000 / TPOT; prefill tok/s = input / TTFT.
- Peaks: the allocator's peak during prefill (reset before it) and during decode (reset after the first token).
- KV bytes: summed over the cache's own tensors, after compression and at the end.
"""

from kvcompress.engine.generate import Generation, GenerationSettings, Prompt, generate_once  # noqa: F401
from kvcompress.engine.measure import measure  # noqa: F401
