"""RULER's variable tracking (vt): chains of assignments `VAR X = VAR Y` hidden in the haystack.

After RULER's template (scripts/data/synthetic/variable_tracking.py): each chain starts with `VAR A = <number>`
and passes the value along `hops` assignments; the question gives the number and the answer must name every
variable of its chain (string_match_all). Unlike RULER, no answer prefix follows the assistant header: with it,
SmolLM2 continued the haystack instead of answering; the question asks for the names instead. There are always at least two chains, so an answer that lists every
variable it saw names another chain's variables and is not correct. The links of all chains are interleaved in
order (each assignment after the one it copies), from the requested depth to the end of the haystack.
"""

from __future__ import annotations

import random
import string

from kvcompress.tasks.contract import Question, TaskContext

HOPS = 1  # assignments after the first: each chain has HOPS + 1 variables
MIN_CHAINS = 2
INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text."


def make(seed: int, questions: int = 1, hops: int = HOPS) -> TaskContext:
    rng = random.Random(seed)
    chains_n = max(MIN_CHAINS, questions)
    names: list[str] = []
    while len(names) < chains_n * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    values = [str(v) for v in rng.sample(range(10_000, 100_000), chains_n)]
    chains = [names[c * (hops + 1):(c + 1) * (hops + 1)] for c in range(chains_n)]
    sentences = []
    for step in range(hops + 1):  # link `step` of every chain, chains in a shuffled order at each step
        for c in rng.sample(range(chains_n), chains_n):
            source = values[c] if step == 0 else f"VAR {chains[c][step - 1]}"
            sentences.append(f"VAR {chains[c][step]} = {source}.")
    qs = [Question(f"Find all variables that are assigned the value {values[c]} in the text above. Answer with "
                   "their names only.",
                   list(chains[c]), distractors=[n for d, chain in enumerate(chains) if d != c for n in chain])
          for c in range(questions)]
    return TaskContext("vt", qs, sentences, ordered=True, instruction=INSTRUCTION,
                       label="vt:" + ";".join(f"{v}->{'>'.join(ch)}" for v, ch in zip(values, chains)))
