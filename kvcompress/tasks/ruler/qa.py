"""RULER's qa_1 (SQuAD) and qa_2 (HotpotQA) (scripts/data/synthetic/qa.py), from the user's copy of the data.

The project ships no third-party data: `--qa-data DIR` (or KVCOMPRESS_RULER_QA=DIR) points at a folder holding
RULER's files `squad.json` (SQuAD v2 dev) and/or `hotpotqa.json` (HotpotQA dev distractor), as RULER's
download_qa_dataset.sh saves them. Without them, asking for qa_1/qa_2 answers one line.

As RULER: the documents are the distinct paragraphs (SQuAD) or titled paragraphs (HotpotQA), sorted; sample `seed`
asks question `seed` (mod the answerable questions; SQuAD's impossible ones are left out) with its gold documents,
then (SQuAD) the other paragraphs of its article, then random others, shuffled, each "Document i:\\n...". The prompt
is RULER's qa template; split as kvpress's RULER data: the documents are the context, the repeated instruction,
question and " Answer:" prefix are not. Scoring string_match_part (any reference answer). tokens_to_generate = 32.
"""

from __future__ import annotations

import json
import os
import random
from functools import lru_cache
from pathlib import Path

from kvcompress.errors import UserError
from kvcompress.tasks.contract import Question, TaskContext

TASKS = {"qa_1": "squad.json", "qa_2": "hotpotqa.json"}
ENV = "KVCOMPRESS_RULER_QA"
TOKENS_TO_GENERATE = 32
INSTRUCTION = "Answer the question based on the given documents. Only give me the answer and do not output any other words."
HEAD = f"{INSTRUCTION}\n\nThe following are given documents.\n\n"
QUESTION = f"{INSTRUCTION}\n\nQuestion: {{query}}"
ANSWER_PREFIX = "Answer:"
UNAVAILABLE = ("RULER's qa_1 (SQuAD) and qa_2 (HotpotQA) need those datasets, which this project does not ship: "
               "pass --qa-data DIR (RULER's squad.json / hotpotqa.json); without them the RULER average here is over "
               "the 11 synthetic tasks")


def data_file(name: str) -> Path:
    folder = os.environ.get(ENV)
    path = Path(folder) / TASKS[name] if folder else None
    if path is None or not path.is_file():
        raise UserError(UNAVAILABLE if path is None else f"{name}: {path} not found (RULER's file name in --qa-data)")
    return path


@lru_cache(maxsize=4)
def _read(path: str, kind: str) -> tuple[list[dict], list[str]]:
    """(answerable questions, documents): RULER's reading of SQuAD / HotpotQA, written here."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if kind == "qa_1":
        docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
        index = {c: i for i, c in enumerate(docs)}
        qas = []
        for d in data["data"]:
            article = [index[p["context"]] for p in d["paragraphs"]]
            for p in d["paragraphs"]:
                gold = index[p["context"]]
                qas += [{"query": q["question"], "outputs": [a["text"] for a in q["answers"]], "context": [gold],
                         "more": [i for i in article if i != gold]}
                        for q in p["qas"] if not q.get("is_impossible")]
        return qas, docs
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    return [{"query": d["question"], "outputs": [d["answer"]], "more": [],
             "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data], docs


def make(name: str, seed: int) -> TaskContext:
    qas, docs = _read(str(data_file(name)), name)
    if not qas:
        raise UserError(f"{name}: {data_file(name)} holds no answerable question")
    sample = qas[seed % len(qas)]
    gold, more = sample["context"], sample["more"]
    others = [i for i in range(len(docs)) if i not in set(gold) | set(more)]
    random.Random(seed).shuffle(others)  # RULER: random.sample of the remaining documents

    def body(n: int) -> str:
        chosen = gold + more[:max(0, n - len(gold))] + others[:max(0, n - len(gold) - len(more))]
        chosen = [docs[i] for i in chosen]
        random.Random(seed * 7919 + n).shuffle(chosen)
        return HEAD + "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(chosen)) + "\n\n"

    q = Question(QUESTION.format(query=sample["query"]), sample["outputs"], scorer="string_match_part",
                 answer_prefix=ANSWER_PREFIX)
    return TaskContext(name, [q], make_body=body, items_hint=0.006, label=f"{name}:{sample['query'][:60]}",
                       tokens_to_generate=TOKENS_TO_GENERATE, question_separator="", min_items=len(gold),
                       max_items=len(docs))
