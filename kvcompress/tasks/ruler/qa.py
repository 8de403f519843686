"""RULER's qa_1 (SQuAD) and qa_2 (HotpotQA): not generated here, they need the user's copy of the datasets.

RULER builds them from SQuAD v2 dev and HotpotQA dev (scripts/data/synthetic/json/download_qa_dataset.sh); the
project ships no third-party data, so `--tasks ruler` runs the 11 synthetic tasks and names these two unavailable.
"""

from __future__ import annotations

TASKS = {"qa_1": "SQuAD", "qa_2": "HotpotQA"}
UNAVAILABLE = ("RULER's qa_1 (SQuAD) and qa_2 (HotpotQA) need those datasets, which this project does not ship: "
               "the RULER average here is over the 11 synthetic tasks")
