"""A cell of a run grid: one prompt, described by parameters so any process can rebuild it token for token."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from kvcompress.tasks import niah

if TYPE_CHECKING:  # torch (via Prompt) only when a prompt is built: the scripts' --help stays instant
    from kvcompress.engine.generate import Prompt


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

    def build(self, tokenizer) -> tuple[Prompt, niah.Needle | None]:
        import torch

        from kvcompress.engine.generate import Prompt

        if self.text is not None:
            context_ids, question_ids = niah.render(tokenizer, self.text, "", self.thinking)
            return Prompt(torch.tensor([context_ids]), torch.tensor([question_ids])), None
        needle = niah.make_needle(self.needle_kind, self.needle_seed, self.needle_count)
        built = niah.build_prompt(tokenizer, self.target_tokens, self.depth, needle, self.haystack, self.thinking)
        return built.prompt, needle

    def build_batch(self, tokenizer, batch: int) -> tuple[list[Prompt], list[niah.Needle | None]]:
        """`batch` prompts of this cell's length, sequence b with needle seed needle_seed + b (distinct keys and
        values): what sequence b generates in a batch equals this cell run alone with --seed needle_seed + b."""
        built = [replace(self, needle_seed=self.needle_seed + b).build(tokenizer) for b in range(batch)]
        return [p for p, _ in built], [n for _, n in built]

    def to_dict(self) -> dict:
        return asdict(self)
