"""RULER's common-words extraction (cwe): a numbered list of words; name the ones that occur most often.

After RULER's template (scripts/data/synthetic/common_words_extraction.py), sized by the number of list items:
`COMMON_WORDS` words fill 30 % of the items (each equally often), the other words fill the rest, each at most a
third as often. The answer must name the common words (string_match_all); `chance` is what naming that many
distinct words of the list at random scores on average.
"""

from __future__ import annotations

import math
import random

from kvcompress.tasks import words
from kvcompress.tasks.contract import Question, TaskContext

COMMON_WORDS = 10
SHARE = 0.5  # fraction of the list's items that are common words
INSTRUCTION = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
               "ones that appear most often.")


def counts(n_items: int) -> tuple[int, int]:
    """(occurrences of each common word, most occurrences of any other word) in a list of `n_items`."""
    common = max(3, math.ceil(SHARE * n_items / COMMON_WORDS))
    others = max(1, n_items - COMMON_WORDS * common)
    return common, math.ceil(others / (len(words.COMMON) - COMMON_WORDS))


def make(seed: int, questions: int = 1) -> TaskContext:
    rng = random.Random(seed)
    vocabulary = rng.sample(words.COMMON, len(words.COMMON))
    common, rare = vocabulary[:COMMON_WORDS], vocabulary[COMMON_WORDS:]

    def body(n_items: int) -> str:
        c, per_rare = counts(n_items)
        others = max(0, n_items - COMMON_WORDS * c)
        items = [w for w in common for _ in range(c)]
        items += [rare[i // per_rare] for i in range(others)]  # each rare word per_rare times (the last fewer)
        random.Random(seed * 7919 + n_items).shuffle(items)
        return "\n".join(f"{i + 1}. {w}" for i, w in enumerate(items))

    q = Question(f"What are the {COMMON_WORDS} most common words in the above list?", list(common),
                 answer_prefix=f"The top {COMMON_WORDS} words that appear most often in the list are:")
    return TaskContext("cwe", [q], instruction=INSTRUCTION, make_body=body, items_hint=0.25,
                       label="cwe:" + ",".join(common))


def chance(text: str) -> float:
    """Expected string_match_all of COMMON_WORDS distinct words drawn at random from those in the list."""
    distinct = {line.split(". ", 1)[1] for line in text.splitlines() if ". " in line}
    return min(1.0, COMMON_WORDS / len(distinct))
