"""GPU-only: the sampler on Qwen3's vocabulary, as the fast engine runs it (inside a CUDA graph).

1. the candidates' order on the GPU equals the CPU's stable descending sort, on bf16 logits with many ties;
2. a batch samples on the GPU the tokens the CPU samples from the same logits (top_k 20 and 0);
3. time per call at batch 1, 8 and 32, median of 5 x 50 graph replays, top_k 20 (the default) and 0 (a sort of the
   whole vocabulary), against greedy's argmax.

    python tools/sampler_check.py
"""

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kvcompress.engine.sampling import SamplingConfig, sample  # noqa: E402
from kvcompress.engine.timing import replayed_seconds  # noqa: E402

VOCAB = 151936


def main() -> int:
    generator = torch.Generator().manual_seed(0)
    failures = 0
    # 1. ties: bf16 logits of a random-weights model's spread, with a block of equal maxima
    logits = (torch.randn(32, VOCAB, generator=generator) * 1.3).bfloat16()
    logits[:, 1000:1040] = logits.max()
    reference = logits.float().sort(dim=-1, descending=True, stable=True).indices
    same = torch.equal(logits.cuda().sort(dim=-1, descending=True, stable=True).indices.cpu(), reference)
    failures += not same
    print(f"1. candidates' order on the GPU = a stable descending sort's (ties included): {same}")
    # 2. GPU tokens = CPU tokens
    u = torch.rand(32, generator=generator, dtype=torch.float64).float()
    for top_k in (20, 0):
        config = SamplingConfig(top_k=top_k)
        rows = int((sample(logits.cuda(), u.cuda(), config).cpu() == sample(logits, u, config)).sum())
        failures += top_k > 0 and rows < 32  # the whole vocabulary's float32 sums differ by device: shown, not failed
        print(f"2. top_k={top_k}: rows of a batch of 32 that sample the CPU's token on the GPU: {rows}")
    # 3. time
    print("3. ms per call (CUDA graph), bf16 logits:")
    for batch in (1, 8, 32):
        x, v = logits[:batch].cuda(), u[:batch].cuda()
        times = {name: 1e3 * replayed_seconds(lambda c=config: sample(x, v, c)) for name, config in
                 (("greedy", SamplingConfig(greedy=True)), ("top_k=20", SamplingConfig()),
                  ("top_k=0", replace(SamplingConfig(), top_k=0)))}
        print(f"   batch {batch:2d}: " + ", ".join(f"{name} {ms:.3f}" for name, ms in times.items()))
    print("all checks passed" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
