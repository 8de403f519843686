"""RULER's common-words extraction (cwe): a numbered list of words; name the ones that occur most often.

After RULER's template (scripts/data/synthetic/common_words_extraction.py), sized by the number of list items:
`COMMON_WORDS` words fill half of the items (each equally often), the other words fill the rest, each far less
often (6 : 1 at 1K tokens, RULER's short-context contrast; wider at longer contexts). As in RULER, the prompt opens
with one solved example (a short list of other words, the question and its numbered answer) before the real list:
it shows the answer's format (without it SmolLM2-135M answers in '- word' bullets). A context too small to hold
the example (1K tokens of the tiny model's byte tokenizer) gets the task without it (`TaskContext.shorter`, as RULER
shrinks its short configuration). The answer must name the common words (string_match_all).

`chance` is the better of two strategies that need no counting: naming COMMON_WORDS distinct words of the list at
random, and copying the list's first COMMON_WORDS distinct words. The second is the honest baseline: common words
fill half the list, so its opening already holds several (~0.4-0.5 at 1K tokens, against ~0.15 for random words).
"""

from __future__ import annotations

import math
import random
import re

from kvcompress.tasks import words
from kvcompress.tasks.contract import Question, TaskContext

COMMON_WORDS = 10
SHARE = 0.5  # fraction of the list's items that are common words
INSTRUCTION = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
               "ones that appear most often.")
QUESTION = f"What are the {COMMON_WORDS} most common words in the above list?"
ANSWER_PREFIX = f"Answer: The top {COMMON_WORDS} words that appear most often in the list are:"
EXAMPLE_REPEATS = 3  # the solved example: COMMON_WORDS words 3 times each, as many others once (RULER's shape)


def counts(n_items: int) -> tuple[int, int]:
    """(occurrences of each common word, most occurrences of any other word) in a list of `n_items`."""
    common = max(3, math.ceil(SHARE * n_items / COMMON_WORDS))
    others = max(1, n_items - COMMON_WORDS * common)
    return common, math.ceil(others / (len(words.COMMON) - COMMON_WORDS))


def _numbered(items: list[str], sep: str = " ") -> str:
    return sep.join(f"{i + 1}. {w}" for i, w in enumerate(items))


def example(rng: random.Random, pool: list[str]) -> str:
    """One solved instance of the task, on words of `pool` (never the real list's common words)."""
    chosen = rng.sample(pool, 2 * COMMON_WORDS)
    common = chosen[:COMMON_WORDS]
    items = [w for w in common for _ in range(EXAMPLE_REPEATS)] + chosen[COMMON_WORDS:]
    rng.shuffle(items)
    return f"{INSTRUCTION}\n{_numbered(items)}\nQuestion: {QUESTION}\n{ANSWER_PREFIX} {_numbered(common)}"


def make(seed: int, questions: int = 1, solved_example: bool = True) -> TaskContext:
    rng = random.Random(seed)
    vocabulary = rng.sample(words.COMMON, len(words.COMMON))
    common, rare = vocabulary[:COMMON_WORDS], vocabulary[COMMON_WORDS:]

    def body(n_items: int) -> str:
        c, per_rare = counts(n_items)
        others = max(0, n_items - COMMON_WORDS * c)
        items = [w for w in common for _ in range(c)]
        items += [rare[i // per_rare] for i in range(others)]  # each rare word per_rare times (the last fewer)
        random.Random(seed * 7919 + n_items).shuffle(items)
        return _numbered(items, "\n")

    q = Question(QUESTION, list(common), answer_prefix=ANSWER_PREFIX)
    shot = example(rng, rare) + "\n\n" if solved_example else ""
    return TaskContext("cwe", [q], instruction=shot + INSTRUCTION, make_body=body, items_hint=0.2,
                       label="cwe:" + ",".join(common) + ("" if solved_example else " (no solved example)"),
                       chance=lambda text: chance(text, q.answers),
                       shorter=(lambda: make(seed, questions, False)) if solved_example else None)


def list_items(text: str) -> list[str]:
    """The real list's words, in order (one "n. word" per line; the solved example is on one line)."""
    return re.findall(r"^\d+\. (\w+)$", text, flags=re.M)


def chance(text: str, answers: list[str]) -> float:
    """Expected string_match_all of the better no-counting strategy (see the module docstring)."""
    return words.no_counting_chance(list_items(text), COMMON_WORDS, answers)
