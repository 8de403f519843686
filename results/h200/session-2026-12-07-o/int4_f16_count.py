"""Session o's CPU experiment, never run on a GPU and not in the engine: how short could int4's decode-attention loop
get if both engines dequantized in float16 (a change of the reference semantics, results/h200/session-2026-12-07-m/)?

The candidate below is the engine's int kernel (int_kernels._int_attention_partial_kernel at eba42e0) with the codes
made float16 by packed PTX and dequantized and dotted in float16: per byte one PRMT puts the byte in both halves of a
word, one LOP3 keeps the low nibble in the low half and the high nibble (x16) in the high half under the 0x6400
exponent, one HFMA2 takes each half back to its code (exact), then code x scale + zero is one HFMA2 per two codes.
The inline assembly packs four bytes a call and returns each byte's two codes as one half2, so it relies on the
four bytes of a call being four consecutive channels' bytes (true of this load layout, not promised by Triton).
`python results/h200/session-2026-12-07-o/int4_f16_count.py` prints the loop's SASS count (CPU, sm_90) next to the
engine's, as tools/sass_count.py counts them.
"""

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
import sass_count  # noqa: E402
from kvcompress.engine.fast import int_kernels  # noqa: E402
from kvcompress.engine.fast.kernels import (accumulate, group_query, program_row, softmax_start,  # noqa: E402
                                            softmax_step, store_split)


