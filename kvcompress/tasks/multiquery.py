"""RULER's niah_multiquery: several keys, each with its own number, hidden in the haystack and asked at once.

Written after RULER's template (scripts/data/synthetic/niah.py, `num_needle_q`): the answer must name every asked
key's number (string_match_all). With --questions K the haystack holds K groups of keys and question i asks group i.
"""

from __future__ import annotations

import random

from kvcompress.errors import UserError

from kvcompress.tasks import niah
from kvcompress.tasks.contract import Question, TaskContext

KEYS_PER_QUESTION = 4
INSTRUCTION = ("Some special magic numbers are hidden within the following text. Make sure to memorize them. "
               "I will quiz you about the numbers afterwards.")


def make(seed: int, questions: int = 1) -> TaskContext:
    rng = random.Random(seed)
    n = KEYS_PER_QUESTION * questions
    if 2 * n > len(niah.WORDS):
        raise UserError(f"multiquery holds {KEYS_PER_QUESTION} keys per question: at most "
                        f"{len(niah.WORDS) // (2 * KEYS_PER_QUESTION)} questions")
    words = rng.sample(niah.WORDS, 2 * n)
    keys = [f"{a}-{b}" for a, b in zip(words[::2], words[1::2])]
    values = [str(v) for v in rng.sample(range(1_000_000, 10_000_000), n)]
    sentences = [niah.TEMPLATE.format(k, v) for k, v in zip(keys, values)]
    qs = []
    for i in range(questions):
        asked = keys[i * KEYS_PER_QUESTION:(i + 1) * KEYS_PER_QUESTION]
        qs.append(Question(f"What are all the special magic numbers for {', '.join(asked[:-1])}, and {asked[-1]} "
                           "mentioned in the provided text?",
                           values[i * KEYS_PER_QUESTION:(i + 1) * KEYS_PER_QUESTION],
                           distractors=[v for j, v in enumerate(values) if j // KEYS_PER_QUESTION != i],
                           answer_prefix=f"The special magic numbers for {', '.join(asked[:-1])}, and {asked[-1]} "
                                         "mentioned in the provided text are"))
    return TaskContext("multiquery", qs, sentences, instruction=INSTRUCTION,
                       label="multiquery:" + ",".join(f"{k}={v}" for k, v in zip(keys, values)))
