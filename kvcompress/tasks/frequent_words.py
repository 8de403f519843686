"""RULER's frequent-words extraction (fwe): coded non-words drawn with Zipf frequencies; name the three most frequent.

After RULER's template (scripts/data/synthetic/freq_words_extraction.py, alpha 2.0): word of rank r occurs in
proportion to r^-2 (counts rounded, so the three most frequent are fixed and strictly ordered whatever the size),
shuffled, separated by ' .... '. The answer must name the three (string_match_all).

`chance` is the better of two strategies that do not count: naming three distinct words of the text at random, and
copying its first three distinct words. The second is the honest baseline: at alpha 2 the top word fills ~60 % of
the text, so copying its opening names it almost always (~0.67 string_match_all at 1K tokens, against ~0.2).
"""

from __future__ import annotations

import random

from kvcompress.tasks import words
from kvcompress.tasks.contract import Question, TaskContext

TOP = 3
ALPHA = 2.0
VOCABULARY = 200
INSTRUCTION = ("Read the following coded text and track the frequency of each coded word. Find the three most "
               "frequently appeared coded words.")


def counts(n_items: int) -> list[int]:
    """Occurrences per rank (rounded Zipf shares of `n_items`; ranks that round to zero are left out)."""
    weights = [r ** -ALPHA for r in range(1, VOCABULARY + 1)]
    total = sum(weights)
    return [c for c in (round(n_items * w / total) for w in weights) if c > 0]


def make(seed: int, questions: int = 1) -> TaskContext:
    rng = random.Random(seed)
    vocabulary = words.coded(rng, VOCABULARY)

    def body(n_items: int) -> str:
        n_items = max(n_items, 40)  # below ~40 items ranks 3 and 4 can tie
        items = [w for w, c in zip(vocabulary, counts(n_items)) for _ in range(c)]
        random.Random(seed * 7919 + n_items).shuffle(items)
        return " .... ".join(items)

    q = Question("Do not provide any explanation. Ignore the dots '....'. What are the three most frequently "
                 "appeared words in the above coded text?", vocabulary[:TOP],
                 answer_prefix="According to the coded text above, the three most frequently appeared words are:")
    return TaskContext("fwe", [q], instruction=INSTRUCTION, make_body=body, items_hint=0.3,
                       label="fwe:" + ",".join(vocabulary[:TOP]), chance=lambda text: chance(text, q.answers))


def chance(text: str, answers: list[str]) -> float:
    """Expected string_match_all of the better no-counting strategy (see the module docstring)."""
    return words.no_counting_chance(text.split(" .... "), TOP, answers)
