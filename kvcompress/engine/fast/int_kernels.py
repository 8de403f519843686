"""The fast engine's int4 / int2 KV cache (KIVI, methods/quant_spec.py): its buffers, the flush that quantizes a full
group out of the bf16 window, and the decode attention that reads packed codes and dequantizes them in registers.
Each kernel has a torch twin (CPU, tests) built on methods/quant.py's quantizer, the hf engine's own.

One layer (`IntLayer`), rows b = sequences, heads h = KV heads:
- keys: codes (B, H, Qcap, D * bits / 8) packed along D, float16 scale and zero (B, H, Qcap / G, D): per channel, in
  groups of G tokens;
- values: codes likewise, float16 scale and zero (B, H, Qcap, D / G): per token, in groups of G channels;
- the bf16 window: a ring (B, H, R, D) of R = window + G slots, token t in slot t % R.
Row b holds n_b tokens: the first Q(n_b) = spec.quantized_tokens(n_b) quantized, the rest in the ring. A decode step
stores its token in the ring (kernels.qk_norm_rope_store, one slot a row), then `flush` quantizes tokens [Q(n-1),
Q(n)) (a whole group, or nothing) out of the ring as the hf engine's cache settles them, then `decode_attention`
reads both parts: the token is read as stored, as the hf engine reads it (methods/quantized_cache.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvcompress.engine.fast import kernels
from kvcompress.engine.fast.kernels import attention_stages, attention_workspace, triton, use_triton
from kvcompress.methods import quant
from kvcompress.methods.quant_spec import QuantSpec

if triton is not None:
    import triton.language as tl

    from kvcompress.engine.fast.kernels import (accumulate, group_query, program_row, softmax_start, softmax_step,
                                                store_split)


@dataclass
class IntLayer:
    """One layer's int4 / int2 cache for a batch (module docstring)."""

    key_codes: torch.Tensor
    key_scale: torch.Tensor
    key_zero: torch.Tensor
    value_codes: torch.Tensor
    value_scale: torch.Tensor
    value_zero: torch.Tensor
    ring_keys: torch.Tensor
    ring_values: torch.Tensor

    @classmethod
    def allocate(cls, spec: QuantSpec, batch: int, heads: int, dim: int, capacity: int, dtype, empty) -> IntLayer:
        """Buffers for rows of up to `capacity` tokens; empty(shape, dtype) allocates (the decode state's pool)."""
        q, g, packed = spec.quantized_tokens(capacity), spec.group, dim * spec.bits // 8
        zeros = lambda shape, t: empty(shape, t).zero_()  # noqa: E731 - never garbage, even where never read
        return cls(zeros((batch, heads, q, packed), torch.uint8), zeros((batch, heads, q // g, dim), torch.float16),
                   zeros((batch, heads, q // g, dim), torch.float16), zeros((batch, heads, q, packed), torch.uint8),
                   zeros((batch, heads, q, dim // g), torch.float16), zeros((batch, heads, q, dim // g), torch.float16),
                   zeros((batch, heads, spec.window + g, dim), dtype),
                   zeros((batch, heads, spec.window + g, dim), dtype))

    @property
    def ring(self) -> int:
        return self.ring_keys.shape[2]

    def parts(self) -> dict:
        """Bytes by part, from the tensors: codes, scales + zero points, the bf16 ring."""
        return {"data": self.key_codes.nbytes + self.value_codes.nbytes,
                "scales": sum(t.nbytes for t in (self.key_scale, self.key_zero, self.value_scale, self.value_zero)),
                "window": self.ring_keys.nbytes + self.ring_values.nbytes}

    def load_row(self, b: int, layer, spec: QuantSpec) -> None:
        """Row b from a settled hf-engine QuantizedLayer (methods/quantized_cache.py) of one sequence."""
        q, n = layer.quantized, layer.get_seq_length()
        if q:
            for name, groups in (("key", layer.qk), ("value", layer.qv)):
                getattr(self, f"{name}_codes")[b, :, :q].copy_(groups.codes[0])
                rows = groups.scale.shape[2]  # Q / G (keys) or Q (values)
                getattr(self, f"{name}_scale")[b, :, :rows].copy_(groups.scale[0])
                getattr(self, f"{name}_zero")[b, :, :rows].copy_(groups.zero[0])
        slots = torch.arange(q, n, device=self.ring_keys.device) % self.ring
        self.ring_keys[b][:, slots] = layer.keys[0].to(self.ring_keys.dtype)  # [b][:, slots]: (H, n - q, D)
        self.ring_values[b][:, slots] = layer.values[0].to(self.ring_values.dtype)

    def row(self, b: int, n: int, spec: QuantSpec, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Row b's n tokens in order, dequantized as the hf engine dequantizes (the twins' and the tests' view)."""
        q, g = spec.quantized_tokens(n), spec.group
        row = slice(b, b + 1)
        keys = quant.int_dequantize(quant.IntGroups(self.key_codes[row, :, :q], self.key_scale[row, :, :q // g],
                                                    self.key_zero[row, :, :q // g], spec.bits, g, "tokens"), dtype)
        values = quant.int_dequantize(quant.IntGroups(self.value_codes[row, :, :q], self.value_scale[row, :, :q],
                                                      self.value_zero[row, :, :q], spec.bits, g, "channels"), dtype)
        slots = torch.arange(q, n, device=self.ring_keys.device) % self.ring
        return (torch.cat([keys, self.ring_keys[b:b + 1, :, slots]], 2),
                torch.cat([values, self.ring_values[b:b + 1, :, slots]], 2))


# --------------------------------------------------------------------------------------------------------------------
# flush: the group that the step's token completed, out of the ring into codes
# --------------------------------------------------------------------------------------------------------------------

def flush(layer: IntLayer, lengths: torch.Tensor, spec: QuantSpec) -> None:
    """lengths (B,): each row's tokens once this step's token is stored. Where Q(n) > Q(n - 1), tokens [Q(n - 1),
    Q(n)) leave the ring: keys quantized per channel over the group's G tokens, values per token over groups of G
    channels (quant.int_quantize's arithmetic: float32, scale and zero rounded to float16 first, round half to
    even), written at their place in the codes."""
    batch, heads, ring, dim = layer.ring_keys.shape
    g = spec.group
    if use_triton(lengths):
        per = 8 // spec.bits
        _flush_kernel[(batch, heads)](
            layer.ring_keys, layer.ring_values, layer.key_codes, layer.key_scale, layer.key_zero, layer.value_codes,
            layer.value_scale, layer.value_zero, lengths, *layer.ring_keys.stride()[:3], *layer.key_codes.stride()[:3],
            *layer.key_scale.stride()[:3], *layer.value_scale.stride()[:3],
            WINDOW=spec.window, R=ring, G=g, D=dim, BITS=spec.bits, PER=per, QMAX=2**spec.bits - 1)
        return
    for b, n in enumerate(lengths.tolist()):
        old, new = spec.quantized_tokens(n - 1), spec.quantized_tokens(n)
        if new == old:
            continue
        slots = torch.arange(old, new, device=lengths.device) % ring
        k = quant.int_quantize(layer.ring_keys[b:b + 1, :, slots], spec.bits, g, "tokens")
        v = quant.int_quantize(layer.ring_values[b:b + 1, :, slots], spec.bits, g, "channels")
        layer.key_codes[b, :, old:new] = k.codes[0]
        layer.key_scale[b, :, old // g] = k.scale[0, :, 0]
        layer.key_zero[b, :, old // g] = k.zero[0, :, 0]
        layer.value_codes[b, :, old:new] = v.codes[0]
        layer.value_scale[b, :, old:new] = v.scale[0]
        layer.value_zero[b, :, old:new] = v.zero[0]


def quantize_kv(k: torch.Tensor, v: torch.Tensor, bits: int, group: int) -> tuple[quant.IntGroups, quant.IntGroups]:
    """quant.int_quantize_kv in one kernel launch (a prefill's layer: (B, H, S, D), S a multiple of `group`), bit for
    bit the same codes, scales and zero points: a prefill's quantization is part of its TTFT."""
    if not use_triton(k):
        return quant.int_quantize_kv(k, v, bits, group)
    batch, heads, tokens, dim = k.shape
    per = 8 // bits
    codes = [torch.empty(batch, heads, tokens, dim // per, dtype=torch.uint8, device=k.device) for _ in range(2)]
    key_scale, key_zero = (torch.empty(batch, heads, tokens // group, dim, dtype=torch.float16, device=k.device)
                           for _ in range(2))
    value_scale, value_zero = (torch.empty(batch, heads, tokens, dim // group, dtype=torch.float16, device=k.device)
                               for _ in range(2))
    if tokens:
        _quantize_kernel[(batch, heads, tokens // group)](
            k, v, codes[0], key_scale, key_zero, codes[1], value_scale, value_zero, *k.stride()[:3], *v.stride()[:3],
            *codes[0].stride()[:3], *key_scale.stride()[:3], *value_scale.stride()[:3],
            G=group, D=dim, BITS=bits, PER=per, QMAX=2**bits - 1)
    return (quant.IntGroups(codes[0], key_scale, key_zero, bits, group, "tokens"),
            quant.IntGroups(codes[1], value_scale, value_zero, bits, group, "channels"))


# --------------------------------------------------------------------------------------------------------------------
# decode attention over codes + ring
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionLaunch:
    """How the int attention kernel walks the cache: BLOCK_N tokens a step, `warps` warps a program.
    `group_keys`: a block of whole key groups (block a multiple of G, larger than G) loads one scale and zero row per
    group and broadcasts it over the group's tokens, instead of one row per token (block 64, G 32: 2 rows, not 64).
    tools/attention_sweep.py --int times the choices. On an H100 (results/h100/session-2026-12-07-j/, int4 at 8K, one
    layer) group_keys at block 64 took batch 8 from 178 to 133 us and batch 32 from 477 to 400 us (int2: 172 -> 133,
    474 -> 391), the same outputs bit for bit; a kernel that summed q . k over the codes' bit planes instead of
    unpacking them lost at every shape (191 us at batch 8, its best) and was removed. Earlier: groups of 1 (each
    channel's byte read by its own load) ran 9x slower than bytes loaded once and unpacked; block 64 beat 32 (batch 8
    189 -> 141 us); the key scale folded into the query ((q s) . c + q . z) ran slower at every shape
    (results/h100/session-2026-12-06-f/call1/int-sweep.log).
    `split_nibbles` (int4 only): a byte's two codes as byte & 15 and byte >> 4, joined, instead of a shift and a mask
    each; the same outputs bit for bit (tests/kernel_check.py; on an H100 the sweep's max diff against the old launch
    was 0 at its split counts). Timed on an H100 (results/h100/session-2026-12-07-l/int-sweep.log, one layer, the
    engine's splits): int4 8K x 8 133.3 -> 131.4 us, 8K x 32 399.7 -> 344.9 us, 32K x 8 472.6 -> 457.2 us (int2 has
    no nibbles); the engine's launch splits them. A code made float32 through the exponent's bits (2**23 + code,
    minus 2**23) instead of an int-to-float conversion lost at every shape (alone 138.8 / 413.5 / 494.6 us) and was
    removed (1f8cec7 has it).
    `word_codes` (int4 only; overrides split_nibbles): each packed row read as int32 words, each code masked at its
    own place and OR'd under an exponent in one LOP3, then one FADD (_word_codes_of): two instructions a code where
    the bytes take a PRMT, a mask or shift and an I2FP (and an SGXT), the same float32 codes bit for bit. (Session l's
    exponent trick OR'd 2**23 into codes already unpacked: an instruction more a code, not fewer.)
    `interleave_groups` (with group_keys): block row GROUPS * a + g holds token G * g + a (GROUPS = BLOCK_N / G), so
    the rows one thread holds in the q . k operand (rows r and r + 32) lie in one key group, and it converts
    half as many key scales and zero points from float16 (the tokens are in another order within the block: the same
    softmax, summed in another order). Both counted on a CPU (tools/sass_count.py, sm_90, batch 32 x 8K, one trip):
    1,183 instructions -> 1,144 (words), 1,140 (interleave), 1,068 (both, 8.34 an element, 168 registers); batch 8:
    1,173 -> 1,059. Not yet timed on a GPU (the sweep's --int has them), so not the engine's launch.
    `ring`: which programs walk the bf16 ring. "every" (the engine's so far): every program walks its R_BLOCKS blocks,
    masked in all splits but split 0. Masked trips read no memory, but this kernel is bound by instructions (sm_90,
    batch 32 x 8K: a ring trip is 435 SASS instructions, the ring's three 1,305 against a code trip's 1,183), so each
    split paid ~1.1 code trips for nothing (132 SMs, the engine's splits: 3 code trips a program at batch 1 x 8K, a
    quarter of it; 22 at 8 x 8K; 43 at 32 x 8K; 12 at 1 x 32K). "first": split 0 alone walks it (the same tokens in the
    same order: the same bits); split 0, a full chunk and the ring, stays the longest program. "own": a program of its
    own walks it (split index `splits`, one more partial for the combine; it walks no codes), so no program makes both
    (the same softmax, summed in another order). The code loop keeps its trip count, the chunk's: bounded by the row's
    length instead, which the compiler cannot prove uniform across a program, its address arithmetic left the uniform
    datapath (+22 instructions a trip)."""

    block: int = 64
    warps: int = 4
    group_keys: bool = True
    split_nibbles: bool = False
    word_codes: bool = False
    interleave_groups: bool = False
    ring: str = "every"


TWO23 = 0x4B000000  # the bits of float32 2**23 (_word_codes_of)
RINGS = ("every", "first", "own")  # AttentionLaunch.ring; the kernel's RING is the index
LAUNCH = AttentionLaunch(split_nibbles=True)  # block 64 of whole key groups, nibbles split: the H100's best (session l)


def decode_attention(q: torch.Tensor, layer: IntLayer, lengths: torch.Tensor, spec: QuantSpec, scale: float,
                     out: torch.Tensor, splits: int = 1, launch: AttentionLaunch | None = None) -> torch.Tensor:
    """One query token per head, q (B, Hq, D), over each row's lengths[b] tokens: the quantized ones dequantized in
    the kernel (code x scale + zero in float32, rounded to q's dtype, as quant.int_dequantize), then the ring's.
    The quantized part is split across `splits` programs per (row, KV head), the ring is the first split's (or
    a program's of its own: launch.ring); the partials combine as kernels.decode_attention's."""
    batch, heads_q, dim = q.shape
    heads_kv, capacity = layer.key_codes.shape[1], layer.key_codes.shape[2]
    group = heads_q // heads_kv
    if use_triton(q):
        launch = launch or LAUNCH
        own = launch.ring == "own"  # the ring's program: split index `splits`
        partial_out, partial_lse = attention_workspace(batch, heads_q, dim, splits + own, q.device)
        block = launch.block
        # A block within one key group (G a multiple of the block) reads that group's scale and zero once, as a
        # vector; otherwise each token reads its group's.
        step = max(block, spec.group) if spec.group % block == 0 else block
        chunk = max(step, math.ceil(math.ceil(capacity / splits) / step) * step)
        group_keys = launch.group_keys and block % spec.group == 0 and block > spec.group
        words = launch.word_codes and spec.bits == 4
        key_codes, value_codes = ((layer.key_codes.view(torch.int32), layer.value_codes.view(torch.int32)) if words
                                  else (layer.key_codes, layer.value_codes))
        _int_attention_partial_kernel[(batch * heads_kv, splits + own)](
            q, key_codes, layer.key_scale, layer.key_zero, value_codes, layer.value_scale,
            layer.value_zero, layer.ring_keys, layer.ring_values, lengths, partial_out, partial_lse, scale, chunk,
            TWO23, q.stride(0), q.stride(1), *key_codes.stride()[:3], *layer.key_scale.stride()[:3],
            *layer.value_scale.stride()[:3], *layer.ring_keys.stride()[:3],
            HEADS_KV=heads_kv, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), D=dim,
            BLOCK_N=block, WINDOW=spec.window, R=layer.ring, R_BLOCKS=triton.cdiv(layer.ring, block), G=spec.group,
            BITS=spec.bits, PER=8 // spec.bits, QMAX=2**spec.bits - 1,
            GROUP_KEYS=group_keys, SPLIT_NIBBLES=launch.split_nibbles and spec.bits == 4, WORDS=words,
            INTERLEAVE=launch.interleave_groups and group_keys, RING=RINGS.index(launch.ring),
            num_stages=attention_stages(batch * heads_kv, q.device), num_warps=launch.warps)
        kernels._attention_combine_kernel[(batch * heads_q,)](
            partial_out, partial_lse, out, out.stride(0), out.stride(1), HEADS_Q=heads_q, GROUP=group,
            SPLITS=splits + own, SPLITS_PAD=triton.next_power_of_2(splits + own), D=dim)
        return out
    for b, n in enumerate(lengths.tolist()):
        keys, values = layer.row(b, n, spec, q.dtype)
        grouped = q[b:b + 1].view(1, heads_kv, group, dim)
        o = F.scaled_dot_product_attention(grouped, keys, values, scale=scale)
        out[b].copy_(o.reshape(heads_q, dim))
    return out


if triton is not None:

    @triton.jit
    def _round_half_even(v):
        """Nearest integer, ties to even (torch.round), for |v| < 2**22: float32's own rounding at 1.5 x 2**23."""
        return (v + 12582912.0) - 12582912.0

    @triton.jit
    def _codes(x, zero, scale, QMAX: tl.constexpr):
        """quant.int_quantize's codes: round((x - zero) / scale), scale 0 read as 1, clamped to [0, QMAX]."""
        safe = tl.where(scale > 0, scale, 1.0)
        return tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(x - zero, safe)), 0.0), QMAX * 1.0).to(tl.int32)

    @triton.jit
    def _pack(codes, ROWS: tl.constexpr, D: tl.constexpr, PER: tl.constexpr, BITS: tl.constexpr):
        """(ROWS, D) codes -> (ROWS, D / PER) bytes, PER codes a byte, the first in the low bits (quant.pack)."""
        grouped = tl.reshape(codes, (ROWS, D // PER, PER))
        shifts = tl.arange(0, PER) * BITS
        return tl.sum(grouped << shifts[None, None, :], axis=2).to(tl.uint8)

    @triton.jit
    def _unpack(packed, ROWS: tl.constexpr, D: tl.constexpr, PER: tl.constexpr, BITS: tl.constexpr,
                QMAX: tl.constexpr, SPLIT_NIBBLES: tl.constexpr):
        """(ROWS, D / PER) bytes -> (ROWS, D) float32 codes (quant.unpack: the first code in the low bits).
        SPLIT_NIBBLES (PER 2): low and high nibble each by one operation, joined."""
        if SPLIT_NIBBLES:
            byte = packed.to(tl.int32)
            codes = tl.reshape(tl.join(byte & 15, byte >> 4), (ROWS, D))
        else:
            shifts = tl.arange(0, PER) * BITS
            codes = tl.reshape((packed.to(tl.int32)[:, :, None] >> shifts[None, None, :]) & QMAX, (ROWS, D))
        return codes.to(tl.float32)

    @triton.jit
    def _quantize_group(k, v, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, rows, key_row, value_rows, go,
                        G: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr, QMAX: tl.constexpr):
        """One group of G tokens, k and v (G, D) float32, quantized as quant.int_quantize does (keys per channel over
        the G tokens, values per token over groups of G channels) and stored: codes at rows (G,) (one packed row a
        token), key scale and zero at key_row (one row of D), value scales and zeros at value_rows (G,). Nothing is
        stored where `go` is false."""
        toks = tl.arange(0, G)
        dims = tl.arange(0, D)
        packs = tl.arange(0, D // PER)
        scale = tl.math.div_rn(tl.max(k, axis=0) - tl.min(k, axis=0), QMAX * 1.0).to(tl.float16)  # per channel
        zero = tl.min(k, axis=0).to(tl.float16)
        codes = _codes(k, zero.to(tl.float32)[None, :], scale.to(tl.float32)[None, :], QMAX)
        tl.store(kc_ptr + rows[:, None] + packs[None, :], _pack(codes, G, D, PER, BITS), mask=go & (toks[:, None] < G))
        tl.store(ks_ptr + key_row + dims, scale, mask=go & (dims < D))
        tl.store(kz_ptr + key_row + dims, zero, mask=go & (dims < D))
        v = tl.reshape(v, (G, D // G, G))
        vscale = tl.math.div_rn(tl.max(v, axis=2) - tl.min(v, axis=2), QMAX * 1.0).to(tl.float16)  # (G, D / G)
        vzero = tl.min(v, axis=2).to(tl.float16)
        vcodes = tl.reshape(_codes(v, vzero.to(tl.float32)[:, :, None], vscale.to(tl.float32)[:, :, None], QMAX),
                            (G, D))
        tl.store(vc_ptr + rows[:, None] + packs[None, :], _pack(vcodes, G, D, PER, BITS),
                 mask=go & (toks[:, None] < G))
        groups = tl.arange(0, D // G)
        tl.store(vs_ptr + value_rows[:, None] + groups[None, :], vscale, mask=go & (toks[:, None] < G))
        tl.store(vz_ptr + value_rows[:, None] + groups[None, :], vzero, mask=go & (toks[:, None] < G))

    @triton.jit
    def _flush_kernel(rk_ptr, rv_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, len_ptr,
                      s_rb, s_rh, s_rs, s_cb, s_ch, s_cs, s_kb, s_kh, s_kg, s_vb, s_vh, s_vs,
                      WINDOW: tl.constexpr, R: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
                      BITS: tl.constexpr, PER: tl.constexpr, QMAX: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        n = tl.load(len_ptr + b)
        new = tl.maximum(n - WINDOW, 0) // G * G
        old = tl.maximum(n - 1 - WINDOW, 0) // G * G
        go = new > old  # every load and store is masked with it: a step without a full group writes nothing
        toks = tl.arange(0, G)
        dims = tl.arange(0, D)
        tile = go & (toks[:, None] < G)
        ring = b * s_rb + h * s_rh + ((old + toks) % R)[:, None] * s_rs + dims[None, :]
        k = tl.load(rk_ptr + ring, mask=tile, other=0.0).to(tl.float32)
        v = tl.load(rv_ptr + ring, mask=tile, other=0.0).to(tl.float32)
        _quantize_group(k, v, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, b * s_cb + h * s_ch + (old + toks) * s_cs,
                        b * s_kb + h * s_kh + (old // G) * s_kg, b * s_vb + h * s_vh + (old + toks) * s_vs, go,
                        G, D, BITS, PER, QMAX)

    @triton.jit
    def _quantize_kernel(k_ptr, v_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr,
                         s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_cb, s_ch, s_cs, s_sb, s_sh, s_sg, s_tb, s_th, s_ts,
                         G: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr,
                         QMAX: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        group = tl.program_id(2)
        toks = group * G + tl.arange(0, G)
        dims = tl.arange(0, D)
        k = tl.load(k_ptr + b * s_kb + h * s_kh + toks[:, None] * s_ks + dims[None, :]).to(tl.float32)
        v = tl.load(v_ptr + b * s_vb + h * s_vh + toks[:, None] * s_vs + dims[None, :]).to(tl.float32)
        _quantize_group(k, v, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, b * s_cb + h * s_ch + toks * s_cs,
                        b * s_sb + h * s_sh + group * s_sg, b * s_tb + h * s_th + toks * s_ts, group >= 0,
                        G, D, BITS, PER, QMAX)

    @triton.jit
    def _codes_of(ptr, at, live, two23, ROWS: tl.constexpr, D: tl.constexpr, PER: tl.constexpr, BITS: tl.constexpr,
                  QMAX: tl.constexpr, SPLIT_NIBBLES: tl.constexpr, WORDS: tl.constexpr):
        """(ROWS, D) float32 codes of the packed rows at ptr + at[:, None] (WORDS: ptr an int32 view, int4's codes
        read as words, _word_codes_of)."""
        if WORDS:
            return _word_codes_of(ptr, at, live, two23, ROWS, D)
        packs = tl.arange(0, D // PER)
        return _unpack(tl.load(ptr + at[:, None] + packs[None, :], mask=live[:, None], other=0), ROWS, D, PER, BITS,
                       QMAX, SPLIT_NIBBLES)

    @triton.jit
    def _word_codes_of(ptr, at, live, two23, ROWS: tl.constexpr, D: tl.constexpr):
        """(ROWS, D) float32 int4 codes of the rows at ptr + at[:, None], read as int32 words (ptr an int32 view of
        the codes: word j holds channels 8j .. 8j + 7, channel 8j + i in bits 4i .. 4i + 3, as quant.pack lays them).
        Each code becomes float32 without a conversion: OR'd into the mantissa of 2**(23 - 4p) at its own place p
        (bits 4p .. 4p + 3, below the exponent for p <= 4) it reads 2**(23 - 4p) + code, and one subtraction leaves
        the code, exactly. Codes 5 .. 7 take places 2 .. 4 of the word shifted right by 12. two23: the bits of
        2**23, a run-time value so that the mask and the OR make one LOP3 (two constants would make two)."""
        words = tl.load(ptr + at[:, None] + tl.arange(0, D // 8)[None, :], mask=live[:, None], other=0)
        high = words >> 12
        c0 = _nibble(words, two23, 0)
        c1 = _nibble(words, two23, 1)
        c2 = _nibble(words, two23, 2)
        c3 = _nibble(words, two23, 3)
        c4 = _nibble(words, two23, 4)
        c5 = _nibble(high, two23, 2)
        c6 = _nibble(high, two23, 3)
        c7 = _nibble(high, two23, 4)
        # the joins put code i of a word at index i of a last axis of 8 (join appends an axis: pair i with i + 4,
        # then with i + 2, then with i + 1), so the reshape gives channel 8j + i
        codes = tl.join(tl.join(tl.join(c0, c4), tl.join(c2, c6)), tl.join(tl.join(c1, c5), tl.join(c3, c7)))
        return tl.reshape(codes, (ROWS, D))

    @triton.jit
    def _nibble(words, two23, P: tl.constexpr):
        """The code in bits 4P .. 4P + 3 of each word as float32 (P <= 4; _word_codes_of)."""
        magic = two23 - ((4 * P) << 23)  # the bits of 2**(23 - 4P)
        return ((words & (15 << (4 * P))) | magic).to(tl.float32, bitcast=True) - (2.0 ** (23 - 4 * P))

    @triton.jit
    def _int_attention_partial_kernel(q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, rk_ptr, rv_ptr, len_ptr,
                                      po_ptr, plse_ptr, scale, chunk, two23, s_qb, s_qh, s_cb, s_ch, s_cs, s_kb, s_kh,
                                      s_kg, s_vb, s_vh, s_vs, s_rb, s_rh, s_rs,
                                      HEADS_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                                      D: tl.constexpr, BLOCK_N: tl.constexpr,
                                      WINDOW: tl.constexpr, R: tl.constexpr, R_BLOCKS: tl.constexpr,
                                      G: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr, QMAX: tl.constexpr,
                                      GROUP_KEYS: tl.constexpr, SPLIT_NIBBLES: tl.constexpr, WORDS: tl.constexpr,
                                      INTERLEAVE: tl.constexpr, RING: tl.constexpr):
        bh, split, b, kvh, splits = program_row(HEADS_KV)
        n = tl.load(len_ptr + b)
        quantized = tl.maximum(n - WINDOW, 0) // G * G
        in_ring = n - quantized
        rows = tl.arange(0, GROUP_PAD)
        dims = tl.arange(0, D)
        row_ok = rows < GROUP
        q = group_query(q_ptr, b, kvh, s_qb, s_qh, rows, row_ok, dims, GROUP)
        m, l, acc = softmax_start(GROUP_PAD, D)  # noqa: E741
        start = split * chunk
        end = tl.minimum(start + chunk, quantized)
        codes = b * s_cb + kvh * s_ch
        GROUPS: tl.constexpr = BLOCK_N // G
        if INTERLEAVE:  # row GROUPS * a + g holds token G * g + a of the block: a thread's rows share a key group
            order = (tl.arange(0, BLOCK_N) % GROUPS) * G + tl.arange(0, BLOCK_N) // GROUPS
        else:
            order = tl.arange(0, BLOCK_N)
        # the ring's program: split 0, or (RING 2, "own") the last, which walks the ring alone (its start lies past
        # the codes: no code is live)
        owner = splits - 1 if RING == 2 else 0
        span = tl.where(split != owner, chunk, 0) if RING == 2 else chunk
        for offset in range(0, span, BLOCK_N):  # the quantized tokens of this split's chunk
            cols = start + offset + order
            live = cols < end
            at = codes + cols * s_cs
            k = _codes_of(kc_ptr, at, live, two23, BLOCK_N, D, PER, BITS, QMAX, SPLIT_NIBBLES, WORDS)
            if G % BLOCK_N == 0:  # the block lies in one key group: its scale and zero are one vector
                kat = b * s_kb + kvh * s_kh + ((start + offset) // G) * s_kg + dims
                any_live = (start + offset) < end
                kscale = tl.load(ks_ptr + kat, mask=any_live & (dims < D), other=0.0).to(tl.float32)[None, :]
                kzero = tl.load(kz_ptr + kat, mask=any_live & (dims < D), other=0.0).to(tl.float32)[None, :]
            elif GROUP_KEYS:  # whole groups (the block starts on a group: chunks are multiples of the block)
                first_group = (start + offset) // G + tl.arange(0, BLOCK_N // G)
                kat = b * s_kb + kvh * s_kh + first_group[:, None] * s_kg + dims[None, :]
                group_live = (first_group * G < end)[:, None]
                kscale = tl.load(ks_ptr + kat, mask=group_live, other=0.0).to(tl.float32)[:, None, :]
                kzero = tl.load(kz_ptr + kat, mask=group_live, other=0.0).to(tl.float32)[:, None, :]
            else:
                kat = b * s_kb + kvh * s_kh + (cols // G)[:, None] * s_kg + dims[None, :]
                kscale = tl.load(ks_ptr + kat, mask=live[:, None], other=0.0).to(tl.float32)
                kzero = tl.load(kz_ptr + kat, mask=live[:, None], other=0.0).to(tl.float32)
            if INTERLEAVE:
                k = tl.reshape(tl.reshape(k, (G, GROUPS, D)) * tl.reshape(kscale, (1, GROUPS, D))
                               + tl.reshape(kzero, (1, GROUPS, D)), (BLOCK_N, D))
            elif GROUP_KEYS:
                k = tl.reshape(tl.reshape(k, (BLOCK_N // G, G, D)) * kscale + kzero, (BLOCK_N, D))
            else:
                k = k * kscale + kzero
            s = tl.where(live[None, :], tl.dot(q, tl.trans(k.to(q.dtype))) * scale, float("-inf"))
            m_new, p, alpha = softmax_step(m, s)
            groups = tl.arange(0, D // G)  # values: one scale and zero per token and group of G channels
            vat = b * s_vb + kvh * s_vh + cols[:, None] * s_vs + groups[None, :]
            vscale = tl.load(vs_ptr + vat, mask=live[:, None], other=0.0).to(tl.float32)
            vzero = tl.load(vz_ptr + vat, mask=live[:, None], other=0.0).to(tl.float32)
            v = tl.reshape(_codes_of(vc_ptr, at, live, two23, BLOCK_N, D, PER, BITS, QMAX, SPLIT_NIBBLES, WORDS),
                           (BLOCK_N, D // G, G))
            v = tl.reshape(v * vscale[:, :, None] + vzero[:, :, None], (BLOCK_N, D)).to(q.dtype)
            acc, l, m = accumulate(acc, l, m_new, p, alpha, v)  # noqa: E741
        ring = b * s_rb + kvh * s_rh
        first = quantized % R  # the ring's oldest token's slot
        ring_span = tl.where(split == owner, R_BLOCKS * BLOCK_N, 0) if RING > 0 else R_BLOCKS * BLOCK_N
        for offset in range(0, ring_span, BLOCK_N):  # the bf16 ring: its owner's (RING "every": all walk, masked)
            slots = offset + tl.arange(0, BLOCK_N)
            live = (split == owner) & (slots < R) & ((slots - first + R) % R < in_ring)
            k = tl.load(rk_ptr + ring + slots[:, None] * s_rs + dims[None, :], mask=live[:, None], other=0.0)
            s = tl.where(live[None, :], tl.dot(q, tl.trans(k.to(q.dtype))) * scale, float("-inf"))
            m_new, p, alpha = softmax_step(m, s)
            v = tl.load(rv_ptr + ring + slots[:, None] * s_rs + dims[None, :], mask=live[:, None], other=0.0)
            acc, l, m = accumulate(acc, l, m_new, p, alpha, v.to(q.dtype))  # noqa: E741
        store_split(po_ptr, plse_ptr, bh, split, splits, rows, row_ok, dims, acc, m, l, GROUP, D)
