"""Token sampling shared by every engine, so that engines differ only in speed, never in what they generate.

The random numbers are drawn up front from a seeded CPU generator (one uniform per output token) and sampling is
inverse-CDF over the nucleus: the same seed gives the same tokens on CPU and GPU, in eager code and inside a CUDA
graph, for any method whose logits agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.6
    top_p: float = 0.95
    greedy: bool = False
    seed: int = 0

    def describe(self) -> str:
        return "greedy" if self.greedy else f"T={self.temperature:g}, top_p={self.top_p:g}, seed={self.seed}"


def draw_uniforms(config: SamplingConfig, count: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(config.seed)
    return torch.rand(count, generator=generator, dtype=torch.float64).to(device=device, dtype=torch.float32)


def sample(logits: torch.Tensor, uniform: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """logits (batch, vocab), uniform (batch,) or scalar -> token ids (batch,). No host synchronisation."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    nucleus = torch.where(before < config.top_p, sorted_probs, torch.zeros_like(sorted_probs))  # keeps >= 1 token
    cdf = nucleus.cumsum(dim=-1)
    target = uniform.reshape(-1, 1) * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
    return order.gather(-1, index).squeeze(-1)
