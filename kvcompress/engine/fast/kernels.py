"""The fused operations of one decode step, each twice: a Triton kernel (CUDA) and a torch reference (CPU, tests).

A decode step of an 8B model at batch 1 is memory-bound: the ideal step reads every weight and every live KV entry
once. Between the weight GEMVs (cuBLAS), eager transformers launches dozens of tiny element-wise kernels per layer
and expands grouped KV heads to all query heads (`repeat_kv`). These kernels fold each run of element-wise work
into one launch and read every KV head once:

- `add_rmsnorm`: residual += delta; out = RMSNorm(residual)                       (2 per layer)
- `qk_norm_rope_store`: q/k head RMSNorm + RoPE, K/V written into the cache slot  (1 per layer; fp8: quantized)
- `decode_attention`: split-K attention of a query group over its KV head         (2 per layer: partials, combine)
- `silu_mul`: SiLU(gate) * up                                                     (1 per layer)

Numerics follow transformers' bf16 code: each op computes in fp32 and rounds where transformers rounds.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

from kvcompress.methods import dms as rule  # the rule's own definitions are the reference twins' oracle
from kvcompress.methods import quant  # the fp8 format: the store's and the attention's twins quantize with it

try:  # Triton ships with CUDA builds of torch; the CPU path never needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


# Tests set this with TRITON_INTERPRET=1 to run the kernels on CPU tensors through Triton's interpreter.
FORCE_TRITON = os.environ.get("KVCOMPRESS_FORCE_TRITON") == "1"


def _interpreter_loop_bounds() -> None:
    """Triton's interpreter (3.6) holds a kernel's scalar argument as a one-element array and takes a for loop's
    bound from it with int(array), which NumPy 2 refuses; the compiled kernel has no such step. The attention
    kernels loop to a scalar argument (`chunk`: a constexpr would compile a kernel per cache length), so under
    TRITON_INTERPRET=1 the bound is read from the array's one element."""
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor
    if getattr(patch, "reads_one_element", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
    patched.reads_one_element = True
    interpreter._patch_lang_tensor = patched


def _interpreter_patch_once() -> None:
    """Triton's interpreter (3.6) patches triton.language (inspect.getmembers over tl, tl.tensor, tl.math, tl.core)
    before each launch and undoes it after, and patches it again at each call of a @triton.jit helper inside a
    kernel; an interpreted tiny-model generation launches thousands of kernels, and that patching was ~15 % of its
    time. Under TRITON_INTERPRET=1 every kernel of the process is interpreted and no host code calls
    triton.language, so each language module is patched once, at the first launch that sees it, and kept."""
    import inspect

    from triton.runtime import interpreter

    patch = interpreter._patch_lang
    if getattr(patch, "kept", False):
        return
    patched: set = set()  # ids of the language modules patched so far

    def patch_once(fn):
        seen = {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and (v is tl or v is tl.core)}
        if not seen <= patched:
            patch(fn)  # its undo is dropped: the patch stays
            patched.update(seen)
        return interpreter._LangPatchScope()  # what the launch undoes at its end: nothing

    patch_once.kept = True
    interpreter._patch_lang = patch_once


if triton is not None and os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_loop_bounds()
    _interpreter_patch_once()


def use_triton(t: torch.Tensor) -> bool:
    return triton is not None and (t.is_cuda or FORCE_TRITON)


# --------------------------------------------------------------------------------------------------------------------
# add_rmsnorm
# --------------------------------------------------------------------------------------------------------------------

def add_rmsnorm(residual: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float,
                out: torch.Tensor) -> torch.Tensor:
    """residual (B, H) += delta (in place, rounded to its dtype); out = RMSNorm(residual) * weight."""
    if use_triton(residual):
        batch, hidden = residual.shape
        _add_rmsnorm_kernel[(batch,)](residual, delta if delta is not None else residual, weight, out, hidden, eps,
                                      HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(hidden))
        return out
    if delta is not None:
        residual.add_(delta)
    out.copy_(_rmsnorm_reference(residual, weight, eps))
    return out


def _rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
# qk_norm_rope_store
# --------------------------------------------------------------------------------------------------------------------

def qk_norm_rope_store(qkv: torch.Tensor, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, eps: float,
                       cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                       valid: torch.Tensor | None, slot: torch.Tensor, q_out: torch.Tensor,
                       scales: tuple[torch.Tensor, torch.Tensor] | None = None, per_row: bool = False) -> torch.Tensor:
    """Split qkv (B, (Hq + 2 Hkv) * D), normalise and rotate q and k, write k and v at `slot` of the cache
    (keys/values: (B, Hkv, S, D)), mark the slot valid, return q (B, Hq, D) in `q_out`. `slot`: one slot for every
    row, or with `per_row` row b's own slot[b] (the int4/int2 window rings, engine/fast/int_decode_state.py). An
    fp8 cache (`scales`: float32 K and V scales (B, 1 | Hkv), methods/quant.py's fp8 format) stores k and v, as
    the model's dtype rounds them, divided by their scale and rounded to e4m3 (saturating at +-448)."""
    batch, heads_q, dim = q_out.shape
    heads_kv = keys.shape[1]
    if use_triton(qkv):
        k_scale, v_scale = scales if scales is not None else (cos, cos)
        _qk_norm_rope_store_kernel[(batch, heads_q + heads_kv)](
            qkv, q_norm if q_norm is not None else cos, k_norm if k_norm is not None else cos, cos, sin,
            keys, values, valid if valid is not None else slot, slot, q_out, k_scale, v_scale, eps,
            qkv.stride(0), cos.stride(0), keys.stride(0), keys.stride(1), keys.stride(2),
            valid.stride(0) if valid is not None else 0, valid.stride(1) if valid is not None else 0,
            q_out.stride(0), q_out.stride(1), *_scale_strides(scales), 1 if per_row else 0,
            HEADS_Q=heads_q, HEADS_KV=heads_kv, D=dim, HAS_NORM=q_norm is not None, HAS_VALID=valid is not None,
            FP8=scales is not None)
        return q_out
    q, k, v = qkv.view(batch, heads_q + 2 * heads_kv, dim).split([heads_q, heads_kv, heads_kv], dim=1)
    if q_norm is not None:
        q, k = _rmsnorm_reference(q, q_norm, eps), _rmsnorm_reference(k, k_norm, eps)
    cos, sin = cos[:, None, :], sin[:, None, :]
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k, v = k[:, :, None, :], v[:, :, None, :]
    if scales is not None:  # written as bytes: CPU torch has no index_copy_ for float8
        k = quant.fp8_quantize(k, scales[0][:, :, None, None]).view(torch.uint8)
        v = quant.fp8_quantize(v, scales[1][:, :, None, None]).view(torch.uint8)
        keys, values = keys.view(torch.uint8), values.view(torch.uint8)
    if per_row:
        rows = torch.arange(batch, device=slot.device)
        keys[rows, :, slot] = k[:, :, 0]
        values[rows, :, slot] = v[:, :, 0]
    else:
        keys.index_copy_(2, slot, k)
        values.index_copy_(2, slot, v)
    if valid is not None:
        valid.index_fill_(2, slot, True)
    q_out.copy_(q)
    return q_out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# decode_attention (flash-decoding: split the KV length across programs, then combine)
# --------------------------------------------------------------------------------------------------------------------

BLOCK_N = 64


# fp8 caches: pipelining depth of the partial kernel, scales folded out of its loop (stages 2 / 3, each code x scale
# rounded to bf16: results/h100/session-2026-12-06-f/call1/fp8-sweep.log), its dots in float16 (F16_DOTS: the same
# outputs bit for bit at equal splits, one layer on an H100 at 8K x 8 / 8K x 32 / 32K x 8: 66.8 -> 59.1, 219.4 ->
# 203.5 (185.8 at 3 splits), 235.1 -> 196.3 us; results/h100/session-2026-12-07-n/callB/fp8-sweep.log).
FP8_STAGES = 3
FP8_F16_DOTS = True
PER_SM = 4  # bf16 caches: programs per SM


def attention_splits(batch_heads: int, capacity: int, device: torch.device, per_sm: int = PER_SM) -> int:
    """Enough programs to fill the GPU (about `per_sm` per SM), none with an empty share of the cache."""
    if device.type != "cuda":
        return 2 if FORCE_TRITON else 1  # the interpreter test still exercises the split/combine path
    return max(1, min(math.ceil(per_sm * _sm_count(device) / batch_heads), math.ceil(capacity / BLOCK_N)))


# Programs of the fp8 and int4 / int2 partial kernels one SM holds at once (sm_90, 4 warps): ~146 registers a thread
# allow 3 (65,536 registers / (152 x 128)); the int kernel's 70 KiB of shared memory at 3 stages also allow 3.
# tests/test_tools.py holds these to the compiled kernels (tools/sass_count.py).
RESIDENT = {"fp8": 3, "int": 3}
WAVE_FILL = 0.9


def wave_splits(batch_heads: int, capacity: int, device: torch.device, resident: int) -> int:
    """The fewest splits whose programs (batch_heads x splits) keep the GPU's `resident` x SMs program slots at
    least WAVE_FILL busy over the waves they take, none with an empty share of the cache. A wave half full costs
    as much as a full one: int4 at 8K x 8 (64 (row, head) pairs, 396 slots on an H100) ran 9 splits (576 programs,
    1.45 waves) in 127.8 us and 6 (384, one wave) in 96.8 us; 32K x 8: 459.8 -> 344.3 us; 8K x 16 at 3 splits
    178.6 us against 5's 226.9 (results/h100/session-2026-12-07-n/callB/int-splits.log)."""
    if device.type != "cuda":
        return 2 if FORCE_TRITON else 1
    slots, most = resident * _sm_count(device), max(1, math.ceil(capacity / BLOCK_N))
    for splits in range(1, most + 1):
        programs = batch_heads * splits
        if programs >= WAVE_FILL * math.ceil(programs / slots) * slots:
            return splits
    return most


def engine_splits(cache: str, batch_heads: int, entries: int, device: torch.device) -> int:
    """The engine's split count for a cache of `cache` ("bf16", "fp8" or "int"): whole waves for fp8 and int
    (wave_splits), per_sm for bf16 (attention_splits: vanilla's timings stay comparable with earlier runs)."""
    if cache == "bf16":
        return attention_splits(batch_heads, entries, device)
    return wave_splits(batch_heads, entries, device, RESIDENT[cache])


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def attention_stages(batch_heads: int, device: torch.device) -> int:
    """Software-pipelining depth of the partial kernel's loop over the cache, as measured on an H200
    (tools/attention_sweep.py, results/h200/attention_sweep*.log): 2 while the batch has at most one (sequence, KV
    head) row per SM (Qwen3-8B's batch 1 and 8: 8 x 1152 entries a row 15.5 -> 12.9 us a layer, 8 x 4224 44.6 ->
    41.1, 1 x 8192 14.1 -> 12.0, 8 x 32896 unchanged), Triton's default 3 above (batch 32: 32 x 8320 entries 253 us,
    309 at 2; 32 x 16512 481 against 595)."""
    if device.type != "cuda":
        return 2  # Triton's interpreter (CPU tests) ignores it
    return 2 if batch_heads <= _sm_count(device) else 3


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor,
                     valid: torch.Tensor | None, scale: float, out: torch.Tensor, splits: int = 1,
                     workspace: tuple[torch.Tensor, torch.Tensor] | None = None, *,
                     offsets: torch.Tensor | None = None, max_length: int | None = None,
                     scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One query token per head. q (B, Hq, D); keys/values (B, Hkv, S, D), the first `length` slots live;
    valid (B, Hkv, S) uint8 hides masked entries (0). Each KV head is read once for its whole group of query heads.
    An fp8 cache (`scales`: K and V scales (B, 1 | Hkv)) is read as stored: the codes enter the dot products as they
    are (e4m3 -> q's dtype is exact) and the scales are applied to the dots' float32 results (K's with the softmax
    scale, V's to the output), where the hf engine's cache rounds code x scale to q's dtype first
    (methods/quantized_cache.py): the fast engine rounds less, by at most half a bf16 step of each entry.

    Ragged form (DMS's compact cache): with `offsets`, keys/values are flat (rows, D) buffers, head (b, h) owns rows
    offsets[b * Hkv + h] onwards, `length` (B * Hkv,) holds each head's live count and `max_length` bounds it."""
    if offsets is not None:
        return _ragged_decode_attention(q, keys, values, length, offsets, max_length, scale, out, splits, workspace,
                                        scales)
    batch, heads_q, dim = q.shape
    heads_kv, capacity = keys.shape[1], keys.shape[2]
    group = heads_q // heads_kv
    if use_triton(q):
        # Partials are laid out (row, split) for this call's split count; the workspace may be larger (shared).
        # Without one, a temporary: inside a CUDA graph its block is freed at capture and reused by later ops of
        # the step, so it never adds to the decode phase's peak.
        partial_out, partial_lse = workspace or attention_workspace(batch, heads_q, dim, splits, q.device)
        chunk = math.ceil(math.ceil(capacity / splits) / BLOCK_N) * BLOCK_N
        k_scale, v_scale = scales if scales is not None else (q, q)
        _attention_partial_kernel[(batch * heads_kv, splits)](
            q, keys, values, valid if valid is not None else length, length, partial_out, partial_lse, scale, chunk,
            k_scale, v_scale, q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
            valid.stride(0) if valid is not None else 0, valid.stride(1) if valid is not None else 0,
            *_scale_strides(scales),
            HEADS_KV=heads_kv, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), D=dim,
            BLOCK_N=BLOCK_N, HAS_VALID=valid is not None, FP8=scales is not None,
            FOLD_SCALES=scales is not None, F16_DOTS=scales is not None and FP8_F16_DOTS,
            num_stages=FP8_STAGES if scales is not None else attention_stages(batch * heads_kv, q.device))
        _attention_combine_kernel[(batch * heads_q,)](
            partial_out, partial_lse, out, out.stride(0), out.stride(1), HEADS_Q=heads_q, GROUP=group,
            SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits), D=dim)
        return out
    n = int(length)
    mask = valid[:, :, None, :n].bool() if valid is not None else None  # (B, Hkv, 1, n), broadcast over the group
    grouped = q.view(batch, heads_kv, group, dim)  # query heads of one KV head share a row block
    keys, values = keys[:, :, :n], values[:, :, :n]
    if scales is not None:  # as the hf engine: rounded to q's dtype (the kernel does not; equal in float32)
        keys = quant.fp8_dequantize(keys, scales[0][:, :, None, None], q.dtype)
        values = quant.fp8_dequantize(values, scales[1][:, :, None, None], q.dtype)
    o = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scale)
    out.copy_(o.reshape(batch, heads_q, dim))
    return out


def attention_workspace(batch: int, heads_q: int, dim: int, splits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(batch * heads_q, splits, dim, device=device, dtype=torch.float32),
            torch.empty(batch * heads_q, splits, device=device, dtype=torch.float32))


# --------------------------------------------------------------------------------------------------------------------
# silu_mul
# --------------------------------------------------------------------------------------------------------------------

def silu_mul(gate_up: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """gate_up (B, 2 I) = [gate | up] -> out (B, I) = SiLU(gate) * up, rounded after the SiLU as transformers does."""
    batch, inter = out.shape
    if use_triton(gate_up):
        block = 1024
        _silu_mul_kernel[(batch, triton.cdiv(inter, block))](gate_up, out, inter, BLOCK=block)
        return out
    gate, up = gate_up.split(inter, dim=-1)
    out.copy_(F.silu(gate) * up)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------------------------

if triton is not None:

    # The split-K attention kernels' shared steps (padded, ragged and int caches): Triton inlines them.
    @triton.jit
    def program_row(HEADS_KV: tl.constexpr):
        """This program's (batch x KV head) row bh, its split, the row's batch index and KV head, the split count."""
        bh = tl.program_id(0)
        return bh, tl.program_id(1), bh // HEADS_KV, bh % HEADS_KV, tl.num_programs(1)

    @triton.jit
    def softmax_start(GROUP_PAD: tl.constexpr, D: tl.constexpr):
        """The online softmax before any token: running max -inf, sum 0, output 0."""
        return (tl.full([GROUP_PAD], float("-inf"), tl.float32), tl.zeros([GROUP_PAD], tl.float32),
                tl.zeros([GROUP_PAD, D], tl.float32))

    @triton.jit
    def group_query(q_ptr, b, kvh, s_qb, s_qh, rows, row_ok, dims, GROUP: tl.constexpr):
        """The query heads of KV head kvh in row b, (GROUP_PAD, D); the pad rows zero."""
        return tl.load(q_ptr + b * s_qb + (kvh * GROUP + rows)[:, None] * s_qh + dims[None, :],
                       mask=row_ok[:, None], other=0.0)

    @triton.jit
    def softmax_step(m, s):
        """One block of the online softmax: the running max m updated by the block's scores s (-inf where a token
        is not live), the block's weights p and alpha, the factor that rescales what was accumulated before. A row
        with no live token yet keeps m = -inf and gets p = alpha = 0 (exp(-inf - 0)), not NaN."""
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        return m_new, tl.exp(s - m_safe[:, None]), tl.exp(m - m_safe)

    @triton.jit
    def accumulate(acc, l, m_new, p, alpha, v):  # noqa: E741
        """The block's p . v added to the rescaled output and its weights to the rescaled sum: (acc, l, m)."""
        return acc * alpha[:, None] + tl.dot(p.to(v.dtype), v), l * alpha + tl.sum(p, axis=1), m_new

    @triton.jit
    def accumulate_rounded(acc, l, m_new, p, alpha, v, P_DTYPE: tl.constexpr):  # noqa: E741
        """accumulate with the weights rounded to P_DTYPE before v's dtype: the plain and ragged kernels pass q's
        dtype, so float16 dots see the weights bf16 dots would (where v's dtype is q's, it is accumulate)."""
        return acc * alpha[:, None] + tl.dot(p.to(P_DTYPE).to(v.dtype), v), l * alpha + tl.sum(p, axis=1), m_new

    @triton.jit
    def split_lse(m, l):  # noqa: E741
        """A split's log-sum-exp (-inf for a split with no live token): how the combine kernel weighs it."""
        return tl.where(l > 0, m + tl.log(tl.maximum(l, 1e-30)), float("-inf"))

    @triton.jit
    def store_split(po_ptr, plse_ptr, bh, split, splits, rows, row_ok, dims, acc, m, l,  # noqa: E741
                    GROUP: tl.constexpr, D: tl.constexpr):
        """A split's normalised output and its lse, at (batch, query head) row bh * GROUP + r (query heads grouped
        under their KV head)."""
        out_rows = bh * GROUP + rows
        tl.store(po_ptr + (out_rows[:, None] * splits + split) * D + dims[None, :],
                 acc / tl.where(l > 0, l, 1.0)[:, None], mask=row_ok[:, None])
        tl.store(plse_ptr + out_rows * splits + split, split_lse(m, l), mask=row_ok)

    @triton.jit
    def _add_rmsnorm_kernel(res_ptr, delta_ptr, w_ptr, out_ptr, hidden, eps, HAS_DELTA: tl.constexpr,
                            BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < hidden
        x = tl.load(res_ptr + row * hidden + offs, mask=mask, other=0.0)
        if HAS_DELTA:
            d = tl.load(delta_ptr + row * hidden + offs, mask=mask, other=0.0)
            x = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype)  # the residual stream is stored rounded
            tl.store(res_ptr + row * hidden + offs, x, mask=mask)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
        normed = (xf * rstd).to(x.dtype).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * hidden + offs, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _norm_rope(x1, x2, w_ptr, cos1, cos2, sin1, sin2, eps, D: tl.constexpr, HAS_NORM: tl.constexpr,
                   out_dtype: tl.constexpr):
        """RMSNorm over the head (two halves) then rotate_half RoPE; returns the two output halves in fp32."""
        half = tl.arange(0, D // 2)
        if HAS_NORM:
            rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / D + eps)
            w1 = tl.load(w_ptr + half).to(tl.float32)
            w2 = tl.load(w_ptr + D // 2 + half).to(tl.float32)
            x1 = (x1 * rstd).to(out_dtype).to(tl.float32) * w1
            x2 = (x2 * rstd).to(out_dtype).to(tl.float32) * w2
            x1 = x1.to(out_dtype).to(tl.float32)
            x2 = x2.to(out_dtype).to(tl.float32)
        return x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2

    @triton.jit
    def _qk_norm_rope_store_kernel(qkv_ptr, qn_ptr, kn_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, valid_ptr, slot_ptr,
                                   q_ptr, ks_ptr, vs_ptr, eps, s_qkv, s_cos, s_kb, s_kh, s_ks, s_mb, s_mh, s_qb, s_qh,
                                   s_sb, s_sh, s_slot, HEADS_Q: tl.constexpr, HEADS_KV: tl.constexpr,
                                   D: tl.constexpr, HAS_NORM: tl.constexpr, HAS_VALID: tl.constexpr,
                                   FP8: tl.constexpr):
        b = tl.program_id(0)
        head = tl.program_id(1)  # 0..HEADS_Q-1: query heads; then the key/value heads
        half = tl.arange(0, D // 2)
        dtype = q_ptr.dtype.element_ty
        cos1 = tl.load(cos_ptr + b * s_cos + half).to(tl.float32)
        cos2 = tl.load(cos_ptr + b * s_cos + D // 2 + half).to(tl.float32)
        sin1 = tl.load(sin_ptr + b * s_cos + half).to(tl.float32)
        sin2 = tl.load(sin_ptr + b * s_cos + D // 2 + half).to(tl.float32)
        src = qkv_ptr + b * s_qkv + head * D
        x1 = tl.load(src + half).to(tl.float32)
        x2 = tl.load(src + D // 2 + half).to(tl.float32)
        if head < HEADS_Q:
            y1, y2 = _norm_rope(x1, x2, qn_ptr, cos1, cos2, sin1, sin2, eps, D, HAS_NORM, dtype)
            qdst = q_ptr + b * s_qb + head * s_qh  # names of their own: Triton unifies a name's type across
            tl.store(qdst + half, y1.to(dtype))     # branches, and an fp8 key cache's pointer is not q's
            tl.store(qdst + D // 2 + half, y2.to(dtype))
        else:
            kv = head - HEADS_Q
            slot = tl.load(slot_ptr + b * s_slot)  # s_slot 0: one slot for every row
            y1, y2 = _norm_rope(x1, x2, kn_ptr, cos1, cos2, sin1, sin2, eps, D, HAS_NORM, dtype)
            dst = k_ptr + b * s_kb + kv * s_kh + slot * s_ks
            vsrc = qkv_ptr + b * s_qkv + (HEADS_Q + HEADS_KV + kv) * D
            vdst = v_ptr + b * s_kb + kv * s_kh + slot * s_ks
            _store_kv(dst, vdst, vsrc, y1, y2, ks_ptr + b * s_sb + kv * s_sh, vs_ptr + b * s_sb + kv * s_sh, half, D,
                      FP8, dtype)
            if HAS_VALID:
                tl.store(valid_ptr + b * s_mb + kv * s_mh + slot, 1)

    @triton.jit
    def _store_kv(kdst, vdst, vsrc, y1, y2, ks_at, vs_at, half, D: tl.constexpr, FP8: tl.constexpr,
                  dtype: tl.constexpr):
        """One token's k (y1, y2: its rotated halves, float32) and v (read at vsrc) into its cache rows kdst, vdst: as
        the model's dtype rounds them; fp8 (scales at ks_at, vs_at): then / scale, correctly rounded, saturated, to
        e4m3. The one store of both kernels that write a token (the dense cache's and native DMS's)."""
        if FP8:
            ks = tl.load(ks_at)
            vs = tl.load(vs_at)
            code = kdst.dtype.element_ty
            tl.store(kdst + half, _fp8_code(y1.to(dtype).to(tl.float32), ks, code))
            tl.store(kdst + D // 2 + half, _fp8_code(y2.to(dtype).to(tl.float32), ks, code))
            tl.store(vdst + half, _fp8_code(tl.load(vsrc + half).to(tl.float32), vs, code))
            tl.store(vdst + D // 2 + half, _fp8_code(tl.load(vsrc + D // 2 + half).to(tl.float32), vs, code))
        else:
            tl.store(kdst + half, y1.to(dtype))
            tl.store(kdst + D // 2 + half, y2.to(dtype))
            tl.store(vdst + half, tl.load(vsrc + half))
            tl.store(vdst + D // 2 + half, tl.load(vsrc + D // 2 + half))

    @triton.jit
    def _fp8_code(x, scale, code: tl.constexpr):
        """x / scale, correctly rounded in float32, clamped to e4m3's +-448, rounded to e4m3 (nearest even).

        The rounding is done here in float32, so the cast at the end is exact: the spacing of e4m3 at v is
        2**(max(exponent(v), -6) - 3) (3 mantissa bits; subnormals below 2**-6), and adding then subtracting
        1.5 x 2**23 spacings rounds v to a multiple of it, to nearest even, by float32's own rounding. (Triton's
        interpreter rounds a mantissa that overflows into the next binade down when it casts: 1.97 -> 1.0.)"""
        v = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -448.0), 448.0)
        exponent = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        m = tl.maximum(exponent, -6) - 3
        magic = (((m + 23 + 127) << 23) | (1 << 22)).to(tl.float32, bitcast=True)  # 1.5 x 2**(m + 23)
        return ((v + magic) - magic).to(code)

    @triton.jit
    def _attention_partial_kernel(q_ptr, k_ptr, v_ptr, valid_ptr, len_ptr, po_ptr, plse_ptr, scale, chunk, ks_ptr,
                                  vs_ptr, s_qb, s_qh, s_kb, s_kh, s_ks, s_mb, s_mh, s_sb, s_sh,
                                  HEADS_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                                  D: tl.constexpr, BLOCK_N: tl.constexpr,
                                  HAS_VALID: tl.constexpr, FP8: tl.constexpr, FOLD_SCALES: tl.constexpr,
                                  F16_DOTS: tl.constexpr = False):
        """FOLD_SCALES (fp8, the engine's choice; off: the sweep's reference): codes enter the dots as they are
        (e4m3 -> bf16 is exact) and the K scale joins the softmax scale, the V scale the output, instead of a float32
        multiply and a rounding per element. F16_DOTS (with FOLD_SCALES; the engine: FP8_F16_DOTS): the dots
        run in float16. e4m3 -> float16 is one packed conversion a pair; -> bfloat16 goes through float32 (F2F + F2FP
        + PRMT an element; tools/sass_count.py: 869 -> 716 instructions a trip at batch 32 x 8K). q (bfloat16) and
        the weights (rounded to q's dtype first, as accumulate does) are float16 exactly wherever 2**-14 <= |x| <=
        65504, so the outputs are bf16 dots' (an H100: max diff 0 at equal splits). `chunk` (tokens a split, a
        multiple of BLOCK_N) is an argument, not a constexpr: every cache length would otherwise compile a kernel of
        its own (a quality run's batches each have new lengths)."""
        bh, split, b, kvh, splits = program_row(HEADS_KV)
        length = tl.load(len_ptr)
        rows = tl.arange(0, GROUP_PAD)
        dims = tl.arange(0, D)
        row_ok = rows < GROUP
        q = group_query(q_ptr, b, kvh, s_qb, s_qh, rows, row_ok, dims, GROUP)
        m, l, acc = softmax_start(GROUP_PAD, D)  # noqa: E741
        start = split * chunk
        end = tl.minimum(start + chunk, length)
        kbase = k_ptr + b * s_kb + kvh * s_kh
        vbase = v_ptr + b * s_kb + kvh * s_kh
        if FP8:
            ks = tl.load(ks_ptr + b * s_sb + kvh * s_sh)
            vs = tl.load(vs_ptr + b * s_sb + kvh * s_sh)
            if FOLD_SCALES:
                scale = scale * ks
                if F16_DOTS:
                    q = q.to(tl.float16)
        for offset in range(0, chunk, BLOCK_N):  # the same trip count each step; loads past `length` are masked
            cols = start + offset + tl.arange(0, BLOCK_N)
            live = cols < end
            k = tl.load(kbase + cols[:, None] * s_ks + dims[None, :], mask=live[:, None], other=0.0)
            if FP8 and FOLD_SCALES:
                k = k.to(q.dtype)  # float16 under F16_DOTS
            elif FP8:  # dequantized here, in registers: the cache is read at one byte an element
                k = (k.to(tl.float32) * ks).to(q.dtype)
            s = tl.dot(q, tl.trans(k)) * scale
            if HAS_VALID:
                live = live & (tl.load(valid_ptr + b * s_mb + kvh * s_mh + cols, mask=live, other=0) != 0)
            s = tl.where(live[None, :], s, float("-inf"))
            m_new, p, alpha = softmax_step(m, s)
            v = tl.load(vbase + cols[:, None] * s_ks + dims[None, :], mask=live[:, None], other=0.0)
            if FP8 and FOLD_SCALES:
                v = v.to(q.dtype)
            elif FP8:
                v = (v.to(tl.float32) * vs).to(q.dtype)
            # the weights rounded to q's dtype, then v's: only float16 dots round twice (v's dtype is q's otherwise)
            acc, l, m = accumulate_rounded(acc, l, m_new, p, alpha, v, q_ptr.dtype.element_ty)  # noqa: E741
        if FP8 and FOLD_SCALES:
            acc = acc * vs
        store_split(po_ptr, plse_ptr, bh, split, splits, rows, row_ok, dims, acc, m, l, GROUP, D)

    @triton.jit
    def _attention_combine_kernel(po_ptr, plse_ptr, out_ptr, s_ob, s_oh, HEADS_Q: tl.constexpr, GROUP: tl.constexpr,
                                  SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, D: tl.constexpr):
        row = tl.program_id(0)  # batch * HEADS_Q + query head
        splits = tl.arange(0, SPLITS_PAD)
        dims = tl.arange(0, D)
        ok = splits < SPLITS
        lse = tl.load(plse_ptr + row * SPLITS + splits, mask=ok, other=float("-inf"))
        top = tl.max(lse, axis=0)
        w = tl.where(ok & (lse > float("-inf")), tl.exp(lse - top), 0.0)
        parts = tl.load(po_ptr + (row * SPLITS + splits[:, None]) * D + dims[None, :], mask=ok[:, None], other=0.0)
        o = tl.sum(parts * w[:, None], axis=0) / tl.sum(w, axis=0)
        b = row // HEADS_Q
        h = row % HEADS_Q
        tl.store(out_ptr + b * s_ob + h * s_oh + dims, o.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, inter, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < inter
        g = tl.load(gu_ptr + row * 2 * inter + offs, mask=mask, other=0.0)
        u = tl.load(gu_ptr + row * 2 * inter + inter + offs, mask=mask, other=0.0).to(tl.float32)
        gf = g.to(tl.float32)
        act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)
        tl.store(out_ptr + row * inter + offs, (act * u).to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------------------------
# DMS (engine/fast_dms.py): the compact per-head cache's store and attention
# --------------------------------------------------------------------------------------------------------------------

def dms_qk_norm_rope_store(qkv: torch.Tensor, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, eps: float,
                           cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                           offsets: torch.Tensor, lengths: torch.Tensor, ring_slot: torch.Tensor,
                           ring_marked: torch.Tensor, position: torch.Tensor, threshold: torch.Tensor,
                           tie: torch.Tensor, params, layer: int, q_out: torch.Tensor,
                           scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """qk_norm_rope_store for DMS's compact cache, with the DMS bookkeeping of one new token at `position` (B, 1).

    Per (batch, kv head) row bh = b * Hkv + h: the decision logit read from the first query head of the group (after
    q_norm, before RoPE; methods.dms.decision_logits) marks the PREVIOUS token in the ring (ring_marked[bh,
    (p - 1) % R]); the ring entry p % R holds the token leaving the window: if marked, the new token takes its slot,
    else slot lengths[bh] and lengths[bh] += 1. K and V go to row offsets[bh] + slot of the flat (rows, D) buffers.
    The decision channel of q is zeroed before and after RoPE (methods.dms.zero_decision_channel). `threshold`
    (Hkv,) float32 is the layer's row of `params.threshold` and `tie` (B,) float32 methods.dms.tie_break(position)
    (both zeros for the checkpoint rule): the kernel's copy of methods.dms.evicts, which the reference twin calls.
    An fp8 cache (`scales`: float32 K and V scales (B, 1 | Hkv)) stores k and v as qk_norm_rope_store does."""
    batch, heads_q, dim = q_out.shape
    heads_kv = lengths.shape[0] // batch
    ring = ring_slot.shape[1]
    if use_triton(qkv):
        k_scale, v_scale = scales if scales is not None else (cos, cos)
        _dms_store_kernel[(batch, heads_q + heads_kv)](
            qkv, q_norm if q_norm is not None else cos, k_norm if k_norm is not None else cos, cos, sin, keys, values,
            offsets, lengths, ring_slot, ring_marked, position, threshold, tie, q_out, k_scale, v_scale, eps,
            float(params.alpha_scale), float(params.alpha_offset), qkv.stride(0), cos.stride(0), keys.stride(0),
            q_out.stride(0), q_out.stride(1), *_scale_strides(scales), HEADS_Q=heads_q, HEADS_KV=heads_kv,
            GROUP=heads_q // heads_kv, D=dim, RING=ring, HAS_NORM=q_norm is not None, FP8=scales is not None)
        return q_out
    q, k, v = qkv.view(batch, heads_q + 2 * heads_kv, dim).split([heads_q, heads_kv, heads_kv], dim=1)
    if q_norm is not None:
        q, k = _rmsnorm_reference(q, q_norm, eps), _rmsnorm_reference(k, k_norm, eps)
    q = q.clone()[:, :, None, :]  # (B, Hq, 1, D): the rule's layout; never a view of qkv
    logits = rule.decision_logits(q, params)  # (B, Hkv, 1)
    evict = rule.evicts(logits, layer, params, position.view(batch, 1, 1)).reshape(-1)  # (B * Hkv,), each row at its p
    rule.zero_decision_channel(q, heads_kv)
    cos4, sin4 = cos[:, None, None, :], sin[:, None, None, :]
    q = q * cos4 + _rotate_half(q) * sin4
    rule.zero_decision_channel(q, heads_kv)
    k = k * cos[:, None, :] + _rotate_half(k) * sin[:, None, :]
    rows = torch.arange(batch * heads_kv, device=qkv.device)
    p = position.view(batch, 1).expand(batch, heads_kv).reshape(-1)
    previous, leaving = (p - 1) % ring, p % ring
    ring_marked[rows, previous] = torch.where(p > 0, evict.to(ring_marked.dtype), ring_marked[rows, previous])
    reuse = ring_marked[rows, leaving] != 0
    slot = torch.where(reuse, ring_slot[rows, leaving], lengths)
    lengths.add_((~reuse).to(lengths.dtype))
    ring_slot[rows, leaving] = slot.to(ring_slot.dtype)
    ring_marked[rows, leaving] = 0
    target = offsets + slot
    k, v = k.reshape(-1, dim), v.reshape(-1, dim)
    if scales is not None:  # written as bytes: CPU torch has no index_copy_ for float8
        k_rows, v_rows = (scale_per_row(t, batch, heads_kv)[:, None] for t in scales)
        k, v = quant.fp8_quantize(k, k_rows).view(torch.uint8), quant.fp8_quantize(v, v_rows).view(torch.uint8)
        keys, values = keys.view(torch.uint8), values.view(torch.uint8)
    keys.index_copy_(0, target, k)
    values.index_copy_(0, target, v)
    q_out.copy_(q[:, :, 0])
    return q_out


def scale_per_row(scale: torch.Tensor, batch: int, heads_kv: int) -> torch.Tensor:
    """An fp8 scale of (B, 1 | Hkv) as one value per compact row bh = b * Hkv + h."""
    return scale.expand(batch, heads_kv).reshape(-1)


def _scale_strides(scales) -> tuple[int, int]:
    """(per sequence, per kv head) strides of fp8 scales (B, 1 | Hkv); a (B, 1) scale is every head's."""
    if scales is None:
        return 0, 0
    return scales[0].stride(0), scales[0].stride(1) if scales[0].shape[1] > 1 else 0


def _ragged_decode_attention(q, keys, values, lengths, offsets, max_length, scale, out, splits, workspace,
                             scales=None):
    batch, heads_q, dim = q.shape
    heads_kv = lengths.shape[0] // batch
    group = heads_q // heads_kv
    if use_triton(q):
        partial_out, partial_lse = workspace or attention_workspace(batch, heads_q, dim, splits, q.device)
        chunk = math.ceil(math.ceil(max_length / splits) / BLOCK_N) * BLOCK_N
        k_scale, v_scale = scales if scales is not None else (q, q)
        _ragged_attention_partial_kernel[(batch * heads_kv, splits)](
            q, keys, values, lengths, offsets, partial_out, partial_lse, scale, chunk, k_scale, v_scale, q.stride(0),
            q.stride(1), keys.stride(0), *_scale_strides(scales), HEADS_KV=heads_kv, GROUP=group,
            GROUP_PAD=max(16, triton.next_power_of_2(group)), D=dim, BLOCK_N=BLOCK_N, FP8=scales is not None,
            FOLD_SCALES=False)
        _attention_combine_kernel[(batch * heads_q,)](
            partial_out, partial_lse, out, out.stride(0), out.stride(1), HEADS_Q=heads_q, GROUP=group,
            SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits), D=dim)
        return out
    # Reference: gather each head's rows into a padded (B, Hkv, max_length, D) block; rows past a head's length are
    # zeroed (they may hold another head's entries or never-written memory) and masked out.
    cols = torch.arange(max_length, device=q.device)
    live = cols[None, :] < lengths[:, None]  # (B * Hkv, M)
    index = torch.where(live, offsets[:, None] + cols[None, :], 0)
    k, v = keys[index], values[index]
    if scales is not None:  # dequantized as the kernel does: code x scale in float32, rounded to q's dtype
        k_rows, v_rows = (scale_per_row(t, batch, heads_kv)[:, None, None] for t in scales)
        k = quant.fp8_dequantize(keys.view(torch.uint8)[index].view(quant.FP8), k_rows, q.dtype)
        v = quant.fp8_dequantize(values.view(torch.uint8)[index].view(quant.FP8), v_rows, q.dtype)
    k = torch.where(live[..., None], k, 0).view(batch, heads_kv, max_length, dim)
    v = torch.where(live[..., None], v, 0).view(batch, heads_kv, max_length, dim)
    grouped = q.view(batch, heads_kv, group, dim)
    mask = live.view(batch, heads_kv, 1, max_length)
    o = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=scale)
    out.copy_(o.reshape(batch, heads_q, dim))
    return out


if triton is not None:

    @triton.jit
    def _dms_store_kernel(qkv_ptr, qn_ptr, kn_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, off_ptr, len_ptr, slot_ptr,
                          mark_ptr, pos_ptr, thr_ptr, tie_ptr, q_ptr, ks_ptr, vs_ptr, eps, alpha_scale,
                          alpha_offset, s_qkv, s_cos, s_kr, s_qb, s_qh, s_sb, s_sh, HEADS_Q: tl.constexpr,
                          HEADS_KV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, RING: tl.constexpr,
                          HAS_NORM: tl.constexpr, FP8: tl.constexpr):
        b = tl.program_id(0)
        head = tl.program_id(1)  # 0..HEADS_Q-1: query heads; then the key/value heads
        half = tl.arange(0, D // 2)
        last = half == D // 2 - 1  # in the second half: channel D - 1, the decision channel
        dtype = q_ptr.dtype.element_ty
        cos1 = tl.load(cos_ptr + b * s_cos + half).to(tl.float32)
        cos2 = tl.load(cos_ptr + b * s_cos + D // 2 + half).to(tl.float32)
        sin1 = tl.load(sin_ptr + b * s_cos + half).to(tl.float32)
        sin2 = tl.load(sin_ptr + b * s_cos + D // 2 + half).to(tl.float32)
        one = tl.full([D // 2], 1.0, tl.float32)
        zero = tl.zeros([D // 2], tl.float32)
        if head < HEADS_Q:
            src = qkv_ptr + b * s_qkv + head * D
            x1 = tl.load(src + half).to(tl.float32)
            x2 = tl.load(src + D // 2 + half).to(tl.float32)
            # the norm alone (a rotation by angle 0 is exact), then the channel zeroed, then RoPE, then zeroed again
            x1, x2 = _norm_rope(x1, x2, qn_ptr, one, one, zero, zero, eps, D, HAS_NORM, dtype)
            decides = head % GROUP == 0
            x2 = tl.where(last & decides, 0.0, x2)
            y1, y2 = _norm_rope(x1, x2, qn_ptr, cos1, cos2, sin1, sin2, eps, D, False, dtype)
            y2 = tl.where(last & decides, 0.0, y2)
            dst = q_ptr + b * s_qb + head * s_qh
            tl.store(dst + half, y1.to(dtype))
            tl.store(dst + D // 2 + half, y2.to(dtype))
        else:
            kv = head - HEADS_Q
            bh = b * HEADS_KV + kv
            # the decision: last channel of the group's first query head after q_norm (rounded as q_norm rounds)
            qsrc = qkv_ptr + b * s_qkv + kv * GROUP * D
            q1 = tl.load(qsrc + half).to(tl.float32)
            q2 = tl.load(qsrc + D // 2 + half).to(tl.float32)
            q1, q2 = _norm_rope(q1, q2, qn_ptr, one, one, zero, zero, eps, D, HAS_NORM, dtype)
            logit = tl.sum(tl.where(last, q2, 0.0), axis=0) * alpha_scale - alpha_offset
            evict = logit + tl.load(tie_ptr + b) > tl.load(thr_ptr + kv)
            p = tl.load(pos_ptr + b)
            previous = (p - 1) % RING
            leaving = p % RING
            tl.store(mark_ptr + bh * RING + previous, evict.to(mark_ptr.dtype.element_ty), mask=p > 0)
            reuse = tl.load(mark_ptr + bh * RING + leaving) != 0
            n = tl.load(len_ptr + bh)
            slot = tl.where(reuse, tl.load(slot_ptr + bh * RING + leaving), n)
            tl.store(len_ptr + bh, tl.where(reuse, n, n + 1))
            tl.store(slot_ptr + bh * RING + leaving, slot.to(slot_ptr.dtype.element_ty))
            tl.store(mark_ptr + bh * RING + leaving, 0)  # the new token's own mark: pending
            row = tl.load(off_ptr + bh) + slot.to(tl.int64)
            src = qkv_ptr + b * s_qkv + head * D
            x1 = tl.load(src + half).to(tl.float32)
            x2 = tl.load(src + D // 2 + half).to(tl.float32)
            y1, y2 = _norm_rope(x1, x2, kn_ptr, cos1, cos2, sin1, sin2, eps, D, HAS_NORM, dtype)
            kdst = k_ptr + row * s_kr  # a name of its own: an fp8 key cache's pointer is not q's
            vsrc = qkv_ptr + b * s_qkv + (HEADS_Q + HEADS_KV + kv) * D
            vdst = v_ptr + row * s_kr
            _store_kv(kdst, vdst, vsrc, y1, y2, ks_ptr + b * s_sb + kv * s_sh, vs_ptr + b * s_sb + kv * s_sh, half, D,
                      FP8, dtype)

    @triton.jit
    def _ragged_attention_partial_kernel(q_ptr, k_ptr, v_ptr, len_ptr, off_ptr, po_ptr, plse_ptr, scale, chunk,
                                         ks_ptr, vs_ptr, s_qb, s_qh, s_kr, s_sb, s_sh, HEADS_KV: tl.constexpr,
                                         GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr,
                                         BLOCK_N: tl.constexpr, FP8: tl.constexpr, FOLD_SCALES: tl.constexpr,
                                         F16_DOTS: tl.constexpr = False):
        """FOLD_SCALES and F16_DOTS: as _attention_partial_kernel's (both off in the engine until timed:
        attention_sweep --fp8 times them for dms-8x+fp8's compact rows)."""
        bh, split, b, kvh, splits = program_row(HEADS_KV)
        length = tl.load(len_ptr + bh)
        rows = tl.arange(0, GROUP_PAD)
        dims = tl.arange(0, D)
        row_ok = rows < GROUP
        q = group_query(q_ptr, b, kvh, s_qb, s_qh, rows, row_ok, dims, GROUP)
        m, l, acc = softmax_start(GROUP_PAD, D)  # noqa: E741
        start = split * chunk
        end = tl.minimum(start + chunk, length)
        kbase = k_ptr + tl.load(off_ptr + bh).to(tl.int64) * s_kr
        vbase = v_ptr + tl.load(off_ptr + bh).to(tl.int64) * s_kr
        if FP8:
            ks = tl.load(ks_ptr + b * s_sb + kvh * s_sh)
            vs = tl.load(vs_ptr + b * s_sb + kvh * s_sh)
            if FOLD_SCALES:
                scale = scale * ks
                if F16_DOTS:
                    q = q.to(tl.float16)
        first = start
        # Only this head's live rows: a short head costs no reads. A while loop, as Triton's interpreter cannot run a
        # for loop with bounds loaded from memory.
        while first < end:
            cols = first + tl.arange(0, BLOCK_N)
            live = cols < end
            k = tl.load(kbase + cols[:, None] * s_kr + dims[None, :], mask=live[:, None], other=0.0)
            if FP8 and FOLD_SCALES:
                k = k.to(q.dtype)
            elif FP8:  # dequantized in registers, as _attention_partial_kernel
                k = (k.to(tl.float32) * ks).to(q.dtype)
            s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(live[None, :], s, float("-inf"))
            m_new, p, alpha = softmax_step(m, s)
            v = tl.load(vbase + cols[:, None] * s_kr + dims[None, :], mask=live[:, None], other=0.0)
            if FP8 and FOLD_SCALES:
                v = v.to(q.dtype)
            elif FP8:
                v = (v.to(tl.float32) * vs).to(q.dtype)
            acc, l, m = accumulate_rounded(acc, l, m_new, p, alpha, v, q_ptr.dtype.element_ty)  # noqa: E741
            first += BLOCK_N
        if FP8 and FOLD_SCALES:
            acc = acc * vs
        store_split(po_ptr, plse_ptr, bh, split, splits, rows, row_ok, dims, acc, m, l, GROUP, D)
