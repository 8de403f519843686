"""RULER's common-words extraction `cwe` (scripts/synthetic.yaml: freq_cw 30, freq_ucw 3, num_cw 10; generator
scripts/data/synthetic/common_words_extraction.py). Written from reading RULER; the template is RULER's text.

A numbered list "1. w 2. w ..." (one line) of words from wonderwords (nouns + adjectives + verbs): 10 common words
repeated freq_cw times and the other words freq_ucw times, shuffled; the answer names the 10 (string_match_all).
Below a 4096-token context RULER uses 6 and 1 repeats. One solved example opens the prompt (20 words, 3 and 1 repeats
below 4096; 40 words, 10 and 3 above), written as RULER's base template with its answer prefix and numbered answer.
As in RULER, the example's and the list's words are drawn independently.

Split as kvpress's RULER data: context = example + "\\n" + instruction + "\\n" + list + "\\n"; question = "Question:
What are the 10 most common words in the above list?"; answer prefix after it. tokens_to_generate = 120. Sized by
the number of distinct words (RULER's step is 10 words).
"""

from __future__ import annotations

import random

from kvcompress.tasks.contract import Question, TaskContext
from kvcompress.tasks.ruler import vocab

TOKENS_TO_GENERATE = 120
NUM_CW = 10
FREQ_CW, FREQ_UCW = 30, 3
SHORT = 4096  # below this context RULER uses the short configuration
INSTRUCTION = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
               "ones that appear most often.")
QUESTION = "Question: What are the 10 most common words in the above list?"
ANSWER_PREFIX = "Answer: The top 10 words that appear most often in the list are:"


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def listing(order: list[str], num_words: int, common_repeats: int, uncommon_repeats: int,
            shuffle_seed: int) -> tuple[str, list[str]]:
    """RULER's random.sample(words, num_words) as the first num_words of one random order (the same words for every
    size, so the prompt grows with num_words)."""
    common, uncommon = order[:NUM_CW], order[NUM_CW:num_words]
    items = common * common_repeats + uncommon * uncommon_repeats
    random.Random(shuffle_seed).shuffle(items)
    return numbered(items), common


def repeats(context_tokens: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """((example words, common, uncommon repeats), (common, uncommon repeats of the list)) at this context."""
    return ((20, 3, 1), (6, 1)) if context_tokens < SHORT else ((40, 10, 3), (FREQ_CW, FREQ_UCW))


def make(seed: int, context_tokens: int) -> TaskContext:
    rng = random.Random(seed)
    (ex_words, ex_c, ex_u), (cw, ucw) = repeats(context_tokens)
    ex_text, ex_answer = listing(rng.sample(vocab.all_words(), ex_words), ex_words, ex_c, ex_u, seed * 7919)
    shot = f"{INSTRUCTION}\n{ex_text}\n{QUESTION} {ANSWER_PREFIX} {numbered(ex_answer)}"
    order = rng.sample(vocab.all_words(), len(vocab.all_words()))

    def body(n: int) -> str:
        text, _ = listing(order, n, cw, ucw, seed * 7919 + n)
        return f"{shot}\n{INSTRUCTION}\n{text}\n"

    common = order[:NUM_CW]
    q = Question(QUESTION, common, answer_prefix=ANSWER_PREFIX)
    return TaskContext("ruler_cwe", [q], make_body=body, items_hint=0.25 / ucw, label="ruler_cwe:" + ",".join(common),
                       tokens_to_generate=TOKENS_TO_GENERATE, question_separator="", min_items=NUM_CW + 1)
