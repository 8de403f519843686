"""DMS (Dynamic Memory Sparsification) as kvcompress runs it: the inference rule of nvidia/Qwen3-8B-DMS-8x on
transformers' own Qwen3 modules, installed like a press for one generation. No remote code, no flash-attn.

The rule (each line checked against the reference code; the references agree with each other):

- Decision logit per (layer, kv head, position p): the last channel of the FIRST query head of each GQA group,
  after q_norm and before RoPE, times `dms_alpha_scale`, minus `dms_initial_alpha_offset`; evict when > 0.
  [westers/kvcompress dms_local/modeling_qwen3_dms.py `_aux_dms_prepare_data_for_attention`:
  `query_states[:, ::q_per_kv, :, -1] * decision_scale - initial_decision_offset`, `decisions = logits > 0`;
  FastDMS fastdms/engine/dms.py: `(decision_value * alpha_scale - alpha_offset) > 0`.]
- That channel is zeroed before RoPE and again after it, so it never enters attention (same function).
- The decision computed at position p marks token p - 1: `marked[t] = decision[t + 1]`; the last token's mark is
  pending until the next token arrives. [dms_attention.py `prepare_data_for_attention`: "the token t+1 predicts
  whether to evict token t", `pad(attn_bias, (-1, 1))`; between prefill chunks the first decision of a chunk is
  carried to the previous chunk's last token (`carry_bias`); in decode `_aux_update_single` writes the new token's
  decision into the previous ring entry (`previous_recent_info_position`).]
- Delayed eviction: query q sees key k iff  k <= q  and not (marked[k] and q - k > window), window =
  `dms_window_size` (512). [make_mask: `tril(ones, diagonal=-1 - ws)` masks (q, k) with k <= q - 1 - ws, i.e.
  q - k > ws, for marked k; dms_attention is called with `window_size=config.dms_window_size`. Model-Optimizer
  dms/attention.py: `within_sliding_window = q_idx - k_idx <= window_size`; FastDMS: `current - pos <= window`.]
  So a marked token is still seen by the query `window` positions after it and gone for the one after.
- Decode is the same rule: the cache's ring holds window + 1 entries (`DMSCache(dms_window_size=
  config.dms_window_size + 1)`); when token p is appended, the ring entry of token p - (window + 1) is the eviction
  candidate and, if marked, its slot is overwritten before p attends (`_aux_update_single`): gone at q - k =
  window + 1, kept at q - k = window, exactly as in prefill. After a prefill of S tokens the cache keeps what query
  S - 1 sees (`_update_many` applies the same evictions chunk by chunk).

Prefill attends with that mask without any L x L tensor: on CUDA a compiled FlexAttention kernel whose block mask
is built from block indices (blocks inside the window are full, the diagonal and older blocks evaluate the rule
per element); on CPU a loop over query chunks (exact, small masks). Decode in the hf engine keeps every entry
(`MaskedDMSCache`: mask, no reclaim) and masks with `visible`.

Random weights make untrained decisions (about half of all tokens are marked), so for speed and memory at the
checkpoint's target a per-(layer, kv head) threshold can be calibrated on the cell's prompt (`calibrate`): the
fraction of tokens outside the window that are marked then equals the target (1 - 1/dms_cr by default).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from transformers import DynamicCache
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, apply_rotary_pos_emb

from kvcompress.errors import UserError
from kvcompress.memory import KVState, ReportsOwnKV, per_head_state

PREFILL_CHUNK = 512  # CPU path: queries per chunk (the mask of one chunk is Hkv x 512 x L booleans)
FLEX_BLOCK = 128


@dataclass(frozen=True, eq=False)
class DMSParams:
    window: int  # dms_window_size
    alpha_scale: float  # dms_alpha_scale
    alpha_offset: float  # dms_initial_alpha_offset
    cr: float  # dms_cr: the compression the checkpoint was trained for
    kv_heads: int = 0
    threshold: torch.Tensor | None = None  # (layers, kv heads) logit thresholds; None: the checkpoint's rule (> 0)
    decisions: str = "checkpoint"

    @classmethod
    def from_config(cls, config) -> DMSParams:
        """The dms_* fields of a config; absent ones take DMS-8x's config-class defaults (alpha scale 100, offset 5,
        cr 8: westers/kvcompress dms_local/configuration_qwen3_dms.py), as its config.json relies on them."""
        missing = [k for k in ("dms_window_size",) if getattr(config, k, None) is None]
        if missing:
            raise UserError(f"the model's config has no {missing[0]}: it is not a DMS model")
        return cls(window=int(config.dms_window_size), alpha_scale=float(getattr(config, "dms_alpha_scale", 100.0)),
                   alpha_offset=float(getattr(config, "dms_initial_alpha_offset", 5.0)),
                   cr=float(getattr(config, "dms_cr", 8)), kv_heads=int(config.num_key_value_heads))

    @property
    def default_evict(self) -> float:
        """The fraction of tokens outside the window that a checkpoint trained for dms_cr evicts."""
        return 1.0 - 1.0 / self.cr


def decision_logits(q_normed: torch.Tensor, params: DMSParams) -> torch.Tensor:
    """(B, Hq, T, D) queries after q_norm, before RoPE -> (B, Hkv, T) float32 logits."""
    group = q_normed.shape[1] // params.kv_heads
    return q_normed[:, ::group, :, -1].float() * params.alpha_scale - params.alpha_offset


def evicts(logits: torch.Tensor, layer: int, params: DMSParams, positions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, Hkv, T) logits -> bool decisions (True: evict the token before this position, once out of the window).

    Calibrated thresholds compare `logits + tie_break(positions)`: `positions` (T,), or (B, 1, T) for a batch whose
    rows sit at different positions, is then required."""
    if params.threshold is None:
        return logits > 0
    return logits + tie_break(positions) > params.threshold[layer][None, :, None]


