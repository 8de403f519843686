"""Run by tests/test_fast_engine.py in a subprocess with TRITON_INTERPRET=1: each Triton kernel against its torch
reference twin on fresh random inputs. Prints one line per kernel and exits non-zero on a mismatch."""

import os
import sys

import torch

os.environ["KVCOMPRESS_FORCE_TRITON"] = "1"
from kvcompress.engine import kernels  # noqa: E402


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def run_both(fn, *make):
    """Call fn with the Triton path and with the reference path on copies of the same inputs."""
    args = [m() if callable(m) else m for m in make]
    twin = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    kernels.FORCE_TRITON = True
    out_triton = fn(*args)
    kernels.FORCE_TRITON = False
    out_ref = fn(*twin)
    return args, twin, out_triton, out_ref


def main() -> int:
    torch.manual_seed(0)
    failures = []
    B, H, Hq, Hkv, D, S, I = 1, 96, 8, 2, 32, 150, 80

    def check(name, err, tol=1e-5):
        print(f"{name}: rel err {err:.2e}")
        if not err < tol:
            failures.append(name)

    # add_rmsnorm
    w = torch.randn(H)
    args, twin, a, b = run_both(lambda r, d, o: kernels.add_rmsnorm(r, d, w, 1e-6, o),
                                torch.randn(B, H), torch.randn(B, H), torch.empty(B, H))
    check("add_rmsnorm", rel_err(a, b))
    check("add_rmsnorm residual", rel_err(args[0], twin[0]))

    # qk_norm_rope_store, with and without per-head norms and a validity mask
    for with_norm in (True, False):
        qn, kn = (torch.randn(D), torch.randn(D)) if with_norm else (None, None)
        angle = torch.randn(B, D // 2)
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
        slot = torch.tensor([37])
        args, twin, a, b = run_both(
            lambda qkv, k, v, m, q: kernels.qk_norm_rope_store(qkv, qn, kn, 1e-6, cos, sin, k, v, m, slot, q),
            torch.randn(B, (Hq + 2 * Hkv) * D), torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D),
            torch.zeros(B, Hkv, S, dtype=torch.uint8), torch.empty(B, Hq, D))
        tag = "qk_norm_rope_store" + ("" if with_norm else " (no norm)")
        check(tag + " q", rel_err(a, b))
        check(tag + " keys", rel_err(args[1], twin[1]))
        check(tag + " values", rel_err(args[2], twin[2]))
        check(tag + " valid", float((args[3] != twin[3]).sum()))

    # decode_attention: several splits, a live length short of capacity, masked entries
    for masked in (False, True):
        valid = (torch.rand(B, Hkv, S) > 0.3).to(torch.uint8) if masked else None
        length = torch.tensor([123])
        splits = 3
        ws = kernels.attention_workspace(B, Hq, D, splits, "cpu")
        keys, values = torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
        keys[:, :, 123:] = float("nan")  # slots beyond the live length must never be read
        values[:, :, 123:] = float("nan")
        q = torch.randn(B, Hq, D)
        kernels.FORCE_TRITON = True
        a = kernels.decode_attention(q, keys, values, length, valid, D ** -0.5, torch.empty(B, Hq, D), splits, ws)
        kernels.FORCE_TRITON = False
        b = kernels.decode_attention(q, keys, values, length, valid, D ** -0.5, torch.empty(B, Hq, D))
        check("decode_attention" + (" (masked)" if masked else ""), rel_err(a, b))

    # silu_mul
    args, twin, a, b = run_both(lambda gu, o: kernels.silu_mul(gu, o), torch.randn(B, 2 * I), torch.empty(B, I))
    check("silu_mul", rel_err(a, b))
    print("FAILED: " + ", ".join(failures) if failures else "all kernels match")
    return 1 if failures else 0




def engine_check(steps: int = 10) -> int:
    """The whole fast step through the Triton kernels (interpreted) against the hf engine, greedy, tiny model."""
    from kvcompress import models
    from kvcompress.engine import GenerationSettings, generate_once
    from kvcompress.engine.fast import FastDecoder
    from kvcompress.engine.generate import HFDecoder
    from kvcompress.engine.sampling import SamplingConfig
    from kvcompress.methods import parse_method
    from kvcompress.tasks import niah

    lm = models.load(models.MODELS["tiny"], device=torch.device("cpu"))
    prompt = niah.build_prompt(lm.tokenizer, 300, 0.5, niah.make_needle("single", 1)).prompt
    settings = GenerationSettings(steps, SamplingConfig(greedy=True))
    status = 0
    for name in ("vanilla", "adakv+snapkv@0.5"):
        method = parse_method(name)
        kernels.FORCE_TRITON = False
        reference = generate_once(lm, method, prompt, settings, HFDecoder()).token_ids
        kernels.FORCE_TRITON = True
        fast = generate_once(lm, method, prompt, settings, FastDecoder(lm)).token_ids
        print(f"engine {name}: hf {reference} fast {fast}")
        status |= reference != fast
    # A batch whose rows keep different lengths (padded, pads hidden by the validity mask), per-row positions.
    from kvcompress.engine.batch import generate_batch
    from kvcompress.tasks.cell import Cell

    prompts = Cell(target_tokens=300, needle_seed=1).build_batch(lm.tokenizer, 2)[0]
    method = parse_method("knorm@0.5")
    kernels.FORCE_TRITON = False
    reference = [generate_once(lm, method, p, settings, HFDecoder()).token_ids for p in prompts]
    kernels.FORCE_TRITON = True
    fast = generate_batch(lm, method, prompts, settings, FastDecoder(lm)).batch_token_ids
    print(f"batch knorm@0.5 x2: hf alone {reference} fast batched {fast}")
    status |= reference != fast
    return status


if __name__ == "__main__":
    sys.exit(engine_check() if sys.argv[1:2] == ["engine"] else main())
