"""Native DMS in the fast engine: memory really reclaimed, decoding at the fast engine's speed.

`CompactDMSCache` is the cache the prefill writes into (`CompactDMSBackend.new_cache`, asked by
`FastDecoder.new_dms_cache`). As each layer finishes its prefill
(methods/dms.py's attention patch calls `dms_prefill_layer`), its K/V are compacted at once into a per-(layer, batch,
kv head) ragged layout and the full K/V of the layer can be freed:

- one flat K and one flat V buffer per layer, rows of head_dim; head bh = b * Hkv + h owns the rows
  offsets[bh] .. offsets[bh] + capacity[bh], of which the first lengths[bh] are written;
- capacity[bh] = entries live after prefill + the decode reserve (max_new_tokens - 1: the tokens this decode can
  write). The reserve is the layout's slack: after prefill kv_cache_bytes - kv_live_bytes is exactly
  reserve x (layers x batch x kv heads) entries; each decoded token fills one reserve row unless it takes the slot of
  a marked token leaving the window, so at the end the slack is the reserve rows never filled;
- a ring of the last R positions per head (R = the first age at which a marked token is no longer visible:
  window + 1, derived from methods.dms.visible) with each entry's slot and mark, as the reference cache keeps it.
  This metadata (offsets, lengths, ring: 12 + 5 R bytes per (layer, batch, kv head), 0.7 MB on Qwen3-8B) is not
  counted in the KV bytes, which are the K/V buffers only.

Live entries are those the last query processed sees (`visible`): after a prefill of S tokens, query S - 1 (which is
what the reference's paged cache holds). Decoding token p (dms_qk_norm_rope_store, one kernel per layer): its
decision logit marks token p - 1 in the ring; the ring entry of token p - R is the token leaving the window: if it
is marked, token p overwrites its slot, else token p takes the next free row; then split-K attention reads exactly
lengths[bh] rows per head. Every input of the step is a static device tensor, so the step is one CUDA graph, replayed
across timed repeats as long as the prefill produced the same per-head capacities (the same prompt does).

An fp8 cache (`dms-8x+fp8`, methods/quantized.py): the K/V buffers hold e4m3 codes, with one float32 K and one V
scale per sequence (or per kv head) and layer, fixed from the layer's whole prefill as the hf engine's quantized
cache fixes them (methods/quantized_cache.py): DMS decides on the prefill's bf16 keys, what it keeps is stored
quantized, each decoded token is quantized by the store kernel and dequantized by the attention kernel as it reads.

A batch (engine.batch): each sequence prefills into its own batch-1 cache (`admit_to_batch`), then `merge` moves them
into one batch cache, layer by layer: sequence b's heads become rows b * Hkv + h, its rows follow the previous
sequences' (no pads: each head keeps its own capacity), and one step decodes all rows, each sequence at its own
position (RoPE, ring index, tie-break). The batch's KV bytes are the sum of its sequences'.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from kvcompress.engine.fast import kernels
from kvcompress.engine.fast.decode_state import DecodeState, qk_norms
from kvcompress.memory import KVState, ReportsOwnKV, empty_in_pool, in_pool
from kvcompress.methods import dms as rule
from kvcompress.methods import quant


class CompactDMSBackend:
    """Native DMS on the fast engine: the compact cache a prefill writes into, the captured decode step over it, and
    its release. A FastDecoder owns one; it reads the decoder's weights and stream (through _DMSDecodeState) and
    keeps its own state: the step captured for the newest cache, whose buffers the next prefill of the same shape
    reuses (timed repeats replay one graph)."""

    def __init__(self, decoder):
        self.decoder = decoder
        self._state: _DMSDecodeState | None = None

    @property
    def state(self) -> _DMSDecodeState | None:
        """The captured decode step and the cache it decodes (None once released): what tests and tools inspect."""
        return self._state

    def new_cache(self, params, lm, n_new: int, allocate=None, spec=None) -> CompactDMSCache:
        """A cache for one prefill under `params`; `allocate`: one sequence of a batch, its K/V in the decoder's
        staging slabs (CompactDMSCache.admit_to_batch), else the buffers of the previous cache are reused when the
        shapes match. `spec`: an fp8 QuantSpec (methods/quant_spec.py), its entries stored as e4m3 codes."""
        previous = self._state.cache if self._state is not None else None
        cache = CompactDMSCache(lm.model.config.num_hidden_layers, params, n_new, previous, spec)
        if allocate is not None:
            cache.admit_to_batch(allocate)
        return cache

    def decode(self, lm, cache: CompactDMSCache, token, next_position, uniforms, settings, out_tokens, eos):
        signature = (cache.signature(), out_tokens.shape[0], settings.sampling)
        if self._state is None or self._state.signature != signature:
            self.release()
            self._state = _DMSDecodeState(self.decoder, cache, signature, settings.sampling)
        state = self._state
        state.cache = cache  # the same tensors as the captured step's (same signature), held by the newest cache
        state.load_inputs(token, [next_position], uniforms.view(-1, 1), out_tokens.view(-1, 1))
        cache.decoding = True
        n = state.run(eos, out_tokens.shape[0])
        out_tokens.copy_(state.out.view(-1))
        return n, cache

    def decode_batch(self, lm, admitted, uniforms, settings, out_tokens, mark=None, moved=lambda layer: None):
        """engine.batch's admitted sequences (each prefilled into its own CompactDMSCache), merged into one batch
        cache and decoded together by one captured step: out_tokens (steps, batch), row 0 already sampled.
        `moved(layer)`: layer `layer` of every sequence is in the batch cache (the decoder drops its staging)."""
        self.release()  # a batch starts from the weights alone: no buffers of an earlier generation beside it
        caches = [a.cache for a in admitted]
        cache = CompactDMSCache.merge(caches, moved)
        for a in admitted:  # emptied by the merge
            a.cache = None
        del caches
        signature = (cache.signature(), out_tokens.shape[0], settings.sampling)
        self._state = state = _DMSDecodeState(self.decoder, cache, signature, settings.sampling)
        state.load_inputs(out_tokens[0], [a.next_position for a in admitted], uniforms, out_tokens)
        if mark is not None:
            mark("admitted")
        cache.decoding = True
        n = state.run(set(), out_tokens.shape[0], mark)
        out_tokens.copy_(state.out)
        return n, cache

    def release(self) -> None:
        if self._state is not None:
            self._state.free()
        self._state = None


@functools.lru_cache
def ring_size(window: int) -> int:
    """The first age at which a marked token is invisible under the rule: the ring holds the tokens younger than it."""
    ages = torch.arange(1, window + 3)
    seen = rule.visible(ages, torch.tensor(0), torch.tensor(True), window)
    gone = (~seen).nonzero()
    if not len(gone) or not seen[: int(gone[0])].all() or int(ages[gone[0]]) < 2:
        raise AssertionError(f"methods.dms.visible does not describe a window eviction (window {window})")
    return int(ages[gone[0]])


class CompactDMSCache(ReportsOwnKV, rule.DMSCache):
    """The fast engine's DMS cache (see the module docstring for the layout and what its slack is)."""

    layout = "compact per head, slots reclaimed"

    def __init__(self, layers: int, params, n_new: int, previous: CompactDMSCache | None = None, spec=None):
        self.params, self.window = params, params.window
        self.spec = spec  # fp8: codes in the K/V buffers, scales below; None: the model's dtype
        self.dtype = None  # the model's dtype (what a decode step computes in), known at the first prefill layer
        self.ring = ring_size(params.window)
        self.reserve = max(0, n_new - 1)  # the decode writes the n_new - 1 tokens after the first
        self.n_layers = layers
        self.keys: list[torch.Tensor | None] = [None] * layers  # (rows, D) per layer
        self.values: list[torch.Tensor | None] = [None] * layers
        self.offsets: list[torch.Tensor | None] = [None] * layers  # (B * Hkv,) int64: each head's first row
        self.lengths: list[torch.Tensor | None] = [None] * layers  # (B * Hkv,) int32: rows written per head
        self.ring_slot: list[torch.Tensor | None] = [None] * layers  # (B * Hkv, R) int32: slot of position % R
        self.ring_marked: list[torch.Tensor | None] = [None] * layers  # (B * Hkv, R) int8: its mark
        self.k_scales: list[torch.Tensor | None] = [None] * layers  # fp8: (B, 1 | Hkv) float32 per layer
        self.v_scales: list[torch.Tensor | None] = [None] * layers
        self.capacities: list[list[int] | None] = [None] * layers  # host copies: allocation sizes
        self.prefill_counts: list[list[int] | None] = [None] * layers  # live per head after prefill (host)
        self.seen = [0] * layers
        self.decoding = False
        self.heads = None  # (batch, kv heads), known at the first prefill layer
        self.previous = previous if previous is not None and previous.compatible(self) else None
        self.pool = self.previous.pool if self.previous is not None else None
        self.pooled = True  # buffers from a MemPool of their own (CUDA); False: a batch member (admit_to_batch)
        self.allocate = None  # a batch member's K/V buffers: allocate(layer, elements, dtype, device) -> flat tensor

    def admit_to_batch(self, allocate=None) -> None:
        """This cache is one sequence of a batch (engine.batch), merged into the batch's cache after its prefill: it
        reuses nothing of an earlier generation, and its K/V buffers come from `allocate` (the fast decoder's
        per-layer staging slabs, FastDecoder.staging_buffers: once `merge` has moved a layer of every sequence, that
        layer's slabs are whole allocations the device gets back; carved from the allocator's general pool, one
        sequence's few-MiB layers would share its 20 MiB segments and moving one layer would free none)."""
        self.previous, self.pool, self.pooled, self.allocate = None, None, False, allocate

    def compatible(self, other: CompactDMSCache) -> bool:
        return (self.n_layers, self.ring, self.reserve, self.spec) == (other.n_layers, other.ring, other.reserve,
                                                                       other.spec)

    # --- what transformers' Qwen3Model asks of a cache in prefill -------------------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen[layer_idx]

    def get_mask_sizes(self, cache_position: torch.Tensor, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen[layer_idx] + cache_position.shape[0], 0

    # --- prefill --------------------------------------------------------------------------------------------------

    def dms_prefill_layer(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, marked: torch.Tensor):
        """Keep what the last prefill query sees, compacted per head; the caller then drops `keys`/`values`."""
        batch, heads, length, dim = keys.shape
        device = keys.device
        if self.pool is None and self.pooled and device.type == "cuda":
            self.pool = torch.cuda.MemPool()  # as fast.py's buffers: no inherited unsplittable block remainders
        self.heads = (batch, heads)
        rows = batch * heads
        live = rule.visible(length - 1, torch.arange(length, device=device), marked, self.window).view(rows, length)
        counts = live.sum(-1)
        counts_host = counts.tolist()  # host synchronisation 1 of 2 per layer: the allocation's size
        capacities = [n + self.reserve for n in counts_host]
        self.dtype = keys.dtype
        storage = quant.FP8 if self.spec is not None else keys.dtype
        self._allocate(layer_idx, capacities, rows, dim, storage, device)
        offsets, lengths = self.offsets[layer_idx], self.lengths[layer_idx]
        capacity = torch.tensor(capacities, device=device)
        offsets.copy_(torch.cumsum(capacity, 0) - capacity)
        lengths.copy_(counts)
        rank = live.cumsum(-1) - 1  # each live entry's slot within its head, in position order
        b, h, t = live.view(batch, heads, length).nonzero(as_tuple=True)  # synchronisation 2 of 2
        head = b * heads + h
        target = offsets[head] + rank[head, t]
        kept_k, kept_v = keys[b, h, t], values[b, h, t]
        k_buffer, v_buffer = self.keys[layer_idx], self.values[layer_idx]
        if self.spec is not None:  # scales from the whole prefill of the layer (as the hf engine's cache), then codes
            for scales, x in ((self.k_scales[layer_idx], keys), (self.v_scales[layer_idx], values)):
                scales.copy_(quant.fp8_scale(x, self.spec.scale).view(scales.shape))
            k_rows, v_rows = (kernels.scale_per_row(t, batch, heads)[head][:, None]
                              for t in (self.k_scales[layer_idx], self.v_scales[layer_idx]))
            # written as bytes: CPU torch has no index_copy_ for float8
            kept_k = quant.fp8_quantize(kept_k, k_rows).view(torch.uint8)
            kept_v = quant.fp8_quantize(kept_v, v_rows).view(torch.uint8)
            k_buffer, v_buffer = k_buffer.view(torch.uint8), v_buffer.view(torch.uint8)
        k_buffer.index_copy_(0, target, kept_k)
        v_buffer.index_copy_(0, target, kept_v)
        # The ring: the last R positions, each at position % R with its slot and mark (a pending or unseen one: 0).
        ring_slot, ring_marked = self.ring_slot[layer_idx], self.ring_marked[layer_idx]
        ring_slot.zero_()
        ring_marked.zero_()
        recent = torch.arange(max(0, length - self.ring), length, device=device)
        ring_slot[:, recent % self.ring] = rank[:, recent].to(ring_slot.dtype)
        ring_marked[:, recent % self.ring] = (marked.reshape(rows, length) & live)[:, recent].to(ring_marked.dtype)
        self.capacities[layer_idx] = capacities
        self.prefill_counts[layer_idx] = counts_host
        self.seen[layer_idx] = length

    def _allocate(self, layer: int, capacities: list[int], rows: int, dim: int, dtype, device) -> None:
        old = self.previous
        for name, shape, kind in self._metadata(rows):
            reuse = getattr(old, name)[layer] if old is not None else None
            if reuse is None or reuse.shape != shape or reuse.device != device:
                with self._in_pool():
                    reuse = torch.empty(shape, dtype=kind, device=device)
            getattr(self, name)[layer] = reuse
        same = old is not None and old.capacities[layer] == capacities and old.keys[layer] is not None and \
            old.keys[layer].dtype == dtype and old.keys[layer].shape[1] == dim
        if same:
            self.keys[layer], self.values[layer] = old.keys[layer], old.values[layer]
        else:
            if old is not None:  # free the old layer before allocating its replacement
                old.keys[layer] = old.values[layer] = None
            self.keys[layer], self.values[layer] = self._buffers(layer, sum(capacities), dim, dtype, device)
        if old is not None:  # the old cache's buffers now belong to this one
            for name in ("keys", "values", *self._metadata_names()):
                getattr(old, name)[layer] = None
            if layer == self.n_layers - 1:
                self.previous = None

    def _metadata(self, rows: int) -> list[tuple]:
        """(name, shape, dtype) of the per-layer tensors besides K and V; fp8 adds its scales."""
        out = [("offsets", (rows,), torch.int64), ("lengths", (rows,), torch.int32),
               ("ring_slot", (rows, self.ring), torch.int32), ("ring_marked", (rows, self.ring), torch.int8)]
        if self.spec is not None:
            batch, heads = self.heads
            shape = (batch, heads if self.spec.scale == "head" else 1)
            out += [("k_scales", shape, torch.float32), ("v_scales", shape, torch.float32)]
        return out

    def _scale_names(self) -> tuple[str, ...]:
        return ("k_scales", "v_scales") if self.spec is not None else ()

    def _metadata_names(self) -> tuple[str, ...]:
        """The names of _metadata's per-layer lists (the rule's tensors, then fp8's scales)."""
        return ("offsets", "lengths", "ring_slot", "ring_marked", *self._scale_names())

    def _buffers(self, layer: int, rows: int, dim: int, dtype, device, allocate=None):
        """K and V buffers of (rows, dim) for a layer: from `allocate` (a batch member's staging) or this cache's pool."""
        allocate = allocate or self.allocate
        if allocate is None:
            return self._empty((rows, dim), dtype, device), self._empty((rows, dim), dtype, device)
        both = allocate(layer, 2 * rows * dim, dtype, device)
        return both[:rows * dim].view(rows, dim), both[rows * dim:].view(rows, dim)

    def _in_pool(self):
        return in_pool(self.pool)

    def _empty(self, shape, dtype, device) -> torch.Tensor:
        """A K/V buffer from this cache's pool, retried once near the memory limit (memory.empty_in_pool: the full K/V
        of layers already compacted, a batch's merged sequences, sit in the default pool's cache)."""
        return empty_in_pool(self.pool, shape, dtype, device)

    @classmethod
    def merge(cls, caches: list[CompactDMSCache], moved=lambda layer: None) -> CompactDMSCache:
        """Batch-1 caches as one batch cache: sequence b's heads become rows b * Hkv + h, its rows follow the
        previous sequences' (offsets shifted by their rows; lengths, rings and capacities per row, unchanged). Moved
        layer by layer, K then V, each source freed as soon as it is copied: the KV never exists twice, the transient
        is one layer's K or V of the batch."""
        first = caches[0]
        out = cls(first.n_layers, first.params, first.reserve + 1, spec=first.spec)
        out.dtype = first.dtype
        device = first.keys[0].device
        out.pool = torch.cuda.MemPool() if device.type == "cuda" else None
        out.heads = (sum(c.heads[0] for c in caches), first.heads[1])
        for i in range(first.n_layers):
            rows = [int(c.keys[i].shape[0]) for c in caches]
            starts = [sum(rows[:b]) for b in range(len(caches))]
            dim, dtype = first.keys[i].shape[1], first.keys[i].dtype
            for name in ("keys", "values"):
                merged = out._empty((sum(rows), dim), dtype, device)
                for c, start, n in zip(caches, starts, rows):
                    merged[start:start + n].copy_(getattr(c, name)[i])
                    getattr(c, name)[i] = None
                getattr(out, name)[i] = merged
            with out._in_pool():
                out.offsets[i] = torch.cat([c.offsets[i] + start for c, start in zip(caches, starts)])
                for name in first._metadata_names()[1:]:  # after the offsets, rebased above
                    getattr(out, name)[i] = torch.cat([getattr(c, name)[i] for c in caches])
            for c in caches:
                for name in first._metadata_names():
                    getattr(c, name)[i] = None
            moved(i)  # layer i of every sequence is in the batch cache: the decoder drops its staging slabs
            out.capacities[i] = [n for c in caches for n in c.capacities[i]]
            out.prefill_counts[i] = [n for c in caches for n in c.prefill_counts[i]]
            out.seen[i] = max(c.seen[i] for c in caches)
        return out

    def copy(self, allocate=None) -> CompactDMSCache:
        """An independent copy of a prefilled cache (cloned admission: the rows of a batch repeating the first), its
        K/V buffers from `allocate` if given (the fast decoder's staging slabs, as admit_to_batch)."""
        out = type(self)(self.n_layers, self.params, self.reserve + 1, spec=self.spec)
        out.pooled, out.heads, out.decoding, out.dtype = self.pooled, self.heads, self.decoding, self.dtype
        for name in self._metadata_names():
            setattr(out, name, [t.clone() for t in getattr(self, name)])
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            out.keys[i], out.values[i] = out._buffers(i, k.shape[0], k.shape[1], k.dtype, k.device, allocate)
            out.keys[i].copy_(k)
            out.values[i].copy_(v)
        out.capacities = [list(c) for c in self.capacities]
        out.prefill_counts = [list(c) for c in self.prefill_counts]
        out.seen = list(self.seen)
        return out

    def signature(self) -> tuple:
        """What a captured decode step depends on: the batch, the very tensors and each layer's longest head."""
        tensors = (self.keys, self.values, *(getattr(self, name) for name in self._metadata_names()))
        return (id(self.params), self.heads, tuple(t.data_ptr() for group in tensors for t in group),
                tuple(max(c) for c in self.capacities))

    # --- accounting -----------------------------------------------------------------------------------------------

    def kv_snapshot(self, positions: int):
        """The state now, read later; after prefill from host copies, during decode cloned on device (no sync)."""
        counts = [list(c) for c in self.prefill_counts] if not self.decoding else [n.clone() for n in self.lengths]
        sizes = [(k.nbytes + v.nbytes, k[0].nbytes + v[0].nbytes) for k, v in zip(self.keys, self.values)]
        scales = sum(t.nbytes for name in self._scale_names() for t in getattr(self, name))
        return lambda: self._state(counts, sizes, positions, scales)

    def kv_state(self, positions: int) -> KVState:
        return self.kv_snapshot(positions)()

    def _state(self, counts, sizes, positions, scales: int = 0) -> KVState:
        """bytes: the buffers as allocated (live + reserve); live_bytes: live entries x bytes of one entry (K and V of
        one token of one head, from the tensors); tokens_per_head: live per [layer][batch x kv head]. `positions`:
        one count, or one per sequence of a batch. fp8: both add the scales' bytes, `parts` splits codes from
        scales, and full_bytes is vanilla's, in the model's dtype (the entries here are one byte an element)."""
        state = rule.rows_state([(nbytes, entry, n) for n, (nbytes, entry) in zip(counts, sizes)], positions)
        if self.spec is None:
            return state
        return replace(state, bytes=state.bytes + scales, live_bytes=state.live_bytes + scales,
                       full_bytes=state.full_bytes * self.dtype.itemsize,
                       parts={"data": state.bytes, "scales": scales, "window": 0})


class _DMSDecodeState(DecodeState):
    """Static inputs, scratch tensors and the captured graph of the DMS decode step over one CompactDMSCache."""

    def __init__(self, decoder, cache: CompactDMSCache, signature, sampling):
        self.cache = cache
        batch, heads_kv = cache.heads
        first = cache.keys[0]
        device, dtype, dim = first.device, cache.dtype, first.shape[1]
        self.max_lengths = [max(c) for c in cache.capacities]
        # One split count for every layer: the combine kernel compiles once per count, not once per layer
        self.splits = [kernels.attention_splits(batch * heads_kv, max(self.max_lengths), device)] * cache.n_layers
        threshold = cache.params.threshold
        # the kernel's copies of methods.dms.evicts' threshold and tie break (zeros for the checkpoint's rule)
        self.calibrated = threshold is not None
        self.thresholds = [(threshold[i].float() if self.calibrated else torch.zeros(heads_kv)).to(device)
                           for i in range(cache.n_layers)]
        self.no_tie = torch.zeros(batch, device=device)
        # signature[1]: output tokens (rows of uniforms / out)
        super().__init__(decoder, signature, sampling, batch, signature[1], dim, dtype, device)

    def free(self) -> None:
        super().free()
        self.cache = None

    def _step_context(self) -> torch.Tensor:
        """The tie break of methods.dms.evicts, once per step: the DMS bookkeeping happens inside the store kernel."""
        return rule.tie_break(self.position.view(-1)) if self.calibrated else self.no_tie

    def _attend(self, i, w, qkv, cos, sin, tie) -> None:
        cache = self.cache
        scales = (cache.k_scales[i], cache.v_scales[i]) if cache.spec is not None else None
        kernels.dms_qk_norm_rope_store(
            qkv, *qk_norms(w), cos, sin, cache.keys[i], cache.values[i], cache.offsets[i], cache.lengths[i],
            cache.ring_slot[i], cache.ring_marked[i], self.position, self.thresholds[i], tie, cache.params, i, self.q,
            scales)
        kernels.decode_attention(self.q, cache.keys[i], cache.values[i], cache.lengths[i], None, w.scale,
                                 self.attn_out, self.splits[i], offsets=cache.offsets[i],
                                 max_length=self.max_lengths[i], scales=scales)
