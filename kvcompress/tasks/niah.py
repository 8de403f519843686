"""Needle in a haystack: needles placed at a token depth, prompts sized to a token count, answers scored.

Prompts follow kvpress's query-agnostic protocol: the context (chat-template prefix + haystack with needles) is
compressed; the question (with the template's assistant suffix) is fed afterwards. Depth is a fraction of the
haystack's tokens (needles not counted), snapped back to the start of a sentence; the depth reached after the
snap is recorded. Only text is tokenized (`add_special_tokens=False`), so no BOS or other special token can
land inside the context (the bug that corrupts some public NIAH harnesses).
"""

from __future__ import annotations

import random
import re
import weakref
from dataclasses import dataclass, field

from kvcompress.errors import UserError
from kvcompress.prompt import Prompt, token_ids
from kvcompress.tasks.haystack import haystack_text

NEEDLE_KINDS = {
    "fact": "one fact: 'The secret number is V.'",
    "single": "RULER niah_single: 'One of the special magic numbers for KEY is: V.'",
    "multikey": "RULER niah_multikey: the asked key plus distractor keys with their own numbers (--needles keys)",
    "multivalue": "RULER niah_multivalue: several numbers for one key, all must be recalled (--needles values)",
}
WORDS = ("amber apple arrow basil cedar comet coral delta ember fable falcon garnet harbor iris jade kettle lantern "
          "maple meadow nectar onyx orchid pebble quartz raven saffron sparrow thistle tulip velvet willow zephyr").split()
_SPLIT = "\u2063KVCOMPRESS-SPLIT\u2063"  # marks where the context ends inside the rendered chat template
TEMPLATE = "One of the special magic numbers for {} is: {}."
QUESTION = "What is the special magic number for {} mentioned in the provided text? Answer with the number only."


@dataclass
class Needle:
    kind: str
    key: str | None
    values: list[str]  # what the answer must contain, every one of them
    sentences: list[str]  # inserted into the haystack, the first at the requested depth
    question: str
    distractors: list[str] = field(default_factory=list)  # other keys' values: naming one makes the answer wrong

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.key or ''}={','.join(self.values)}"


def make_needle(kind: str, seed: int, count: int = 4) -> Needle:
    """A needle with fresh, distinct 7-digit values; `count` is the number of keys (multikey) or values (multivalue)."""
    if kind not in NEEDLE_KINDS:
        raise UserError(f"unknown needle kind {kind!r}; choose from {', '.join(NEEDLE_KINDS)}")
    if kind in ("multikey", "multivalue") and not 2 <= count <= len(WORDS) // 2:
        raise UserError(f"a {kind} needle needs between 2 and {len(WORDS) // 2} needles (got {count})")
    n = count if kind in ("multikey", "multivalue") else 1
    rng = random.Random(seed)
    numbers = [str(v) for v in rng.sample(range(1_000_000, 10_000_000), n)]
    words = rng.sample(WORDS, 2 * n)  # every key of a prompt is two words no other key uses
    keys = [f"{a}-{b}" for a, b in zip(words[::2], words[1::2])]
    if kind == "fact":
        return Needle(kind, None, numbers[:1], [f"The secret number is {numbers[0]}."],
                      "What is the secret number mentioned in the text? Answer with the number only.")
    if kind == "single":
        return Needle(kind, keys[0], numbers[:1], [TEMPLATE.format(keys[0], numbers[0])], QUESTION.format(keys[0]))
    if kind == "multikey":
        return Needle(kind, keys[0], numbers[:1], [TEMPLATE.format(k, v) for k, v in zip(keys, numbers)],
                      QUESTION.format(keys[0]), distractors=numbers[1:])
    return Needle(kind, keys[0], numbers, [TEMPLATE.format(keys[0], v) for v in numbers],
                  f"What are all the special magic numbers for {keys[0]} mentioned in the provided text? "
                  "List every one of them.")


@dataclass
class NeedlePrompt:
    prompt: Prompt
    needle: Needle
    depth: float  # requested, as a fraction of the haystack's tokens
    target_tokens: int
    text: str = field(repr=False, default="")  # the context (haystack with needles), before the chat template
    depth_achieved: float = 0.0  # the depth after the snap to a sentence start, same units


