"""The contract every RULER-style task family meets: a context, its questions, their expected answers, a scorer.

A family module (multiquery.py, variable_tracking.py, common_words.py, frequent_words.py, nolima.py) makes a
`TaskContext` from a seed: either sentences hidden in a haystack (needle-style, placed like niah's needles) or a
context of its own built from n items (the word lists of cwe and fwe). `build_prompt` sizes it to a token count on
the model's tokenizer exactly as niah sizes a needle prompt (whole prompt = context + first question, within 1 %),
renders it through the chat template, and returns one question part per question: the context is compressed once,
each question is fed after it (kvpress's query-agnostic protocol; --questions K asks several over one cache).

Scoring is RULER's, as published (scripts/eval/synthetic/constants.py): string_match_all = fraction of the
expected strings found in the answer (case-insensitive substring); string_match_part = 1 if any is found. The
record's `score` is that number; `correct` additionally needs every expected string and no distractor (an answer
listing every variable of a haystack is not tracking). A family with a baseline (cwe, fwe, nolima) sets
`TaskContext.chance`: the score of a strategy without the tested ability on the prompt's text, recorded with each
answer (`BenchmarkResult.chance`) so the task table can show it beside the scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from kvcompress.errors import UserError
from kvcompress.prompt import Prompt, token_ids
from kvcompress.tasks import niah

if TYPE_CHECKING:
    import torch

SCORERS = ("string_match_all", "string_match_part")


@dataclass
class Question:
    text: str  # asked after the context (fed after compression)
    answers: list[str]  # what the answer must contain
    scorer: str = "string_match_all"
    distractors: list[str] = field(default_factory=list)  # naming one makes the answer not correct
    answer_prefix: str = ""  # RULER's answer prefix, placed after the chat template's assistant header


@dataclass
class TaskContext:
    family: str
    questions: list[Question]
    sentences: list[str] = field(default_factory=list)  # hidden in the haystack, like needles
    ordered: bool = False  # sentences must appear in list order (a chain of assignments)
    instruction: str = ""  # opens the user message, before the context
    make_body: Callable[[int], str] | None = None  # a context of its own from n items (replaces the haystack)
    items_hint: int = 0  # make_body: items per token, a first guess for the sizing search
    label: str = ""
    chance: Callable[[str], float] | None = None  # the family's baseline score, from the context text (its module)
    # RULER's tasks (tasks/ruler/): the generation budget of RULER's constants.py. RULER's context length counts the
    # generated tokens, so the prompt is sized to target - tokens_to_generate, never above it (see _fit_below)
    tokens_to_generate: int | None = None
    question_separator: str = "\n\n"  # between the context and the question (RULER: its template's "\n")
    min_items: int = 1  # make_body's smallest n (fewer makes no valid task)
    max_items: int | None = None  # make_body's largest n (a finite source: RULER's qa documents)
    shorter: Callable[[], TaskContext] | None = None  # the same task in less text, for contexts too small for this one

    @property
    def uses_haystack(self) -> bool:
        return self.make_body is None


class ContextTooSmall(UserError):
    """A context shorter than a task's smallest prompt on this tokenizer (cell.build_all names them all at once)."""

    def __init__(self, family: str, needed: int, asked: int, why: str = ""):
        self.family, self.needed, self.asked = family, needed, asked
        super().__init__(f"{family} needs a context of at least {needed} tokens on this tokenizer{why}; {asked} is "
                         "too small")


@dataclass
class TaskPrompt:
    prompt: Prompt  # context + the first question
    task: TaskContext
    question_ids: list[torch.Tensor]  # one (1, Q) tensor per question
    text: str = field(repr=False, default="")  # the context (before the chat template)
    depth_achieved: float | None = None
    chance: float | None = None  # task.chance on this text


