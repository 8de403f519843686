"""GPU only: native DMS's prefill attention at Qwen3-8B shapes — both FlexAttention paths (methods/dms.py:
FlexPrefill, SplitFlexPrefill) against the exact chunked path (max error) and their time per layer against
vanilla's causal SDPA (what decides dms-8x's TTFT against vanilla's).

    uv run python tools/dms_prefill_check.py                      # 8K, 16K, 32K; 7/8 of the keys marked
    uv run python tools/dms_prefill_check.py --lengths 32768 --marked 0.5
"""

from __future__ import annotations

import argparse
import sys

import torch

from kvcompress.methods import dms


def _time_ms(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="8192,16384,32768")
    p.add_argument("--marked", type=float, default=0.875, help="fraction of keys marked (default 0.875)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--layers", type=int, default=36, help="layers per prefill, for the TTFT estimate")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.manual_seed(0)
    hq, hkv, d = 32, 8, 128
    scale = d ** -0.5
    print(f"{'L':>6} {'kernel':>7} {'max err':>9} {'ms/layer':>9} {'SDPA ms':>8} {'x SDPA':>7} "
          f"{'+TTFT s':>8} (x{args.layers} layers)")
    for length in (int(x) for x in args.lengths.split(",")):
        q = torch.randn(1, hq, length, d, device=device, dtype=torch.bfloat16)
        k = torch.randn(1, hkv, length, d, device=device, dtype=torch.bfloat16)
        v = torch.randn(1, hkv, length, d, device=device, dtype=torch.bfloat16)
        marked = torch.rand(1, hkv, length, device=device) < args.marked
        with torch.inference_mode():
            exact = dms._chunked_prefill(q.float(), k.float(), v.float(), marked, args.window, scale)
            sdpa = _time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=True))
            for kind, kernel in dms.PREFILL_KERNELS.items():
                flex = kernel(length, args.window, hq // hkv, hkv, device, compiled=True)
                out = flex(q, k, v, marked, scale)
                err = (out.float() - exact).abs().max().item()
                ms = _time_ms(lambda: flex(q, k, v, marked, scale))
                print(f"{length:>6} {kind:>7} {err:>9.2e} {ms:>9.2f} {sdpa:>8.2f} {ms / sdpa:>7.2f} "
                      f"{(ms - sdpa) * args.layers / 1000:>+8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
