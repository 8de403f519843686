"""RULER's variable tracking `vt` (scripts/synthetic.yaml: one chain, four hops; generator
scripts/data/synthetic/variable_tracking.py). Written from reading RULER; the template is RULER's prompt text
(its typo "assgined" included), the code is ours.

A chain `VAR A = 12345`, `VAR B = VAR A `, ... (five variables of five capitals) is spread at random lines of RULER's
noise paragraph (one per line, lines joined by " "); the question gives the number, the answer must name the five
variables (string_match_all). As RULER's default (`add_fewshot`), a solved example opens the prompt: a chain of
three-capital variables in 10 noise lines (where RULER's own search for its 500-token example stops on the Qwen3
tokenizer: 15 lines make 485 tokens, + 30 > 500) with RULER's whitespace-collapsed template, whose base-template cut
drops the question's last word ("above."), and its answer.

Split as kvpress's RULER data: context = example + instruction + noise with the chain + "\\n"; question = "Question:
Find all variables ..."; answer prefix after it. tokens_to_generate = 30. The noise is sized in sentences (the last
line may stop early; RULER's step is 10 lines) so the prompt fits the budget within 1 %.
"""

from __future__ import annotations

import random
import string

from kvcompress.tasks.contract import Question, TaskContext
from kvcompress.tasks.ruler.niah import NOISE_SENTENCES, sentences

TOKENS_TO_GENERATE = 30
HOPS = 4
CHAINS = 1
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text."
QUESTION = "Question: Find all variables that are assigned the value {query} in the text above."
ANSWER_PREFIX = ("Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
                 "assgined the value {query}, they are: ")
EXAMPLE_NOISES = 10  # RULER's search (5 lines a step while example + 30 < 500 tokens) stops at 10 on Qwen3


def chain(rng: random.Random, letters: int, hops: int = HOPS) -> tuple[list[str], list[str], str]:
    """(variables, assignment statements, the value), as RULER writes them (trailing space on the copies)."""
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99998))  # RULER: np.random.randint(10000, 99999), upper bound excluded
    return names, [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)], value


def noisy(rows: list[str], statements: list[str], rng: random.Random) -> str:
    """RULER's insertion: statement j at sorted random line p_j (+ j for the ones already inserted)."""
    rows = list(rows)
    for j, p in enumerate(sorted(rng.sample(range(len(rows)), len(statements)))):
        rows.insert(p + j, statements[j])
    return " ".join(rows).replace(". \n", ".\n")


def noise_rows(n_sentences: int) -> list[str]:
    parts = sentences(NOISE.strip())
    rows = [NOISE] * (n_sentences // NOISE_SENTENCES)
    if n_sentences % NOISE_SENTENCES:
        rows.append(" ".join(parts[:n_sentences % NOISE_SENTENCES]) + "\n")
    return rows


def example(rng: random.Random) -> str:
    names, statements, value = chain(rng, 3)
    text = noisy([NOISE] * EXAMPLE_NOISES, statements, rng)
    head = " ".join(f"{INSTRUCTION}\n\n{{context}}\n{QUESTION}".split()[:-1])  # RULER's cut, last word dropped
    prefix = ANSWER_PREFIX.format(num_v=HOPS + 1, query=value)
    return head.replace("{context}", text).replace("{query}", value) + " " + prefix + " " + " ".join(names)


def make(seed: int) -> TaskContext:
    rng = random.Random(seed)
    shot = example(rng)
    names, statements, value = chain(rng, 5)

    def body(n: int) -> str:
        text = noisy(noise_rows(n), statements, random.Random(seed * 7919 + n))
        return f"{shot}\n\n\n\n{INSTRUCTION}\n\n{text}\n"

    q = Question(QUESTION.format(query=value), names,
                 answer_prefix=ANSWER_PREFIX.format(num_v=HOPS + 1, query=value))
    return TaskContext("ruler_vt", [q], make_body=body, items_hint=0.2, label=f"ruler_vt:{value}->{'>'.join(names)}",
                       tokens_to_generate=TOKENS_TO_GENERATE, question_separator="", min_items=NOISE_SENTENCES * (len(statements) - 1) + 1)  # a line per statement
