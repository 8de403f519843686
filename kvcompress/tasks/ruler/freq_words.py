"""RULER's frequent-words extraction `fwe` (scripts/synthetic.yaml: alpha 2.0; generator
scripts/data/synthetic/freq_words_extraction.py). Written from reading RULER; the template is RULER's text.

A vocabulary of context // 50 coded words (6 random lower-case letters, distinct, sorted then shuffled); the word of
rank k appears int(n * k^-alpha / zeta(alpha)) times, the top rank is replaced by '...' (noise), the words are
shuffled and joined by spaces. The answer names ranks 2-4 (string_match_all). zeta(2) = pi^2 / 6.

Split as kvpress's RULER data: context = instruction + " " + text + "\\n"; question = "Question: Do not provide any
explanation. ..."; answer prefix after it. tokens_to_generate = 50. Sized by n (RULER sizes the text alone to the
context; here the whole prompt fits context - 50 like every RULER task).
"""

from __future__ import annotations

import math
import random
import string

from kvcompress.tasks.contract import Question, TaskContext

TOKENS_TO_GENERATE = 50
ALPHA = 2.0
ZETA = math.pi ** 2 / 6  # zeta(ALPHA) for ALPHA = 2
WORD_LENGTH = 6
INSTRUCTION = ("Read the following coded text and track the frequency of each coded word. Find the three most "
               "frequently appeared coded words.")
QUESTION = ("Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
            "frequently appeared words in the above coded text?")
ANSWER_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"


def counts(n: int, vocab_size: int) -> list[int]:
    return [int(n * k ** -ALPHA / ZETA) for k in range(1, vocab_size + 1)]


def make(seed: int, context_tokens: int) -> TaskContext:
    rng = random.Random(seed)
    size = max(context_tokens // 50, 8)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choices(string.ascii_lowercase, k=WORD_LENGTH)))
    vocab = sorted(words)
    rng.shuffle(vocab)
    vocab[0] = "..."  # RULER: the top rank is noise

    def body(n: int) -> str:
        items = [w for w, c in zip(vocab, counts(n, size)) for _ in range(c)]
        random.Random(seed * 7919 + n).shuffle(items)
        return f"{INSTRUCTION} {' '.join(items)}\n"

    q = Question(QUESTION, vocab[1:4], answer_prefix=ANSWER_PREFIX)
    # below ~80 items ranks 4 and 5 can tie (int(n/16 * 6/pi^2) = int(n/25 * 6/pi^2)): the smallest valid list
    return TaskContext("ruler_fwe", [q], make_body=body, items_hint=0.5, label="ruler_fwe:" + ",".join(vocab[1:4]),
                       tokens_to_generate=TOKENS_TO_GENERATE, question_separator="", min_items=80)
