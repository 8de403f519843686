"""RULER's synthetic suite (hsiehjackson/RULER scripts/synthetic.yaml), written from reading RULER (Apache-2.0).

The 11 synthetic tasks, each a maker `(seed, context tokens) -> TaskContext` meeting tasks/contract.py with RULER's
template, answer prefix, tokens_to_generate and string_match_all scoring (x100 in the tables); qa_1 and qa_2 when
the user points at SQuAD / HotpotQA (qa.py). vt, cwe and fwe are
named ruler_vt, ruler_cwe, ruler_fwe here: the project's own RULER-style families already hold those names.
"""

from __future__ import annotations

from kvcompress.tasks.ruler import common_words, freq_words, niah, qa, variable_tracking

MAKERS = {name: (lambda seed, context, name=name: niah.make(name, seed)) for name in niah.TASKS}
MAKERS["ruler_vt"] = lambda seed, context: variable_tracking.make(seed)
MAKERS["ruler_cwe"] = common_words.make
MAKERS["ruler_fwe"] = freq_words.make
TASKS = tuple(MAKERS)  # the 11 synthetic tasks, in RULER's order
QA = tuple(qa.TASKS)  # qa_1, qa_2: from the user's SQuAD / HotpotQA files (--qa-data)
RULER_NAMES = {"ruler_vt": "vt", "ruler_cwe": "cwe", "ruler_fwe": "fwe"}  # RULER's own name where ours differs
TOKENS_TO_GENERATE = {**{n: niah.TOKENS_TO_GENERATE for n in niah.TASKS},
                      "ruler_vt": variable_tracking.TOKENS_TO_GENERATE,
                      "ruler_cwe": common_words.TOKENS_TO_GENERATE, "ruler_fwe": freq_words.TOKENS_TO_GENERATE,
                      **{n: qa.TOKENS_TO_GENERATE for n in qa.TASKS}}


def make(name: str, seed: int, context_tokens: int):
    return qa.make(name, seed) if name in qa.TASKS else MAKERS[name](seed, context_tokens)
