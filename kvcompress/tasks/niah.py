"""Needle in a haystack: needles placed at a token depth, prompts sized to a token count, answers scored.

Prompts follow kvpress's query-agnostic protocol: the context (chat-template prefix + haystack with needles) is
compressed; the question (with the template's assistant suffix) is fed afterwards. Depth is measured in tokens of
the haystack and snapped back to the end of a sentence; nothing but text is tokenized, so no BOS or other special
token can land inside the context.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch

from kvcompress.engine.generate import Prompt
from kvcompress.errors import UserError
from kvcompress.tasks.haystack import haystack_text

NEEDLE_KINDS = {
    "fact": "one fact: 'The secret number is V.'",
    "single": "RULER niah_single: 'One of the special magic numbers for KEY is: V.'",
    "multikey": "RULER niah_multikey: the asked key plus distractor keys with their own numbers",
    "multivalue": "RULER niah_multivalue: several numbers for one key; all must be recalled",
}
_WORDS = ("amber apple arrow basil cedar comet coral delta ember fable falcon garnet harbor iris jade kettle lantern "
          "maple meadow nectar onyx orchid pebble quartz raven saffron sparrow thistle tulip velvet willow zephyr").split()
_SPLIT = "\u2063KVCOMPRESS-SPLIT\u2063"  # marks where the context ends inside the rendered chat template


@dataclass
class Needle:
    kind: str
    key: str | None
    values: list[str]  # what the answer must contain
    sentences: list[str]  # inserted into the haystack, the first at the requested depth
    question: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.key or ''}={','.join(self.values)}"


def make_needle(kind: str, seed: int, count: int = 4) -> Needle:
    """A needle with fresh 7-digit values; `count` is the number of keys (multikey) or values (multivalue)."""
    rng = random.Random(seed)
    number = lambda: str(rng.randint(1_000_000, 9_999_999))  # noqa: E731
    keys = [f"{a}-{b}" for a, b in zip(rng.sample(_WORDS, count), rng.sample(_WORDS, count))]
    if kind == "fact":
        v = number()
        return Needle(kind, None, [v], [f"The secret number is {v}."],
                      "What is the secret number mentioned in the text? Answer with the number only.")
    template = "One of the special magic numbers for {} is: {}."
    question = "What is the special magic number for {} mentioned in the provided text? Answer with the number only."
    if kind == "single":
        v = number()
        return Needle(kind, keys[0], [v], [template.format(keys[0], v)], question.format(keys[0]))
    if kind == "multikey":
        values = [number() for _ in keys]
        return Needle(kind, keys[0], values[:1], [template.format(k, v) for k, v in zip(keys, values)],
                      question.format(keys[0]))
    if kind == "multivalue":
        values = [number() for _ in range(count)]
        return Needle(kind, keys[0], values, [template.format(keys[0], v) for v in values],
                      f"What are all the special magic numbers for {keys[0]} mentioned in the provided text? "
                      "List every one of them.")
    raise UserError(f"unknown needle kind {kind!r}; choose from {', '.join(NEEDLE_KINDS)}")


@dataclass
class NeedlePrompt:
    prompt: Prompt
    needle: Needle
    depth: float
    target_tokens: int
    text: str = field(repr=False, default="")


def build_prompt(tokenizer, target_tokens: int, depth: float, needle: Needle, haystack: str = "noise",
                 thinking: bool = False, tolerance: float = 0.01) -> NeedlePrompt:
    """Size the whole prompt (context + question) to `target_tokens` (within `tolerance`) with this tokenizer."""
    if not 0.0 <= depth <= 1.0:
        raise UserError(f"depth {depth:g} must be in [0, 1] (a fraction of the context)")
    hay_ids = _haystack_ids(tokenizer, haystack, target_tokens)
    budget = target_tokens - _overhead(tokenizer, needle, thinking)
    for _ in range(6):
        if budget <= 16:
            raise UserError(f"{target_tokens} tokens cannot hold the chat template, question and needle")
        context_text = _fill(tokenizer, hay_ids, budget, depth, needle)
        context_ids, question_ids = render(tokenizer, context_text, needle.question, thinking)
        total = len(context_ids) + len(question_ids)
        if total == target_tokens:
            break
        budget += target_tokens - total
    if abs(total - target_tokens) > tolerance * target_tokens:
        raise UserError(f"could not size the prompt to {target_tokens} tokens (got {total})")
    prompt = Prompt(torch.tensor([context_ids]), torch.tensor([question_ids]),
                    meta={"depth": depth, "needle": needle.label})
    return NeedlePrompt(prompt, needle, depth, target_tokens, context_text)


_HAYSTACK_CACHE: dict = {}


def _haystack_ids(tokenizer, source: str, target_tokens: int) -> list[int]:
    key = (id(tokenizer), source)
    ids = _HAYSTACK_CACHE.get(key, [])
    if len(ids) < target_tokens * 1.2:
        text = haystack_text(source, min_chars=int(target_tokens * 6))  # >= 1 token per ~4-6 characters
        ids = tokenizer.encode(text, add_special_tokens=False, verbose=False)
        _HAYSTACK_CACHE[key] = ids
    return ids


def _overhead(tokenizer, needle: Needle, thinking: bool) -> int:
    context_ids, question_ids = render(tokenizer, " ".join(needle.sentences), needle.question, thinking)
    return len(context_ids) + len(question_ids)


def _fill(tokenizer, hay_ids: list[int], budget: int, depth: float, needle: Needle) -> str:
    """Haystack of `budget` tokens minus the needles, with the first needle at `depth` and the rest spread out."""
    needle_tokens = sum(len(tokenizer.encode(" " + s, add_special_tokens=False)) for s in needle.sentences)
    body = hay_ids[: max(1, budget - needle_tokens)]
    depths = [depth] + _spread(depth, len(needle.sentences) - 1)
    cuts = sorted((_sentence_start(tokenizer, body, round(d * len(body))), i) for i, d in enumerate(depths))
    pieces, last = [], 0
    for cut, i in cuts:
        pieces.append(tokenizer.decode(body[last:cut]))
        pieces.append(" " + needle.sentences[i] + " ")
        last = cut
    pieces.append(tokenizer.decode(body[last:]))
    return re.sub(r" {2,}", " ", "".join(pieces)).strip()


def _spread(depth: float, n: int) -> list[float]:
    """Depths for the other needles of a multi-needle prompt: evenly spaced, away from the asked one."""
    slots = [(i + 0.5) / n for i in range(n)] if n else []
    return [s if abs(s - depth) > 0.05 else (s + 0.5 / max(n, 1)) % 1.0 for s in slots]


def _sentence_start(tokenizer, ids: list[int], position: int) -> int:
    """Move `position` back to just after the nearest preceding sentence end (or to 0)."""
    position = max(0, min(position, len(ids)))
    for i in range(position, 0, -1):
        token = tokenizer.decode(ids[i - 1: i])
        if token.rstrip().endswith((".", "!", "?")) or token.endswith("\n"):
            return i
    return 0


def render(tokenizer, context: str, question: str, thinking: bool) -> tuple[list[int], list[int]]:
    """Token ids of the context part and the question part of the chat-formatted prompt."""
    content = context + _SPLIT + ("\n\n" + question if question else "")
    messages = [{"role": "user", "content": content}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=thinking)
    else:
        text = content + "\n"
    head, tail = text.split(_SPLIT)
    context_ids = tokenizer.encode(head, add_special_tokens=False)
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False) and \
            (not context_ids or context_ids[0] != tokenizer.bos_token_id):
        context_ids = [tokenizer.bos_token_id] + context_ids  # BOS at the very start only, as the model expects
    return context_ids, tokenizer.encode(tail, add_special_tokens=False)


def strip_thinking(answer: str) -> str:
    """Drop <think>...</think> blocks; an unclosed block means the model never got to answer."""
    answer = re.sub(r"<think>.*?</think>", " ", answer, flags=re.DOTALL)
    return answer.split("<think>")[0].strip()


def score(answer: str, needle: Needle) -> tuple[bool, float]:
    """Exact match of each value as a whole number in the answer (thinking removed): (all found, fraction found)."""
    text = strip_thinking(answer)
    found = [v for v in needle.values if re.search(rf"(?<!\d){re.escape(v)}(?!\d)", text)]
    return len(found) == len(needle.values), len(found) / len(needle.values)