def build_prompt(tokenizer, target_tokens: int, depth: float, needle: Needle, haystack: str = "noise",
                 thinking: bool = False, tolerance: float = 0.01) -> NeedlePrompt:
    """Size the whole prompt (context + question) to `target_tokens` (within `tolerance`) with this tokenizer."""
    if not 0.0 <= depth <= 1.0:
        raise UserError(f"depth {depth:g} must be in [0, 1] (a fraction of the context)")
    if target_tokens is None or target_tokens < 1:
        raise UserError(f"a needle prompt needs a positive token count (got {target_tokens})")
    hay_ids = _haystack_ids(tokenizer, haystack, target_tokens)

    def attempt(budget: int):
        if budget <= 16:
            raise UserError(f"{target_tokens} tokens cannot hold the chat template, question and needle")
        context_text, achieved = _place(tokenizer, hay_ids, budget, depth, needle)
        context_ids, question_ids = render(tokenizer, context_text, needle.question, thinking)
        return len(context_ids) + len(question_ids), context_text, achieved, context_ids, question_ids

    best = size_to_target(target_tokens, target_tokens - _overhead(tokenizer, needle, thinking), attempt)
    total, context_text, achieved, context_ids, question_ids = best
    if abs(total - target_tokens) > tolerance * target_tokens:
        raise UserError(f"could not size the prompt to {target_tokens} tokens (got {total})")
    prompt = Prompt(token_ids(context_ids), token_ids(question_ids),
                    meta={"depth": depth, "depth_achieved": achieved, "needle": needle.label})
    return NeedlePrompt(prompt, needle, depth, target_tokens, context_text, achieved)


def size_to_target(target_tokens: int, budget: int, attempt, steps: int = 8) -> tuple:
    """The closest to `target_tokens` of a few attempts, `attempt(budget)` -> (total tokens, ...), from a first
    haystack budget. Re-tokenizing the assembled text merges or splits a few tokens at the seams, so each next budget
    corrects the last one by the error of the total that budget gave (correcting it by an earlier, closer attempt's
    error walks away from the target once an attempt overshoots). A correction back to a budget already tried would
    repeat itself to the end (b -> T+1, b-1 -> T-1, b ...): it moves on past the tried ones instead."""
    best, tried = None, set()
    for _ in range(steps):
        last = attempt(budget)
        tried.add(budget)
        best = closer(best, last, target_tokens)
        if last[0] == target_tokens:
            break
        step = 1 if last[0] < target_tokens else -1
        budget += target_tokens - last[0]
        while budget in tried:
            budget += step
    return best


def closer(best: tuple | None, last: tuple, target_tokens: int) -> tuple:
    """Of two attempts (total tokens first), the one nearer the target; the earlier one on a tie."""
    return last if best is None or abs(last[0] - target_tokens) < abs(best[0] - target_tokens) else best


_HAYSTACK_CACHE: dict = {}  # (id(tokenizer), source) -> (weak reference to that tokenizer, token ids)


def _haystack_ids(tokenizer, source: str, target_tokens: int) -> list[int]:
    key = (id(tokenizer), source)
    ref, ids = _HAYSTACK_CACHE.get(key, (None, []))
    if ref is None or ref() is not tokenizer or len(ids) < target_tokens * 1.2:  # ids are reused after GC: check
        text = haystack_text(source, min_chars=int(target_tokens * 6))  # >= 1 token per ~4-6 characters
        ids = tokenizer.encode(text, add_special_tokens=False, verbose=False)
        _HAYSTACK_CACHE[key] = (weakref.ref(tokenizer), ids)
    return ids


def _overhead(tokenizer, needle: Needle, thinking: bool) -> int:
    context_ids, question_ids = render(tokenizer, " ".join(needle.sentences), needle.question, thinking)
    return len(context_ids) + len(question_ids)


def _place(tokenizer, hay_ids: list[int], budget: int, depth: float, needle: Needle, ordered: bool = False
           ) -> tuple[str, float]:
    """Haystack of about `budget` tokens including the needles, the asked needle at `depth`, the rest spread out
    (`ordered`: the sentences in list order, the first at `depth`, the others evenly spaced to the end).

    Returns the text and the depth reached: haystack tokens before the asked needle / haystack tokens (needles not
    counted), after the snap to a sentence start.
    """
    needle_tokens = sum(len(tokenizer.encode(" " + s, add_special_tokens=False)) for s in needle.sentences)
    body = hay_ids[: max(1, budget - needle_tokens)]
    n = len(needle.sentences)
    depths = [depth + i * (1 - depth) / n for i in range(n)] if ordered else [depth] + _spread(depth, n - 1)
    cuts = sorted((_sentence_start(tokenizer, body, round(d * len(body))), i) for i, d in enumerate(depths))
    text, last = "", 0
    for cut, i in cuts:
        text += _decode(tokenizer, body[last:cut])
        text += "" if not text or text[-1].isspace() else " "
        text += needle.sentences[i]
        last = cut
    rest = _decode(tokenizer, body[last:])
    text += rest if not rest or rest[0].isspace() else " " + rest
    asked_cut = next(cut for cut, i in cuts if i == 0)
    return text.strip(), round(asked_cut / len(body), 4)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False) if ids else ""


