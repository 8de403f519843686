"""RULER's eight needle-in-a-haystack tasks (scripts/synthetic.yaml, generator scripts/data/synthetic/niah.py).

Written from reading RULER (Apache-2.0); the template and needle text are RULER's prompt text, the code is ours.
A needle is "One of the special magic {values} for {key} is: {value}."; a task sets the haystack (`repeat`: RULER's
noise paragraph, one per line; `essay`: Paul Graham's essays, words rejoined by single spaces and needles placed
between sentences at depths drawn from RULER's 40 depths; `needle`: lines that are themselves needles with random
keys and values), the key and value types (words 'adjective-noun' from wonderwords, 7-digit numbers, UUIDs), the
number of keys (the asked one plus distractors), of values per key, and of keys asked at once. As in RULER, the
needles are shuffled before they are placed, the asked keys are drawn among the keys, and the template becomes
singular ("A special magic number is hidden ... What is ... is") when one value of one key is asked.

Split as kvpress's RULER data: the context (instruction + haystack + "\\n") is compressed, the question ("What is ...")
and RULER's answer prefix are fed after it. tokens_to_generate = 128; scoring string_match_all.

Sizing (RULER grows the haystack by 500 words / 25 lines and keeps the last that fits): we take the largest haystack
whose prompt fits target - 128, in finer units: essay words, noise sentences (the last line may stop after any of its
five sentences) and needle-haystack lines. Sentences of the essay are split after . ! ? followed by a space and a
capital or quote (RULER uses nltk's Punkt; a needle lands between two sentences either way).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from kvcompress.tasks.contract import Question, TaskContext
from kvcompress.tasks.haystack import haystack_text
from kvcompress.tasks.ruler import vocab

TOKENS_TO_GENERATE = 128
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. I will quiz "
            "you about the {type_v} afterwards.\n{context}\n")
QUESTION = "What are all the special magic {type_v} for {query} mentioned in the provided text?"
ANSWER_PREFIX = "The special magic {type_v} for {query} mentioned in the provided text are"  # RULER: a leading space
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_SENTENCES = 5
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER: np.round(np.linspace(0, 100, 40))


@dataclass(frozen=True)
class Config:
    haystack: str  # repeat | essay | needle
    type_k: str
    type_v: str
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1


TASKS = {
    "niah_single_1": Config("repeat", "words", "numbers"),
    "niah_single_2": Config("essay", "words", "numbers"),
    "niah_single_3": Config("essay", "words", "uuids"),
    "niah_multikey_1": Config("essay", "words", "numbers", num_k=4),
    "niah_multikey_2": Config("needle", "words", "numbers"),
    "niah_multikey_3": Config("needle", "uuids", "uuids"),
    "niah_multivalue": Config("essay", "words", "numbers", num_v=4),
    "niah_multiquery": Config("essay", "words", "numbers", num_q=4),
}


def singular(text: str) -> str:
    """RULER's rewrite of the template when one value is asked (applied before {type_v} is filled)."""
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


@lru_cache(maxsize=1)
def essay_words() -> tuple[str, ...]:
    """The essays as RULER reads them: every run of white space is one word boundary."""
    return tuple(haystack_text("paul_graham", 1).split())


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


def make(name: str, seed: int) -> TaskContext:
    cfg = TASKS[name]
    rng = random.Random(seed)
    num_k = max(cfg.num_k, cfg.num_q)  # RULER: every asked key is a key
    keys = vocab.distinct(cfg.type_k, rng, num_k)
    values = [vocab.distinct(cfg.type_v, rng, cfg.num_v) for _ in keys]
    needles = [NEEDLE.format(type_v=cfg.type_v, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    depths = rng.sample(DEPTHS, len(needles))  # essay: RULER's depths, one per needle
    asked = rng.sample(range(num_k), cfg.num_q)
    queries = [keys[i] for i in asked]
    answers = [v for i in asked for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    one = cfg.num_q * cfg.num_v == 1
    type_v = cfg.type_v[:-1] if one else cfg.type_v
    fill = (lambda t: singular(t).format(type_v=type_v, query=query, context="{context}")) if one else \
        (lambda t: t.format(type_v=type_v, query=query, context="{context}"))
    template, question, prefix = fill(TEMPLATE), fill(QUESTION), fill(ANSWER_PREFIX)
    taken = set(keys) | {v for vs in values for v in vs}
    pool: list[str] = []  # needle haystack: lines with their own random keys and values, the same for every n
    pool_rng = random.Random(seed * 7919 + 1)

    def lines(n: int) -> list[str]:
        while len(pool) < n:
            k = vocab.distinct(cfg.type_k, pool_rng, 1, taken)[0]
            pool.append(NEEDLE.format(type_v=cfg.type_v, key=k, value=vocab.value(cfg.type_v, pool_rng)))
        return pool[:n]

    def body(n: int) -> str:
        place = random.Random(seed * 7919 + n)  # insertion points for this size
        if cfg.haystack == "essay":
            sents = sentences(" ".join(essay_words()[:n]))
            cuts = sorted(int(len(sents) * d / 100) for d in depths)
            parts, last = [], 0
            for cut, needle in zip(cuts + [len(sents)], needles + [None]):
                parts.append(" ".join(sents[last:cut]))
                if needle:
                    parts.append(needle)
                last = cut
            context = " ".join(p for p in parts if p)
        else:
            if cfg.haystack == "repeat":
                noise = sentences(NOISE)
                rows = [NOISE] * (n // NOISE_SENTENCES) + ([" ".join(noise[:n % NOISE_SENTENCES])]
                                                           if n % NOISE_SENTENCES else [])
            else:
                rows = lines(n)
            for index, needle in zip(sorted(place.sample(range(len(rows)), len(needles)), reverse=True), needles):
                rows.insert(index, needle)
            context = "\n".join(rows)
        return template.replace("{context}", context)  # essays hold braces: no str.format on them

    q = Question(question, answers, answer_prefix=prefix)
    hint = {"essay": 0.75, "repeat": 0.2, "needle": 0.02 if cfg.type_v == "uuids" else 0.05}[cfg.haystack]  # n/token
    return TaskContext(name, [q], instruction="", make_body=body, items_hint=hint, label=f"{name}:{query}={answers}",
                       tokens_to_generate=TOKENS_TO_GENERATE, question_separator="", min_items=max(len(needles), 1))