@triton.jit
def _codes_f16(ptr, at, live, ROWS: tl.constexpr, D: tl.constexpr):
    """(ROWS, D / 2) bytes -> (ROWS, D) float16 codes, the low nibble first."""
    packed = tl.load(ptr + at[:, None] + tl.arange(0, D // 2)[None, :], mask=live[:, None], other=0)
    first, second = tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 x, m, c;
        mov.b32 m, 0x2C003C00;
        mov.b32 c, 0xD400E400;
        prmt.b32 x, $4, 0, 0x4040;
        lop3.b32 x, x, 0x00F0000F, 0x64006400, 0xea;
        fma.rn.f16x2 $0, x, m, c;
        prmt.b32 x, $4, 0, 0x4141;
        lop3.b32 x, x, 0x00F0000F, 0x64006400, 0xea;
        fma.rn.f16x2 $1, x, m, c;
        prmt.b32 x, $4, 0, 0x4242;
        lop3.b32 x, x, 0x00F0000F, 0x64006400, 0xea;
        fma.rn.f16x2 $2, x, m, c;
        prmt.b32 x, $4, 0, 0x4343;
        lop3.b32 x, x, 0x00F0000F, 0x64006400, 0xea;
        fma.rn.f16x2 $3, x, m, c;
        }""",
        constraints="=r,=r,=r,=r,r", args=[packed], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    first = tl.reshape(first, (ROWS, D // 8, 4))  # channels 8i .. 8i + 3
    second = tl.reshape(second, (ROWS, D // 8, 4))  # channels 8i + 4 .. 8i + 7
    return tl.reshape(tl.permute(tl.join(first, second), (0, 1, 3, 2)), (ROWS, D))


@triton.jit
def _int_attention_partial_kernel(q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, rk_ptr, rv_ptr, len_ptr,
                                  po_ptr, plse_ptr, scale, chunk, s_qb, s_qh, s_cb, s_ch, s_cs, s_kb, s_kh,
                                  s_kg, s_vb, s_vh, s_vs, s_rb, s_rh, s_rs,
                                  HEADS_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                                  D: tl.constexpr, BLOCK_N: tl.constexpr,
                                  WINDOW: tl.constexpr, R: tl.constexpr, R_BLOCKS: tl.constexpr,
                                  G: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr, QMAX: tl.constexpr,
                                  GROUP_KEYS: tl.constexpr, SPLIT_NIBBLES: tl.constexpr):
    """The engine's kernel (int4, whole key groups a block), the quantized part in float16."""
    bh, split, b, kvh, splits = program_row(HEADS_KV)
    n = tl.load(len_ptr + b)
    quantized = tl.maximum(n - WINDOW, 0) // G * G
    in_ring = n - quantized
    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, D)
    row_ok = rows < GROUP
    q = group_query(q_ptr, b, kvh, s_qb, s_qh, rows, row_ok, dims, GROUP)
    q16 = q.to(tl.float16)
    m, l, acc = softmax_start(GROUP_PAD, D)  # noqa: E741
    start = split * chunk
    end = tl.minimum(start + chunk, quantized)
    codes = b * s_cb + kvh * s_ch
    for offset in range(0, chunk, BLOCK_N):
        cols = start + offset + tl.arange(0, BLOCK_N)
        live = cols < end
        at = codes + cols * s_cs
        first_group = (start + offset) // G + tl.arange(0, BLOCK_N // G)
        kat = b * s_kb + kvh * s_kh + first_group[:, None] * s_kg + dims[None, :]
        group_live = (first_group * G < end)[:, None]
        kscale = tl.load(ks_ptr + kat, mask=group_live, other=0.0)[:, None, :]
        kzero = tl.load(kz_ptr + kat, mask=group_live, other=0.0)[:, None, :]
        k = tl.reshape(_codes_f16(kc_ptr, at, live, BLOCK_N, D), (BLOCK_N // G, G, D))
        s = tl.dot(q16, tl.trans(tl.reshape(k * kscale + kzero, (BLOCK_N, D))))
        s = tl.where(live[None, :], s * scale, float("-inf"))
        m_new, p, alpha = softmax_step(m, s)
        vat = b * s_vb + kvh * s_vh + cols[:, None] * s_vs + tl.arange(0, D // G)[None, :]
        vscale = tl.load(vs_ptr + vat, mask=live[:, None], other=0.0)
        vzero = tl.load(vz_ptr + vat, mask=live[:, None], other=0.0)
        v = tl.reshape(_codes_f16(vc_ptr, at, live, BLOCK_N, D), (BLOCK_N, D // G, G))
        v = tl.reshape(v * vscale[:, :, None] + vzero[:, :, None], (BLOCK_N, D))
        acc, l, m = accumulate(acc, l, m_new, p, alpha, v)  # noqa: E741
    ring = b * s_rb + kvh * s_rh
    first = quantized % R
    for offset in range(0, R_BLOCKS * BLOCK_N, BLOCK_N):  # the bf16 ring, as the engine's
        slots = offset + tl.arange(0, BLOCK_N)
        live = (split == 0) & (slots < R) & ((slots - first + R) % R < in_ring)
        k = tl.load(rk_ptr + ring + slots[:, None] * s_rs + dims[None, :], mask=live[:, None], other=0.0)
        s = tl.where(live[None, :], tl.dot(q, tl.trans(k.to(q.dtype))) * scale, float("-inf"))
        m_new, p, alpha = softmax_step(m, s)
        v = tl.load(rv_ptr + ring + slots[:, None] * s_rs + dims[None, :], mask=live[:, None], other=0.0)
        acc, l, m = accumulate(acc, l, m_new, p, alpha, v.to(q.dtype))  # noqa: E741
    store_split(po_ptr, plse_ptr, bh, split, splits, rows, row_ok, dims, acc, m, l, GROUP, D)


def loop_of(batch: int, tokens: int) -> sass_count.Loop:
    """The candidate's loop over the codes: its longest (the ring's is the other)."""
    spec = sass_count.spec_from_label("int4")
    layer = int_kernels.IntLayer.allocate(spec, batch, sass_count.HKV, sass_count.D, tokens + 256, torch.bfloat16,
                                          lambda shape, dtype: torch.empty(shape, dtype=dtype))
    q = torch.zeros(batch, sass_count.HQ, sass_count.D, dtype=torch.bfloat16)
    engine, int_kernels._int_attention_partial_kernel = int_kernels._int_attention_partial_kernel, \
        _int_attention_partial_kernel
    try:
        with sass_count.sm90_compiles() as compiled:
            int_kernels.decode_attention(q, layer, torch.full((batch,), tokens), spec, sass_count.D ** -0.5,
                                         torch.empty_like(q), 1, int_kernels.LAUNCH)
    finally:
        int_kernels._int_attention_partial_kernel = engine
    return max(sass_count.loops(sass_count.sass(dict(compiled)["_int_attention_partial_kernel"])),
               key=lambda loop: loop.instructions)


if __name__ == "__main__":
    engine = sass_count.count_int("int4", int_kernels.LAUNCH, 32, 8192)
    print("engine (bf16 dequant, hf-exact):", engine.line())
    loop = loop_of(32, 8192)
    print(f"float16 candidate: {loop.instructions} instructions a trip, {loop.instructions / engine.elements:.2f} an "
          f"element\n    " + ", ".join(f"{op} {n}" for op, n in loop.ops.most_common(10)))