def _spread(depth: float, n: int) -> list[float]:
    """Depths for the other needles of a multi-needle prompt: evenly spaced, away from the asked one."""
    slots = [(i + 0.5) / n for i in range(n)] if n else []
    return [s if abs(s - depth) > 0.05 else (s + 0.5 / max(n, 1)) % 1.0 for s in slots]


def _sentence_start(tokenizer, ids: list[int], position: int) -> int:
    """Move `position` back to just after the nearest preceding sentence end (or to 0).

    A sentence ends with . ! ? followed by white space (not "3.5" or "e.g.x"), or with a line break.
    """
    position = max(0, min(position, len(ids)))
    following = tokenizer.decode(ids[position: position + 1]) if position < len(ids) else " "
    for i in range(position, 0, -1):
        token = tokenizer.decode(ids[i - 1: i])
        if token.endswith("\n") or (token.rstrip().endswith((".", "!", "?"))
                                    and (token[-1].isspace() or not following or following[0].isspace())):
            return i
        following = token
    return 0


def render(tokenizer, context: str, question: str, thinking: bool, answer_prefix: str = "",
           separator: str = "\n\n") -> tuple[list[int], list[int]]:
    """Token ids of the context part and the question part of the chat-formatted prompt (`answer_prefix`, RULER's
    start of the answer, follows the assistant header; `separator` opens the question part: kvpress's \\n\\n, or
    RULER's template's own text between context and question)."""
    content = context + _SPLIT + (separator + question if question else "")
    messages = [{"role": "user", "content": content}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=thinking)
    else:
        text = content + "\n"
    head, tail = text.split(_SPLIT)
    tail += answer_prefix
    context_ids = tokenizer.encode(head, add_special_tokens=False)
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False) and \
            (not context_ids or context_ids[0] != tokenizer.bos_token_id):
        context_ids = [tokenizer.bos_token_id] + context_ids  # BOS at the very start only, as the model expects
    return context_ids, tokenizer.encode(tail, add_special_tokens=False)


# --- scoring --------------------------------------------------------------------------------------------------------

_CLOSED_THINK = re.compile(r"<think>.*?</think>", flags=re.DOTALL)
_DIGIT_GROUPING = re.compile(r"(?<=\d)[,_\u2009\u202f](?=\d{3}(?!\d))")  # 7,654,321 -> 7654321 (not plain spaces)


def strip_thinking(answer: str) -> str:
    """The answer without its reasoning: closed <think> blocks removed; text before a lone </think> removed (the
    template opened the block); an unclosed <think> block means the model never got to answer."""
    answer = _CLOSED_THINK.sub(" ", answer)
    if "</think>" in answer:
        answer = answer.rsplit("</think>", 1)[1]
    return answer.split("<think>")[0].strip()


def thinking_unfinished(answer: str) -> bool:
    """True when the output ends inside a think block (the budget ran out before an answer)."""
    return "<think>" in _CLOSED_THINK.sub(" ", answer)


def _names(text: str, number: str) -> bool:
    return re.search(rf"(?<!\d){re.escape(number)}(?!\d)", text) is not None


def score(answer: str, needle: Needle) -> tuple[bool, float]:
    """(correct, fraction of values found). A value counts when it appears as a whole number in the answer (after
    removing thinking and digit grouping), so verbose answers are fine; correct = every value found and no
    distractor's value named (an answer listing all the numbers of a multikey haystack is not a retrieval)."""
    text = _DIGIT_GROUPING.sub("", strip_thinking(answer))
    found = sum(_names(text, v) for v in needle.values)
    hedged = any(_names(text, d) for d in needle.distractors)
    return found == len(needle.values) and not hedged, found / len(needle.values)


def grade(record, needle: Needle, prompt: Prompt) -> None:
    """Fill a BenchmarkResult's retrieval fields from its answer."""
    answer = record.answer or ""
    record.needle = needle.label
    record.correct, record.score = score(answer, needle)
    record.depth_achieved = prompt.meta.get("depth_achieved")
    if thinking_unfinished(answer):
        record.notes = list(record.notes) + ["the think block was not closed within max_new_tokens: no answer"]
