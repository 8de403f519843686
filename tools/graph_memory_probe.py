"""Where does the fast engine's decode-phase memory go? (GPU only; Qwen3-8B architecture, random weights, 8K.)

Prints, relative to the loaded buffers: what one eager step leaves allocated (the stream's cuBLAS workspace on
first use) and its transient peak; what capturing the step as a CUDA graph allocates at its peak (blocks freed
during a capture are not reused until it ends) and what stays allocated afterwards.

    python tools/graph_memory_probe.py
Seen on an H200 (commit 2473994): eager step leaves 33.86 MB (32 MiB cuBLAS workspace + logits), transient peak
40.64 MB; after capture +0.00 MB stays allocated; split-K workspace 1.09 MB. The capture-time peak was not read then.
"""

import sys
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvcompress import models  # noqa: E402
from kvcompress.engine.fast import FastDecoder, _DecodeState  # noqa: E402
from kvcompress.engine.sampling import SamplingConfig  # noqa: E402
from kvcompress.engine.timing import measurement_stream  # noqa: E402


def main(context: int = 8192, new_tokens: int = 128) -> None:
    device = torch.device("cuda")
    lm = models.load(models.MODELS["qwen3-8b"], device=device, random_weights=True)
    cfg = lm.model.config
    mb = 1e6
    with measurement_stream(device), torch.inference_mode():
        decoder = FastDecoder(lm)
        cache = DynamicCache()
        shape = (1, cfg.num_key_value_heads, context, cfg.head_dim)
        for i in range(cfg.num_hidden_layers):
            cache.update(torch.randn(shape, device=device, dtype=torch.bfloat16),
                         torch.randn(shape, device=device, dtype=torch.bfloat16), i)
        signature = (tuple([context] * cfg.num_hidden_layers), False, new_tokens, SamplingConfig())
        state = _DecodeState(decoder, cache, signature, SamplingConfig())
        state.load(cache, {}, torch.tensor([1], device=device), context, torch.rand(new_tokens, device=device),
                   torch.zeros(new_tokens, dtype=torch.long, device=device))
        del cache
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        state.step()
        torch.cuda.synchronize()
        print(f"eager step: leaves {(torch.cuda.memory_allocated() - base) / mb:.2f} MB, "
              f"transient peak {(torch.cuda.max_memory_allocated() - base) / mb:.2f} MB")
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        state._capture()
        torch.cuda.synchronize()
        print(f"capture: peak +{(torch.cuda.max_memory_allocated() - before) / mb:.2f} MB while recording, "
              f"+{(torch.cuda.memory_allocated() - before) / mb:.2f} MB after")
        print(f"split-K workspace {sum(t.nbytes for t in state.workspace) / mb:.2f} MB")


if __name__ == "__main__":
    main()
