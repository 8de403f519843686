"""A cell of a run grid: one prompt, described by parameters so any process can rebuild it token for token."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from kvcompress.engine.generate import Prompt
from kvcompress.tasks import niah


@dataclass
class Cell:
    target_tokens: int
    depth: float = 0.5
    needle_kind: str = "single"
    needle_seed: int = 0
    needle_count: int = 4
    haystack: str = "noise"
    thinking: bool = False
    text: str | None = None  # a plain user prompt instead of a needle prompt (test_dms_inference.py)
    prompt_id: str | None = None
    task_family: str = "niah"  # tasks/families.py; "niah" with one question is niah.py's needle
    questions: int = 1  # > 1: questions asked over one compressed context (prompt.meta["questions"])

    @property
    def uses_contract(self) -> bool:
        return self.text is None and (self.task_family != "niah" or self.questions > 1)

    def task(self):
        """The needle or task this cell asks about (rebuilt from its seed), None for a plain prompt."""
        if self.text is not None:
            return None
        if self.uses_contract:
            from kvcompress.tasks import families

            return families.make(self.task_family, self.needle_seed, self.questions)
        return niah.make_needle(self.needle_kind, self.needle_seed, self.needle_count)

    def build(self, tokenizer) -> tuple[Prompt, niah.Needle | None]:
        if self.uses_contract:
            from kvcompress.tasks import contract

            task = self.task()
            built = contract.build_prompt(tokenizer, self.target_tokens, self.depth, task, self.haystack,
                                          self.thinking)
            built.prompt.meta["questions"] = built.question_ids
            return built.prompt, task
        if self.text is not None:
            context_ids, question_ids = niah.render(tokenizer, self.text, "", self.thinking)
            return Prompt(torch.tensor([context_ids]), torch.tensor([question_ids])), None
        needle = niah.make_needle(self.needle_kind, self.needle_seed, self.needle_count)
        built = niah.build_prompt(tokenizer, self.target_tokens, self.depth, needle, self.haystack, self.thinking)
        return built.prompt, needle

    def to_dict(self) -> dict:
        return asdict(self)