def build_prompt(tokenizer, target_tokens: int, depth: float | None, task: TaskContext, haystack: str = "noise",
                 thinking: bool = False, tolerance: float = 0.01) -> TaskPrompt:
    if target_tokens is None or target_tokens < 1:
        raise UserError(f"a task prompt needs a positive token count (got {target_tokens})")
    if task.tokens_to_generate is not None:
        best = _fit_below(tokenizer, target_tokens, task, thinking, tolerance)
    elif task.uses_haystack:
        best = _size_haystack(tokenizer, target_tokens, depth, task, haystack, thinking)
    else:
        smallest = _attempt(tokenizer, task, task.make_body(task.min_items), None, thinking)[0]
        if smallest > target_tokens * (1 + tolerance):
            if task.shorter is not None:  # e.g. cwe without its solved example
                return build_prompt(tokenizer, target_tokens, depth, task.shorter(), haystack, thinking, tolerance)
            raise ContextTooSmall(task.family, smallest, target_tokens)
        best = _size_items(tokenizer, target_tokens, task, thinking)
    total, text, achieved, context_ids, first = best
    if task.tokens_to_generate is None and abs(total - target_tokens) > tolerance * target_tokens:
        raise UserError(f"could not size the {task.family} prompt to {target_tokens} tokens (got {total})")
    questions = [token_ids(first)] + [token_ids(_render(tokenizer, task, text, thinking, i)[1])
                                           for i in range(1, len(task.questions))]
    chance = task.chance(text) if task.chance else None
    prompt = Prompt(token_ids(context_ids), questions[0],
                    meta={"depth": depth, "depth_achieved": achieved, "needle": task.label, "chance": chance})
    return TaskPrompt(prompt, task, questions, text, achieved, chance)


def _size_haystack(tokenizer, target_tokens, depth, task, haystack, thinking):
    """niah's sizing (`niah.size_to_target`): haystack tokens = target - overhead, corrected for the seams."""
    hay_ids = niah._haystack_ids(tokenizer, haystack, target_tokens)

    def attempt(budget: int):
        if budget <= 16:
            raise UserError(f"{target_tokens} tokens cannot hold the chat template, question and {task.family} text")
        text, achieved = niah._place(tokenizer, hay_ids, budget, depth or 0.0, task, ordered=task.ordered)
        return _attempt(tokenizer, task, text, achieved, thinking)

    overhead = sum(len(x) for x in _render(tokenizer, task, " ".join(task.sentences), thinking, 0))
    return niah.size_to_target(target_tokens, target_tokens - overhead, attempt)


def _size_items(tokenizer, target_tokens, task, thinking):
    """A context of n items: bisect n (tokens grow with n, up to the seams of a reshuffle); the closest attempt."""
    lo, hi, best = 1, max(8, int(target_tokens * task.items_hint * 2)), None
    while True:
        last = _attempt(tokenizer, task, task.make_body(hi), None, thinking)
        best = niah.closer(best, last, target_tokens)
        if last[0] >= target_tokens or hi > 10 * target_tokens:  # the bracket comes from this attempt, not the best
            break
        lo, hi = hi, hi * 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        last = _attempt(tokenizer, task, task.make_body(mid), None, thinking)
        best = niah.closer(best, last, target_tokens)
        if last[0] == target_tokens:
            break
        lo, hi = (mid, hi) if last[0] < target_tokens else (lo, mid)
    return best


_LAST_N: dict = {}  # (family, target, id(tokenizer)) -> the n the last sample took: the next one's first guess


