"""The task families test_long_context.py runs (`--tasks`), each a module making a TaskContext from a seed.

`niah` is the needle of niah.py (its own kinds and scoring); the others meet tasks/contract.py. RULER's own 11
synthetic tasks (tasks/ruler/) are selected one by one or all with `--tasks ruler`; their makers also take the
context length (cwe and fwe change shape with it, as in RULER).
"""

from __future__ import annotations

from kvcompress.errors import UserError
from kvcompress.tasks import common_words, frequent_words, multiquery, niah, nolima, ruler, variable_tracking
from kvcompress.tasks.contract import Question, TaskContext

FAMILIES = {
    "niah": "needle in a haystack (--needle picks the kind)",
    "multiquery": "RULER niah_multiquery: 4 keys asked at once, every number must be named",
    "vt": "RULER variable tracking: name every variable of a chain VAR X = VAR Y (two chains)",
    "cwe": "RULER common-words extraction: the 10 most common words of a numbered list",
    "fwe": "RULER frequent-words extraction: the 3 most frequent coded words (Zipf, alpha 2)",
    "nolima": "NoLiMa-style needle: the question names a city, the needle only its landmark",
    **{name: "RULER's own " + ruler.RULER_NAMES.get(name, name) for name in ruler.TASKS},
    **{name: f"RULER's {name} ({ruler.qa.TASKS[name]} from --qa-data)" for name in ruler.QA},
}
MAKERS = {"multiquery": multiquery.make, "vt": variable_tracking.make, "cwe": common_words.make,
          "fwe": frequent_words.make, "nolima": nolima.make}
CHEAP = "niah,multiquery,vt,nolima"  # `--tasks cheap`: short answers (cwe lists 10 words, fwe reads a whole list)
RULER = ",".join(ruler.TASKS)  # `--tasks ruler`: RULER's 11 synthetic tasks
HAYSTACK_FREE = ("cwe", "fwe", *ruler.TASKS, *ruler.QA)  # their context is their own (RULER: its own haystack): no depth grid
SINGLE_QUESTION = ("cwe", "fwe", *ruler.TASKS, *ruler.QA)  # one natural question per context


def parse_tasks(text: str) -> list[str]:
    for name in (t.strip() for t in text.split(",")):
        if name in ruler.QA:
            ruler.qa.data_file(name)  # no data: one line naming them unavailable
    aliases = {"cheap": CHEAP, "ruler": RULER}
    names = [t.strip() for part in text.split(",") for t in aliases.get(part.strip(), part).split(",") if t.strip()]
    unknown = [t for t in names if t not in FAMILIES]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    if not names:
        raise UserError("--tasks is empty")
    return list(dict.fromkeys(names))


def niah_questions(seed: int, questions: int) -> TaskContext:
    """niah with --questions K: K single needles (own keys), question i asks needle i; the others are distractors."""
    needle = niah.make_needle("multikey", seed, max(2, questions))
    values = [s.rsplit(" ", 1)[1].rstrip(".") for s in needle.sentences]
    keys = [s.split(" for ", 1)[1].split(" is:")[0] for s in needle.sentences]
    qs = [Question(niah.QUESTION.format(k), [v], distractors=[d for d in values if d != v])
          for k, v in zip(keys[:questions], values)]
    return TaskContext("niah", qs, needle.sentences[:max(2, questions)], label=needle.label)


def make(family: str, seed: int, questions: int = 1, context_tokens: int | None = None):
    if questions > 1 and family in SINGLE_QUESTION:
        raise UserError(f"{family} asks one question per context; --questions > 1 applies to "
                        f"{', '.join(f for f in FAMILIES if f not in SINGLE_QUESTION)}")
    if family in ruler.MAKERS or family in ruler.QA:
        return ruler.make(family, seed, context_tokens or 4096)
    return niah_questions(seed, questions) if family == "niah" else MAKERS[family](seed, questions)