def tie_break(positions: torch.Tensor) -> torch.Tensor:
    """A fixed sub-1e-3 offset per position, for calibrated thresholds only: before RoPE a layer-0 query depends on
    the token alone, so repeated tokens tie exactly and no threshold could evict a given fraction of them."""
    return (torch.frac(positions.to(torch.float64) * 0.6180339887498949) * 1e-3).to(torch.float32)


def zero_decision_channel(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Zero the borrowed channel in place (B, Hq, T, D): it carries the decision, not attention."""
    q[:, :: q.shape[1] // kv_heads, :, -1] = 0
    return q


def visible(query_pos, key_pos, marked, window: int) -> torch.Tensor:
    """THE visibility rule (broadcasting): causal, and a marked token is gone once older than `window` positions."""
    return (key_pos <= query_pos) & ~(marked & (query_pos - key_pos > window))


def marks_from_decisions(decisions: torch.Tensor) -> torch.Tensor:
    """Decisions per position (B, Hkv, S) -> marks per token: marked[t] = decision[t + 1]; the last is pending."""
    return torch.nn.functional.pad(decisions[..., 1:], (0, 1), value=False)


# --- the hf engine's cache ------------------------------------------------------------------------------------------


class DMSCache:
    """A cache DMSPatch can write into: `dms_prefill_layer` keeps what the last prefill query sees; the hf decode
    also calls `dms_decode_layer` (the fast engine decodes its compact cache with its own step)."""

    def dms_prefill_layer(self, layer_idx: int, keys, values, marked) -> None:
        raise NotImplementedError

    def dms_decode_layer(self, layer_idx: int, keys, values, decision):
        raise NotImplementedError(f"{type(self).__name__} is decoded by its own engine, not by transformers' forward")


class MaskedDMSCache(DynamicCache, ReportsOwnKV, DMSCache):
    """Every K/V entry kept, plus each token's mark: the rule applied by masking (reference semantics, no reclaim).

    A batch (`stack`): the sequences' caches right-padded to the longest prompt; the pads sit at a position no query
    reaches (never visible), each row keeps its own positions, and decoded tokens follow at the same column in
    every row (column c >= padded holds row b's position c - pad_b)."""

    layout = "mask, no reclaim"

    def __init__(self, window: int):
        super().__init__()
        self.window = window
        self.marked: list[torch.Tensor] = []  # per layer (B, Hkv, L) bool
        self.prompt_lengths: torch.Tensor | None = None  # a stacked batch: each row's prefilled length (B,)
        self.padded = 0  # a stacked batch: the columns of the prefilled part (the longest prompt)

    def dms_prefill_layer(self, layer_idx: int, keys, values, marked) -> None:
        self.update(keys, values, layer_idx)
        self.marked.append(marked)

    def dms_decode_layer(self, layer_idx: int, keys, values, decision):
        """Append one token (B, Hkv, 1, D); its decision marks the previous token. Returns K, V and the mask."""
        marked = self.marked[layer_idx]
        if self.prompt_lengths is not None and marked.shape[-1] == self.padded:
            # a stacked batch's first decoded token: each row's previous token is its last prompt token
            last = (self.prompt_lengths - 1).view(-1, 1, 1).expand(-1, marked.shape[1], 1)
            marked.scatter_(2, last, decision[..., :1])
        else:
            marked[..., -1] = decision[..., 0]
        marked = torch.cat([marked, torch.zeros_like(marked[..., :1])], dim=-1)
        self.marked[layer_idx] = marked
        keys, values = self.update(keys, values, layer_idx)
        return keys, values, self._seen(marked)

    def _positions(self, length: int, device):
        """Each column's position and each row's newest position (the last query): (L,) and a scalar for one
        sequence; (B, 1, L) and (B, 1, 1) for a stacked batch, whose pads get a position no query reaches."""
        cols = torch.arange(length, device=device)
        if self.prompt_lengths is None:
            return cols, torch.tensor(length - 1, device=device)
        n = self.prompt_lengths[:, None]
        pad = self.padded - n  # (B, 1)
        keys = torch.where(cols < n, cols, torch.where(cols >= self.padded, cols - pad, PAD_POSITION))
        return keys[:, None, :], (length - 1 - pad)[:, None]

    def _seen(self, marked: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, L): what the newest query of each row sees."""
        keys, query = self._positions(marked.shape[-1], marked.device)
        return visible(query, keys, marked, self.window)

    def live_per_head(self) -> list[torch.Tensor]:
        """(B * Hkv,) live entries per layer: what the next query could see if it were the last one seen."""
        return [self._seen(marked).sum(-1).flatten() for marked in self.marked]

    def live_positions(self, row: int = 0) -> list[list[list[int]]]:
        """[layer][kv head] sorted positions the next query of batch row `row` sees (for tests; synchronises)."""
        out = []
        for marked in self.marked:
            keys, _ = self._positions(marked.shape[-1], marked.device)
            keys = keys.expand(marked.shape[0], 1, -1)[row, 0] if keys.dim() == 3 else keys
            seen = self._seen(marked)[row]
            out.append([sorted(keys[head].tolist()) for head in seen])
        return out

    @classmethod
    def stack(cls, caches: list[MaskedDMSCache]) -> MaskedDMSCache:
        """Batch-1 caches as one batch, right-padded to the longest; each source layer is freed as it is stacked."""
        out = cls(caches[0].window)
        lengths = [c.layers[0].keys.shape[2] for c in caches]
        padded, n = max(lengths), len(caches)
        for i in range(len(caches[0].layers)):
            stacked = []
            for name in ("keys", "values"):
                heads, dim = getattr(caches[0].layers[i], name).shape[1::2]
                like = getattr(caches[0].layers[i], name)
                t = like.new_zeros(n, heads, padded, dim)
                del like
                for b, c in enumerate(caches):
                    t[b, :, :lengths[b]].copy_(getattr(c.layers[i], name)[0])
                    setattr(c.layers[i], name, t.new_empty(0))
                stacked.append(t)
            marks = caches[0].marked[i].new_zeros(n, caches[0].marked[i].shape[1], padded)
            for b, c in enumerate(caches):
                marks[b, :, :lengths[b]] = c.marked[i][0]
                c.marked[i] = marks.new_empty(0)
            out.update(stacked[0], stacked[1], i)
            out.marked.append(marks)
        out.prompt_lengths = torch.tensor(lengths, device=out.marked[0].device)
        out.padded = padded
        return out

    def copy(self) -> MaskedDMSCache:
        """An independent copy (cloned admission: the rows of a batch that repeat the first sequence)."""
        out = type(self)(self.window)
        for i, layer in enumerate(self.layers):
            out.update(layer.keys.clone(), layer.values.clone(), i)
        out.marked = [m.clone() for m in self.marked]
        out.prompt_lengths = self.prompt_lengths.clone() if self.prompt_lengths is not None else None
        out.padded = self.padded
        return out

    def kv_snapshot(self, positions):
        counts = [c.clone() for c in self.live_per_head()]  # on device: no synchronisation in a timed region
        sizes = [(layer.keys.nbytes + layer.values.nbytes, layer.keys.shape) for layer in self.layers]
        return lambda: self._state(counts, sizes, positions)

    def kv_state(self, positions) -> KVState:
        return self.kv_snapshot(positions)()

    def _state(self, counts, sizes, positions) -> KVState:
        # entry: K and V of one token of one head = the layer's bytes / (batch x heads x columns held, pads included)
        return rows_state([(nbytes, nbytes // (shape[0] * shape[1] * shape[2]), n)
                           for n, (nbytes, shape) in zip(counts, sizes)], positions)


PAD_POSITION = 1 << 62  # a pad's position in a stacked batch: after every query, so never visible


def rows_state(layers, positions) -> KVState:
    """memory.per_head_state for one sequence (`positions` a count) or a batch (one count per sequence; rows
    b * Hkv + h): full_bytes is then what vanilla holds for each sequence's own positions, summed."""
    if not isinstance(positions, list):
        return per_head_state(layers, positions)
    state = per_head_state(layers, 0)
    full = sum(entry * (len(counts) // len(positions)) * sum(positions) for _, entry, counts in layers)
    return replace(state, full_bytes=full, positions=sum(positions) / len(positions))


# --- attention ------------------------------------------------------------------------------------------------------


def _chunked_prefill(q, k, v, marked, window: int, scale: float) -> torch.Tensor:
    """Exact DMS attention, one chunk of queries at a time (mask Hkv x chunk x L): the CPU path and its oracle."""
    batch, hq, length, dim = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    qg = q.view(batch, hkv, group, length, dim)
    keys = torch.arange(length, device=q.device)
    out = torch.empty_like(q).view(batch, hkv, group, length, dim)
    for start in range(0, length, PREFILL_CHUNK):
        end = min(length, start + PREFILL_CHUNK)
        queries = torch.arange(start, end, device=q.device)[:, None]
        mask = visible(queries, keys[None, :end], marked[:, :, None, :end], window)  # (B, Hkv, chunk, end)
        chunk = qg[:, :, :, start:end].reshape(batch, hkv, group * (end - start), dim)
        mask = mask[:, :, None].expand(-1, -1, group, -1, -1).reshape(batch, hkv, group * (end - start), end)
        o = torch.nn.functional.scaled_dot_product_attention(chunk, k[:, :, :end], v[:, :, :end], attn_mask=mask,
                                                             scale=scale)
        out[:, :, :, start:end] = o.view(batch, hkv, group, end - start, dim)
    return out.view(batch, hq, length, dim)


@lru_cache(maxsize=8)
def _block_layout(length: int, window: int, block: int, device: str):
    """The block structure of the DMS mask, from block indices only: a kv block wholly inside every query's window
    (and before the diagonal) is full; the diagonal and older blocks are partial (the rule per element)."""
    n = (length + block - 1) // block
    qb = torch.arange(n, device=device)[:, None]
    kb = torch.arange(n, device=device)[None, :]
    full = (kb < qb) & ((qb - kb) * block + block - 1 <= window)
    partial = (kb <= qb) & ~full

    def indices(selected):
        order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return selected.sum(-1).to(torch.int32)[None, None], order[None, None].contiguous()

    return indices(partial), indices(full)


class FlexPrefill:
    """FlexAttention with the DMS mask for one prompt length, shared by every layer of a forward: one block mask
    (from block indices) and one mask_mod reading the layer's marks from one buffer, so the compiled kernel sees
    the same objects at every layer (no recompilation, no host synchronisation)."""

    def __init__(self, length: int, window: int, group: int, kv_heads: int, device, compiled: bool):
        from torch.nn.attention.flex_attention import BlockMask, flex_attention

        # padded to whole blocks: the kernel may evaluate mask_mod on the last block's padding positions
        padded = (length + FLEX_BLOCK - 1) // FLEX_BLOCK * FLEX_BLOCK
        self.marked = torch.zeros(1, kv_heads, padded, dtype=torch.bool, device=device)
        marks = self.marked

        def mask_mod(b, h, q_idx, kv_idx):
            return visible(q_idx, kv_idx, marks[b, h // group, kv_idx], window)

        (kv_n, kv_i), (full_n, full_i) = _block_layout(length, window, FLEX_BLOCK, str(device))
        self.block_mask = BlockMask.from_kv_blocks(kv_n, kv_i, full_n, full_i, BLOCK_SIZE=FLEX_BLOCK,
                                                   mask_mod=mask_mod, seq_lengths=(length, length),
                                                   compute_q_blocks=False)
        self.fn = _compiled_flex() if compiled else flex_attention

    def __call__(self, q, k, v, marked, scale: float) -> torch.Tensor:
        self.marked[..., :marked.shape[-1]].copy_(marked)
        return self.fn(q, k, v, block_mask=self.block_mask, scale=scale, enable_gqa=True)


class SplitFlexPrefill:
    """The same attention as FlexPrefill in two kernels whose outputs are merged by log-sum-exp: the window band
    (k in [q - window, q], every key, a few blocks per query block) and the far part over each head's unmarked keys
    only, compacted in position order (visible iff position < q - window: a prefix of them per query, so nearly every
    visited block is full). With 7/8 of the tokens marked the far part visits ~1/8 of the causal blocks; the two key
    sets are disjoint and together exactly what `visible` admits. All on the device, no host synchronisation."""

    BIG = 1 << 30  # position of a padding slot: never visible

    def __init__(self, length: int, window: int, group: int, kv_heads: int, device, compiled: bool):
        from torch.nn.attention.flex_attention import BlockMask, flex_attention

        self.length, self.window, self.group = length, window, group
        n = (length + FLEX_BLOCK - 1) // FLEX_BLOCK
        qb = torch.arange(n, device=device)[:, None]
        kb = torch.arange(n, device=device)[None, :]
        touches = (kb <= qb) & (qb * FLEX_BLOCK - (kb * FLEX_BLOCK + FLEX_BLOCK - 1) <= window)
        full = (kb < qb) & ((qb + 1) * FLEX_BLOCK - 1 - kb * FLEX_BLOCK <= window)

        def band_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx <= window)

        # per query head, like the far mask: both kernels then have one signature (one compiled graph per length)
        heads = lambda t: t.expand(1, kv_heads * group, *t.shape[2:]).contiguous()  # noqa: E731
        (pn, pi), (fn, fi) = _indices(touches & ~full), _indices(full)
        self.band = BlockMask.from_kv_blocks(heads(pn), heads(pi), heads(fn), heads(fi), BLOCK_SIZE=FLEX_BLOCK,
                                             mask_mod=band_mod, seq_lengths=(length, length), compute_q_blocks=False)
        self.far_pos = torch.full((1, kv_heads, n * FLEX_BLOCK), self.BIG, dtype=torch.int32, device=device)
        far_pos = self.far_pos

        def far_mod(b, h, q_idx, kv_idx):
            return far_pos[b, h // group, kv_idx] < q_idx - window

        self.far_mod = far_mod
        rows = torch.arange(n, device=device) * FLEX_BLOCK
        self.q_first, self.q_last = rows, (rows + FLEX_BLOCK - 1).clamp(max=length - 1)
        self.slots = torch.arange(length, device=device, dtype=torch.int32)
        self.blocks = torch.arange(n, device=device, dtype=torch.int32)
        self.fn = _compiled_flex() if compiled else flex_attention
        self.BlockMask = BlockMask

    def far_mask(self, marked):
        """Compact each head's unmarked keys (order) and the far part's block mask, from their positions."""
        batch, heads, length = marked.shape
        order = torch.argsort(marked.to(torch.int8), dim=-1, stable=True)  # unmarked first, in position order
        count = (~marked).sum(-1, keepdim=True)
        pos = torch.where(self.slots < count, order.to(torch.int32), self.BIG)
        self.far_pos[..., :length].copy_(pos)
        blocks = self.far_pos.view(batch, heads, -1, FLEX_BLOCK)
        first, last = blocks[..., 0], blocks[..., -1]  # (B, Hkv, n) ascending: each block's first and last position
        seen = first[:, :, None, :] < (self.q_last - self.window)[None, None, :, None]  # some query sees a key
        full = last[:, :, None, :] < (self.q_first - self.window)[None, None, :, None]  # every query sees all
        kv_n, full_n = seen.sum(-1, dtype=torch.int32), full.sum(-1, dtype=torch.int32)  # prefixes of the blocks
        n = self.blocks.shape[0]
        partial_i = (full_n[..., None] + self.blocks).clamp(max=n - 1)
        full_i = self.blocks.expand(batch, heads, n, n)
        g = self.group
        expand = lambda t: t.repeat_interleave(g, dim=1).contiguous()  # noqa: E731 - per query head
        mask = self.BlockMask.from_kv_blocks(expand(kv_n - full_n), expand(partial_i), expand(full_n),
                                             expand(full_i), BLOCK_SIZE=FLEX_BLOCK, mask_mod=self.far_mod,
                                             seq_lengths=(length, length), compute_q_blocks=False)
        return order, mask

    def __call__(self, q, k, v, marked, scale: float) -> torch.Tensor:
        from torch.nn.attention.flex_attention import AuxRequest

        order, far_mask = self.far_mask(marked)
        index = order[..., None].expand(-1, -1, -1, k.shape[-1])
        far_k, far_v = k.gather(2, index), v.gather(2, index)
        lse = AuxRequest(lse=True)
        near, near_aux = self.fn(q, k, v, block_mask=self.band, scale=scale, enable_gqa=True, return_aux=lse)
        far, far_aux = self.fn(q, far_k, far_v, block_mask=far_mask, scale=scale, enable_gqa=True, return_aux=lse)
        # weights from the two log-sum-exps (B, Hq, L), in fp32; b is -inf where a query sees no far key (flex
        # then returns zeros for that row). The outputs are combined in their own dtype: no fp32 copy of them.
        a, b = near_aux.lse.float(), far_aux.lse.float()
        wb = torch.sigmoid(b - a)  # = e^b / (e^a + e^b); 0 where b = -inf (a is finite: every query sees itself)
        wb = wb.to(q.dtype)[..., None]
        return torch.lerp(near, far, wb)


def _indices(selected):
    """(n, n) bool of selected kv blocks per query block -> (counts, indices with the selected ones first)."""
    order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return selected.sum(-1).to(torch.int32)[None, None], order[None, None].contiguous()


# FlexPrefill (one kernel, the rule per element) or SplitFlexPrefill (window band + compacted far keys); the GPU
# can A/B them with KVCOMPRESS_DMS_PREFILL=single|split (default split).
PREFILL_KERNELS = {"single": FlexPrefill, "split": SplitFlexPrefill}


@lru_cache(maxsize=8)
def _prefill_kernel(kind: str, length: int, window: int, group: int, kv_heads: int, device: str, compiled: bool):
    """One kernel object per prompt shape for the whole process: every layer and every generation (warm-up, repeats)
    hands the compiled flex_attention the same mask_mod and buffers, so it compiles once per length."""
    if kind not in PREFILL_KERNELS:
        raise UserError(f"KVCOMPRESS_DMS_PREFILL={kind!r}: use one of {', '.join(PREFILL_KERNELS)}")
    return PREFILL_KERNELS[kind](length, window, group, kv_heads, torch.device(device), compiled)


def _flex_prefill(q, k, v, marked, window: int, scale: float, compiled: bool, kind: str = "single") -> torch.Tensor:
    flex = PREFILL_KERNELS[kind](q.shape[2], window, q.shape[1] // k.shape[1], k.shape[1], q.device, compiled)
    return flex(q, k, v, marked, scale)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # automatic dynamic shapes: a second prompt length recompiles once with a symbolic length, not per length
    return torch.compile(flex_attention)


def prefill_attention(q, k, v, marked, window: int, scale: float, flex: FlexPrefill | None = None) -> torch.Tensor:
    """DMS attention over a whole prompt: `flex` (CUDA: the compiled kernel) or the exact chunked loop (CPU)."""
    if flex is not None:
        return flex(q, k, v, marked, scale)
    return _chunked_prefill(q, k, v, marked, window, scale)


class DMSPatch:
    """The method's context manager (used like a press: `with DMSPatch(params)(model): ...`).

    Inside it every Qwen3Attention runs the DMS rule; the cache must implement `dms_prefill_layer` (MaskedDMSCache
    for the hf engine, the fast engine's compact cache) and, for hf decode, `dms_decode_layer`.
    `calibrate_to` (a fraction) turns one prefill into a calibration: each layer sets its thresholds from its own
    logits before it attends, so later layers see the calibrated evictions of earlier ones.
    """

    def __init__(self, params: DMSParams, calibrate_to: float | None = None):
        self.params = params
        self.calibrate_to = calibrate_to
        self.thresholds: dict[int, torch.Tensor] = {}

    def __call__(self, model):
        return self._installed(model)

    @contextlib.contextmanager
    def _installed(self, model):
        attentions = [m for m in model.modules() if type(m) is Qwen3Attention]
        if not attentions:  # e.g. a checkpoint loaded through its remote code: its classes only share the names
            raise UserError(f"native DMS runs on transformers' Qwen3Attention; {type(model).__module__}."
                            f"{type(model).__name__} has none")
        for module in attentions:
            module.forward = self._forward_for(module)  # instance attribute: shadows the class's forward
        try:
            yield self
        finally:
            for module in attentions:
                del module.forward

    def _flex_for(self, q, k) -> FlexPrefill | None:
        cuda = q.device.type == "cuda"
        if not cuda and not os.environ.get("KVCOMPRESS_FORCE_FLEX"):  # tests force the flex path on CPU (eager)
            return None
        kind = os.environ.get("KVCOMPRESS_DMS_PREFILL", "split")
        return _prefill_kernel(kind, q.shape[2], self.params.window, q.shape[1] // k.shape[1], k.shape[1],
                               str(q.device), cuda)

    def current_params(self) -> DMSParams:
        if self.calibrate_to is None:
            return self.params
        size = max(self.thresholds) + 1
        threshold = torch.stack([self.thresholds.get(i, self.thresholds[max(self.thresholds)]) for i in range(size)])
        return replace(self.params, threshold=threshold)

    def calibrated_params(self, target: float) -> DMSParams:
        layers = sorted(self.thresholds)
        threshold = torch.stack([self.thresholds[i] for i in layers])  # stays on the device: no copy per layer
        return replace(self.params, threshold=threshold,
                       decisions=f"calibrated to evict {target:g} of tokens outside the window")

    def _forward_for(self, module):
        params, patch = self.params, self

        def forward(hidden_states, position_embeddings, attention_mask=None, past_key_values=None,
                    cache_position=None, **kwargs):
            shape = (*hidden_states.shape[:-1], -1, module.head_dim)
            q = module.q_norm(module.q_proj(hidden_states).view(shape)).transpose(1, 2)
            k = module.k_norm(module.k_proj(hidden_states).view(shape)).transpose(1, 2)
            v = module.v_proj(hidden_states).view(shape).transpose(1, 2)
            layer = module.layer_idx
            logits = decision_logits(q, params)
            if cache_position is None:
                cache_position = torch.arange(q.shape[2], device=q.device) + past_key_values.get_seq_length(layer)
            if patch.calibrate_to is not None:
                patch.thresholds[layer] = _threshold(logits + tie_break(cache_position), params.window,
                                                     patch.calibrate_to)
            # each row's own positions (a padded batch's cache_position is its column, not the row's position)
            position_ids = kwargs.get("position_ids")
            positions = position_ids[:, None, :] if position_ids is not None else cache_position  # (B, 1, T)
            decisions = evicts(logits, layer, patch.current_params(), positions)
            zero_decision_channel(q, params.kv_heads)  # logits above are a new tensor
            cos, sin = position_embeddings
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            zero_decision_channel(q, params.kv_heads)
            cache = past_key_values
            if not isinstance(cache, DMSCache):
                raise UserError("native DMS needs its own cache (MaskedDMSCache or the fast engine's)")
            batch, _, length, _ = q.shape
            if cache.get_seq_length(layer) == 0:
                if batch != 1:
                    raise UserError("native DMS prefills one sequence at a time (a batch admits them one by one)")
                marked = marks_from_decisions(decisions)
                out = prefill_attention(q, k, v, marked, params.window, module.scaling, patch._flex_for(q, k))
                cache.dms_prefill_layer(layer, k, v, marked)
            elif length == 1:
                keys, values, mask = cache.dms_decode_layer(layer, k, v, decisions)
                out = _decode_attention(q, keys, values, mask, module.scaling)
            else:
                raise UserError("native DMS allows one prefill per cache, then one token at a time")
            out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
            return module.o_proj(out), None

        return forward


def _decode_attention(q, keys, values, mask, scale):
    """q (B, Hq, 1, D) over all entries (B, Hkv, L, D), mask (B, Hkv, L): queries grouped per kv head."""
    batch, hq, _, dim = q.shape
    hkv = keys.shape[1]
    grouped = q.view(batch, hkv, hq // hkv, dim)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask[:, :, None, :],
                                                           scale=scale)
    return out.reshape(batch, hq, 1, dim)


def _threshold(logits: torch.Tensor, window: int, target: float) -> torch.Tensor:
    """(Hkv,) thresholds so that `target` of the tokens outside the window at the prompt's end are marked.

    Token t is outside the window for the last query S - 1 when S - 1 - t > window; its mark is the decision at
    t + 1, so those decisions are logits[..., 1 : S - window]. A prompt shorter than that uses every decision."""
    length = logits.shape[-1]
    chosen = logits[0, :, 1:max(2, length - window)].float()
    if chosen.shape[-1] == 0:
        return torch.full((logits.shape[1],), float("inf"), device=logits.device)
    # midway between the last kept and the first evicted value: round(target * n) evicted, with a margin on both
    # sides, so that rounding differences between attention kernels do not flip the boundary token
    values = torch.sort(chosen, dim=-1).values
    n = values.shape[-1]
    keep = n - round(target * n)
    below = values[:, keep - 1] if keep > 0 else values[:, 0] - 1.0
    above = values[:, keep] if keep < n else values[:, -1] + 1.0
    return (below + above) / 2


@torch.inference_mode()
def calibrate(model, input_ids: torch.Tensor, params: DMSParams, target: float) -> DMSParams:
    """One prefill of the prompt that sets per-(layer, kv head) thresholds; run it outside any timed region."""
    patch = DMSPatch(params, calibrate_to=target)
    with patch(model):
        model.model(input_ids=input_ids, past_key_values=MaskedDMSCache(params.window), use_cache=True)
    return patch.calibrated_params(target)
