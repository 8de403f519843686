"""A prompt as the engines take it: the context a method compresses and the question fed after it.

Torch-free to import, so the task builders (tasks/) and the scripts' --help never load torch: a prompt's tensors are
made from token ids by `token_ids`, which imports torch only when a prompt is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Prompt:
    context_ids: torch.Tensor  # (1, C): chat-template prefix + context, the part a press compresses
    question_ids: torch.Tensor  # (1, Q): question + template suffix, fed after compression
    meta: dict = field(default_factory=dict)

    @property
    def context_tokens(self) -> int:
        return int(self.context_ids.shape[1])

    @property
    def input_tokens(self) -> int:
        return int(self.context_ids.shape[1] + self.question_ids.shape[1])


def token_ids(ids: list[int]) -> torch.Tensor:
    """One sequence of token ids as the (1, N) tensor a prompt holds."""
    import torch

    return torch.tensor([ids])