def _fit_below(tokenizer, target_tokens, task, thinking, tolerance):
    """RULER's rule: the prompt + tokens_to_generate fit the context. The largest n whose prompt is at most
    target - tokens_to_generate; it must come within `tolerance` of that budget, or within one step of n where one
    step is coarser (a needle-haystack line of UUIDs). Tokens grow about linearly with n (up to the seams), so the
    search interpolates (every fourth step bisects, which bounds it) from the n the previous sample of this task and
    length took, as RULER reuses its first sample's haystack size: a 32K prompt takes ~4 tokenizations, not ~17."""
    budget = target_tokens - task.tokens_to_generate
    lo = task.min_items
    smallest = best = _attempt(tokenizer, task, task.make_body(lo), None, thinking)
    if best[0] > budget:
        raise ContextTooSmall(task.family, best[0] + task.tokens_to_generate, target_tokens,
                              f" (its smallest prompt plus {task.tokens_to_generate} generated tokens)")
    key = (task.family, target_tokens, id(tokenizer))
    n, hi, over = _LAST_N.get(key) or max(lo + 1, int(budget * task.items_hint)), None, None
    for step in range(64):
        if task.max_items is not None:
            n = min(n, task.max_items)
        n = max(n, lo + 1) if hi is None else min(max(n, lo + 1), hi - 1)
        last = _attempt(tokenizer, task, task.make_body(n), None, thinking)
        if last[0] <= budget:
            lo, best = n, last
            if n == task.max_items:
                return best  # every item fits (RULER's qa: all the documents), shorter than the budget
        else:
            hi, over = n, last
        if hi is not None and lo + 1 >= hi:
            break
        if hi is None:  # no overshoot yet: aim just past the budget at the slope seen so far
            slope = max((best[0] - smallest[0]) / max(lo - task.min_items, 1), 1e-3)
            n = lo + int((budget - best[0]) / slope) + 1
        elif step % 4 == 3:
            n = (lo + hi) // 2
        else:
            n = lo + int((budget - best[0]) * (hi - lo) / max(over[0] - best[0], 1))
    _LAST_N[key] = lo
    unit = over[0] - best[0] if over is not None else 0  # what one more item adds: the finest size allowed here
    if budget - best[0] > max(tolerance * budget, unit):
        raise UserError(f"could not size the {task.family} prompt to {budget} tokens (got {best[0]})")
    return best


def _attempt(tokenizer, task, text, achieved, thinking):
    """(total tokens, text, depth achieved, context ids, first question's ids) of one candidate context."""
    context_ids, question_ids = _render(tokenizer, task, text, thinking, 0)
    return len(context_ids) + len(question_ids), text, achieved, context_ids, question_ids


def _render(tokenizer, task: TaskContext, text: str, thinking: bool, index: int) -> tuple[list[int], list[int]]:
    q = task.questions[index]
    context = (task.instruction + "\n\n" if task.instruction else "") + text
    return niah.render(tokenizer, context, q.text, thinking, answer_prefix=q.answer_prefix,
                       separator=task.question_separator)


# --- scoring (RULER's metrics) -------------------------------------------------------------------------------------

def string_match_all(answer: str, refs: list[str]) -> float:
    text = answer.lower()
    return sum(r.lower() in text for r in refs) / len(refs)


def string_match_part(answer: str, refs: list[str]) -> float:
    text = answer.lower()
    return float(max(r.lower() in text for r in refs))


def _names(text: str, word: str) -> bool:
    """A whole-word mention (for distractors: '12' must not count inside '123')."""
    return re.search(rf"(?<![\w]){re.escape(word.lower())}(?![\w])", text.lower()) is not None


def score(answer: str, question: Question) -> tuple[bool, float]:
    """(correct, RULER score). Thinking is removed first; the prefix the prompt supplied is part of no answer."""
    text = niah.strip_thinking(answer)
    if question.scorer not in SCORERS:
        raise ValueError(f"unknown scorer {question.scorer!r}")
    value = (string_match_all if question.scorer == "string_match_all" else string_match_part)(text, question.answers)
    full = value == 1.0 if question.scorer == "string_match_all" else value > 0
    return full and not any(_names(text, d) for d in question.distractors), value


def grade(record, task: TaskContext, prompt: Prompt, index: int = 0) -> None:
    """Fill a BenchmarkResult's quality fields from its answer to question `index`."""
    answer = record.answer or ""
    q = task.questions[index]
    record.needle = task.label
    record.correct, record.score = score(answer, q)
    record.depth_achieved = prompt.meta.get("depth_achieved")
    record.task_family, record.scorer, record.expected = task.family, q.scorer, list(q.answers)
    record.chance = prompt.meta.get("chance")
    if niah.thinking_unfinished(answer):
        record.notes = list(record.notes) + ["the think block was not closed within max_new_tokens: no answer"]
