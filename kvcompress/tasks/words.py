"""Word lists for the aggregation tasks, written for this project (no third-party list).

`COMMON` are plain English nouns (common-words extraction, like RULER's English words); `coded` makes pronounceable
non-words from syllables (frequent-words extraction, like RULER's random "coded" words).
"""

from __future__ import annotations

import random

COMMON = tuple("""
anchor apron attic badge bakery balcony ballad banner barley barrel basket beacon bench blanket blossom bonnet
bottle bracelet bridge bucket bundle butter button cabin candle canoe canvas carpet castle cellar chapel cherry
chimney circus cliff clover cobbler compass cottage cradle crayon cricket crystal curtain cushion daisy desert
diamond dolphin donkey dragon drawer eagle engine envelope fabric feather fence ferry fiddle finch forest fountain
garden garlic glacier goblet granite guitar hammer harvest helmet hermit honey island ivory jacket jigsaw journal
kitten ladder lemon library lighthouse lizard locket magnet mango marble market meadow mirror mitten monkey
mountain muffin napkin needle noodle oyster paddle palace parrot peanut pencil pepper piano pillow pirate planet
pocket pottery puddle pumpkin puzzle quilt rabbit radish ribbon river rocket saddle sailor salmon sandal satchel
scarf shovel silver skillet sleigh spider spoon squirrel statue stove sunset teapot thimble thunder ticket tiger
timber toaster tomato tractor trumpet tunnel turtle umbrella valley violin wagon walnut whistle window wizard
""".split())

_ONSETS = "b d f g k l m n p r s t v z".split()
_VOWELS = "a e i o u".split()


def coded(rng: random.Random, n: int) -> list[str]:
    """`n` distinct non-words of three syllables (e.g. 'kolevu')."""
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(3))
        if word not in out:
            out.append(word)
    return out


def no_counting_chance(items: list[str], k: int, answers: list[str]) -> float:
    """Expected string_match_all, for the k most frequent of `items` (`answers`), of the better strategy that does not
    count: k distinct words guessed at random, or the first k distinct words copied (the frequent ones dominate)."""
    distinct = list(dict.fromkeys(items))
    return max(min(1.0, k / len(distinct)), sum(w in answers for w in distinct[:k]) / len(answers))
