"""A quality batch's forced tokens in one forward (engine/quality.py feeds each row its question as forced tokens).

Every row's first q_b steps take its question's tokens; the steps before the shortest question's last token are
forced for every row, so they need no sampling and no logits: `feed_forced` runs them as one multi-token forward
over the padded buffers of fast/decoder.py (each row's new tokens written after the layer's longest row, where its
single steps would write them; each query attends to the row's live entries and to the new tokens up to itself),
and leaves the decode state as those steps would have: the remaining question tokens and the answers are then
decoded one step at a time as before. One forward over e tokens of B rows reads the weights once instead of e
times (RULER's questions are ~40 tokens, a quarter of a 4K run's decode steps).

Plain eager torch (GEMMs, SDPA with a mask), on CPU and CUDA alike; the step's own kernels stay the decode's. Its
values are those of the steps it replaces up to floating-point rounding (tests/test_shared_prefill.py holds the
tokens and every buffer entry against the single steps'; tests/kernel_check.py quality-gpu runs it on a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvcompress.engine.fast.kernels import _rmsnorm_reference, _rotate_half

MASK_ELEMENTS = 1 << 26  # the attention mask of one slice of rows (bools): rows are taken this many at a time


def forced_steps(answer_from: list[int], steps: int) -> int:
    """How many steps after the first are forced in every row (row b's token at step s is forced while s < its
    answer's first step), leaving at least one of the decode's `steps` to run singly (it captures the graph); 0 when
    fewer than 2 (a forward for one token saves nothing)."""
    e = min(min(answer_from) - 1, steps - 2)
    return e if e >= 2 else 0


def feed_forced(state, e: int) -> None:
    """Run steps 1..e of `state` (fast/decoder.py's _DecodeState, bf16 or fp32 buffers, loaded, before its first
    step) in one forward: afterwards its buffers, lengths, position, token, step index and outputs are those of step e."""
    model = state.decoder.model
    batch = state.token.shape[0]
    device = state.token.device
    inputs = torch.cat([state.token.view(batch, 1), state.forced[1:e].T], dim=1)  # the tokens steps 1..e read
    positions = state.position + torch.arange(e, device=device)  # (B, e)
    h = model.model.embed_tokens(inputs)
    cos, sin = model.model.rotary_emb(h, positions)  # (B, e, D)
    cos, sin = cos[:, None], sin[:, None]
    written = state.signature[0]  # each layer's longest row: the new tokens go after it, as single steps write them
    for i, w in enumerate(state.decoder.layers):
        x = w.input_norm(h)
        q, k, v = _heads(F.linear(x, w.qkv_weight, w.qkv_bias), state.keys[i].shape[1], state.q.shape[1])
        if w.q_norm is not None:
            q = _rmsnorm_reference(q, w.q_norm.weight, w.q_norm.variance_epsilon)
            k = _rmsnorm_reference(k, w.k_norm.weight, w.k_norm.variance_epsilon)
        q = (q * cos + _rotate_half(q) * sin).to(h.dtype)
        k = (k * cos + _rotate_half(k) * sin).to(h.dtype)
        start = written[i]
        state.keys[i][:, :, start:start + e] = k
        state.values[i][:, :, start:start + e] = v
        if state.valid[i] is not None:
            state.valid[i][:, :, start:start + e] = 1
        attn = _attention(q, state.keys[i], state.values[i], state.valid[i], start, e, w.scale)
        h = h + w.o_proj(attn)
        gate, up = F.linear(w.post_norm(h), w.gate_up_weight).chunk(2, dim=-1)
        h = h + w.down_proj(F.silu(gate) * up)
    state.out[1:e + 1] = state.forced[1:e + 1]
    state.token.copy_(state.forced[e])
    state.position.add_(e)
    state.lengths.add_(e)
    state.step_index.fill_(e + 1)


def _heads(qkv: torch.Tensor, heads_kv: int, heads_q: int):
    """(B, e, (Hq + 2 Hkv) D) -> q (B, Hq, e, D), k and v (B, Hkv, e, D)."""
    batch, e, width = qkv.shape
    dim = width // (heads_q + 2 * heads_kv)
    q, k, v = qkv.view(batch, e, heads_q + 2 * heads_kv, dim).transpose(1, 2).split([heads_q, heads_kv, heads_kv],
                                                                                      dim=1)
    return q, k, v


def _attention(q, keys, values, valid, start: int, e: int, scale: float) -> torch.Tensor:
    """Query t of each row (written at start + t) over the row's entries [0, start + t]: the pads and the masked
    entries hidden by `valid` (B, Hkv, S); (B, e, Hq D)."""
    batch, heads_q, _, dim = q.shape
    heads_kv = keys.shape[1]
    group = heads_q // heads_kv
    seen = start + e
    causal = torch.arange(seen, device=q.device)[None, :] <= start + torch.arange(e, device=q.device)[:, None]
    out = torch.empty(batch, heads_q, e, dim, dtype=q.dtype, device=q.device)
    rows = max(1, MASK_ELEMENTS // (heads_q * e * seen))
    for b in range(0, batch, rows):
        end = min(batch, b + rows)
        mask = causal[None, None]  # (1, 1, e, S)
        if valid is not None:
            mask = mask & valid[b:end, :, None, :seen].bool()  # (b, Hkv, e, S)
        # the query heads of one KV head as one block of rows: (b, Hkv, G e, D) against that head's (b, Hkv, S, D)
        grouped = q[b:end].reshape(end - b, heads_kv, group * e, dim)
        mask = mask[:, :, None].expand(-1, -1, group, -1, -1).reshape(mask.shape[0], mask.shape[1], group * e, seen)
        out[b:end] = F.scaled_dot_product_attention(grouped, keys[b:end, :, :seen], values[b:end, :, :seen],
                                                    attn_mask=mask, scale=scale).reshape(end - b, heads_q, e, dim)
    return out.transpose(1, 2).reshape(batch, e, heads_q * dim)
