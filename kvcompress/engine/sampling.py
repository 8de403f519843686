"""Token sampling shared by every engine, so that engines differ only in speed, never in what they generate.

The random numbers are drawn up front from a seeded CPU generator (one uniform per output token) and sampling is
inverse-CDF over the nucleus: the same seed gives the same tokens in eager code and inside a CUDA graph, in a batch
and alone, and on CPU and GPU for any method whose logits agree (with top_k 0 on a near-flat distribution, float32
sums over ~45K candidates in another order can move a draw to the next token: 1 row of 32 on an H200,
tools/sampler_check.py).

The defaults are Qwen3-8B's own generation config (generation_config.json: temperature 0.6, top_k 20, top_p 0.95;
the DMS-8x model card recommends the same for thinking mode), applied in transformers' order: temperature, the top_k
most likely tokens, then the nucleus of their renormalised probabilities.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.6
    top_p: float = 0.95
    greedy: bool = False
    seed: int = 0
    top_k: int = 20  # 0: the whole vocabulary

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        top_k = f"top_k={self.top_k}, " if self.top_k else ""
        return f"T={self.temperature:g}, {top_k}top_p={self.top_p:g}, seed={self.seed}"


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """torch's global generators (CPU, and the device's) seeded with `seed` for one generation and restored after:
    a method that draws random numbers in its forward (leverage's Gaussian sketch, torch.randn; kvpress passes it
    no generator) draws the same ones for the same cell alone, in a sweep, after a resume, and in every repeat.
    `reseed(seed)` inside (a batch: sequence b's prefill with seed + b, as it samples)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        reseed(seed, device)
        yield


def reseed(seed: int, device: torch.device) -> None:
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def draw_uniforms(config: SamplingConfig, count: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(config.seed)
    return torch.rand(count, generator=generator, dtype=torch.float64).to(device=device, dtype=torch.float32)


def sample(logits: torch.Tensor, uniform: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """logits (batch, vocab), uniform (batch,) or scalar -> token ids (batch,). No host synchronisation.

    The candidates are the tokens in descending order of probability, ties to the lower id (the top_k first of them,
    or all); the nucleus is their prefix with less than top_p of the candidates' mass before it (at least one token);
    u x its mass is looked up in its cumulative sum."""
    if config.greedy:
        return logits.argmax(dim=-1)
    # Sorted by the logits themselves (a monotone map of the probabilities, so the same order; ties by token id): a
    # radix sort of bf16 logits takes half the passes of one of float32 probabilities. Measured on an H200
    # (tools/sampler_check.py), torch's row-wise sort beats one flat sort of the batch, and a top-k selection
    # (torch.topk leaves ties unordered; made exact with int64 keys it is slower than this sort).
    order = logits.sort(dim=-1, descending=True, stable=True).indices
    if 0 < config.top_k < logits.shape[-1]:
        order = order[:, :config.top_k]
        probs = torch.softmax(logits.gather(-1, order).float() / config.temperature, dim=-1)
    else:
        probs = torch.softmax(logits.float() / config.temperature, dim=-1).gather(-1, order)
    cdf = _row_cumsum(probs)
    size = ((cdf - probs) < config.top_p).sum(dim=-1, keepdim=True).clamp_(min=1)
    target = uniform.reshape(-1, 1) * cdf.gather(-1, size - 1)
    index = torch.minimum(torch.searchsorted(cdf, target, right=True), size - 1)
    return order.gather(-1, index).squeeze(-1)


SCAN_BLOCK = 128


def _row_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Inclusive cumulative sum along each row of a (batch, n) tensor, in two levels: within blocks of 128, then over
    the block totals. torch's scan along the last dimension gives each row one thread block, which is slow for a
    few rows of 152K (about 0.2 ms at batch 8 on an H200); these are many short rows. Each row's result depends on
    that row alone, so a sequence samples the same tokens in a batch as alone."""
    batch, n = x.shape
    blocks = F.pad(x, (0, -n % SCAN_BLOCK)).view(batch, -1, SCAN_BLOCK).cumsum(dim=-1)
    before = F.pad(blocks[:, :-1, -1].cumsum(dim=-1), (1, 0))  # each block's offset: the totals of the blocks before
    return (blocks + before.unsqueeze(-1)).view(batch, -1)[:, :n].contiguous()
