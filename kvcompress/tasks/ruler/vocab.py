"""RULER's word sources: the `wonderwords` package's noun, adjective and verb lists, and RULER's random values.

RULER (scripts/data/synthetic/niah.py) makes keys as 'adjective-noun' (uniform over the deduplicated pairs, which is
a uniform adjective and a uniform noun: the pairs are all distinct), 7-digit numbers and version-4 UUIDs; cwe draws
from the sorted union of the three lists. The lists are read once from the installed package.
"""

from __future__ import annotations

import random
import uuid
from functools import lru_cache

VALUE_TYPES = ("numbers", "words", "uuids")


@lru_cache(maxsize=None)
def _lists() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    from wonderwords import random_word

    def load(name: str) -> tuple[str, ...]:
        return tuple(sorted(set(random_word._get_words_from_text_file(name))))
    return load("nounlist.txt"), load("adjectivelist.txt"), load("verblist.txt")


def nouns() -> tuple[str, ...]:
    return _lists()[0]


def adjectives() -> tuple[str, ...]:
    return _lists()[1]


@lru_cache(maxsize=None)
def all_words() -> tuple[str, ...]:
    """cwe's vocabulary: nouns + adjectives + verbs, deduplicated and sorted."""
    n, a, v = _lists()
    return tuple(sorted(set(n) | set(a) | set(v)))


def value(kind: str, rng: random.Random) -> str:
    """One random key or value of RULER's type `kind`."""
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return f"{rng.choice(adjectives())}-{rng.choice(nouns())}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown RULER value type {kind!r}")


def distinct(kind: str, rng: random.Random, n: int, avoid: set[str] | None = None) -> list[str]:
    """`n` distinct values of `kind`, none of them in `avoid` (RULER does not check; a repeat would make a key ambiguous)."""
    out: list[str] = []
    seen = set(avoid or ())
    while len(out) < n:
        v = value(kind, rng)
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
