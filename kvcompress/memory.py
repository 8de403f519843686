"""Memory accounting: phase peaks, and KV-cache bytes read from the cache's own tensors (never from a formula).

Three caches are understood:
- transformers' DynamicCache (vanilla and kvpress presses): `cache.layers[i].keys/values`, shape (B, H, S, D).
  Mask-only presses leave S unchanged and record evicted entries in `self_attn.masked_key_indices`.
- DMS-8x's paged cache: per layer a block pool `key_blocks/value_blocks` (num_blocks, block, 1, D) and the live
  entry count per (batch x kv head) in `cache_seq_lengths`.
- our own caches, which report themselves in the same terms (`ReportsOwnKV`): the fast engine's static buffers
  (engine/fast/decoder.py), the hf engine's stacked batch (engine/hf.py) and native DMS's caches (methods/dms.py
  MaskedDMSCache, the fast engine's compact DMS cache, engine/fast/dms.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import weakref
from dataclasses import dataclass

import torch


@dataclass
class KVState:
    bytes: int  # bytes the cache's tensors occupy now (for DMS: its block pool)
    live_bytes: int  # bytes of the entries attention can still see
    full_bytes: int  # bytes the same entries would take for `positions` tokens with nothing evicted
    tokens_per_layer: list[float]  # live tokens per layer, averaged over heads
    positions: int  # sequence positions the cache has seen (context, or context + question + output)
    # live tokens per layer and kv head, where heads keep different counts (DMS paged cache); None elsewhere
    tokens_per_head: list[list[int]] | None = None
    # a quantized cache's bytes by part: {"data": codes, "scales": scales + zero points, "window": bf16 tokens}
    parts: dict | None = None
    # a batch's: each sequence's live tokens (its tokens_kept), where tokens_per_layer holds their mean
    tokens_per_row: list[float] | None = None

    @property
    def tokens_kept(self) -> float:
        return sum(self.tokens_per_layer) / max(1, len(self.tokens_per_layer))

    @property
    def compression_achieved(self) -> float:
        """Fraction of positions evicted (kvpress's compression_ratio convention: 0 = nothing evicted)."""
        return 1.0 - self.tokens_kept / self.positions if self.positions else 0.0

    @property
    def memory_saved(self) -> bool:
        """True only when the tensors really hold fewer bytes than an uncompressed cache would."""
        return self.bytes < self.full_bytes


class ReportsOwnKV:
    """A cache of ours that reports its own KV state (`kv_state`), and a snapshot of it that a timed region can take
    without synchronising the device (`kv_snapshot`: by default the state read at once)."""

    def kv_state(self, positions) -> KVState:
        raise NotImplementedError

    def kv_snapshot(self, positions):
        state = self.kv_state(positions)
        return lambda: state


def kv_snapshot(cache, model: torch.nn.Module, positions: int):
    """Capture the cache's size now without synchronising the device; call the result later for the KVState.

    Used inside timed regions: DynamicCache sizes are host metadata, and DMS's live lengths are cloned on device.
    """
    layers = getattr(cache, "layers", None)
    if layers and hasattr(layers[0], "key_blocks"):
        frozen = [_FrozenDMSLayer(layer) for layer in layers if layer.key_blocks is not None]
        return lambda: _paged_dms_state(frozen, positions)
    if isinstance(cache, ReportsOwnKV):  # native DMS caches: live counts cloned on device, read later
        return cache.kv_snapshot(positions)
    state = kv_state(cache, model, positions)
    return lambda: state


class _FrozenDMSLayer:
    """What a DMS layer holds at one moment: its pool can grow and its lengths change as decoding goes on."""

    def __init__(self, layer):
        self.key_blocks, self.value_blocks = layer.key_blocks, layer.value_blocks
        self.pool_bytes = layer.key_blocks.nbytes + layer.value_blocks.nbytes
        self.cache_seq_lengths = layer.cache_seq_lengths.clone()  # on device: no synchronisation in a timed region


def kv_state(cache, model: torch.nn.Module, positions: int) -> KVState:
    layers = getattr(cache, "layers", None)
    if layers and hasattr(layers[0], "key_blocks"):
        return _paged_dms_state(layers, positions)
    if isinstance(cache, ReportsOwnKV):  # the fast engine's buffers, the hf engine's batch, native DMS's caches
        return cache.kv_state(positions)
    return _dynamic_cache_state(cache, model, positions)


def _dynamic_cache_state(cache, model, positions: int) -> KVState:
    masked = masked_counts(model)
    total = live = full = 0
    tokens = []
    for i, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        batch, heads, length, _ = keys.shape
        layer_bytes = keys.nbytes + values.nbytes
        total += layer_bytes
        per_token = layer_bytes / max(1, length)
        full += round(per_token * positions)
        evicted = masked.get(i, 0) / (batch * heads)  # mean masked entries per head
        tokens.append(length - evicted)
        live += round(per_token * (length - evicted))
    return KVState(total, live, full, tokens, positions)


def masked_counts(model: torch.nn.Module) -> dict[int, int]:
    """Entries hidden by mask-only presses, per layer, from the indices kvpress stores on each attention module."""
    return {layer: int(indices[0].numel()) for layer, indices in masked_indices(model).items()}


def masked_indices(model: torch.nn.Module) -> dict[int, tuple]:
    """{layer: (batch, head, position) index tensors} of the entries mask-only presses hide."""
    return {m.layer_idx: tuple(m.masked_key_indices) for m in _layer_modules(model)
            if getattr(m, "masked_key_indices", None) is not None}


def take_masked_indices(model: torch.nn.Module) -> dict[int, tuple]:
    """masked_indices(), with the modules' references dropped: the caller becomes the only owner (the fast engine
    turns them into its own validity mask and frees them layer by layer)."""
    indices = masked_indices(model)
    clear_masks(model)
    return indices


def clear_masks(model: torch.nn.Module) -> None:
    """kvpress leaves `masked_key_indices` on modules after a press exits; clear them so runs stay independent."""
    for module in _layer_modules(model):
        if getattr(module, "masked_key_indices", None) is not None:
            module.masked_key_indices = None


_LAYER_MODULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules with a layer index (the attention modules kvpress hooks and leaves its masks on), listed once per
    model: a quality chunk reads and clears masks for each of its ~300 caches, and walking all ~1,000 modules of a
    36-layer model each time took seconds a chunk."""
    found = _LAYER_MODULES.get(model)
    if found is None:
        found = _LAYER_MODULES[model] = [m for m in model.modules() if hasattr(m, "layer_idx")]
    return found


def per_head_state(layers, positions: int) -> KVState:
    """A cache whose heads keep different counts (DMS: paged, masked or compact), from (bytes allocated, bytes of
    one entry = K and V of one token of one head, live entries per batch x kv head) per layer: `live_bytes` = live
    entries x entry, `full_bytes` what a vanilla cache holds for `positions` tokens in the same dtype."""
    total = live = full = 0
    tokens, per_head = [], []
    for allocated, entry, counts in layers:
        lengths = [int(n) for n in (counts.tolist() if isinstance(counts, torch.Tensor) else counts)]
        total += allocated
        live += sum(lengths) * entry
        full += positions * len(lengths) * entry
        tokens.append(sum(lengths) / len(lengths))
        per_head.append(lengths)
    return KVState(total, live, full, tokens, positions, per_head)


def padded_rows_state(layers, positions) -> KVState:
    """A batch held as padded rows (the fast engine's buffers, the hf engine's stacked cache), from (bytes allocated,
    rows = sequences, slots per row, live entries per kv head summed over the rows) per layer: one sequence's token
    (all heads) is bytes / (rows x slots), live_bytes and full_bytes that times the live entries and the positions.
    `positions`: one count (every row), or one per sequence (tokens are then per sequence, bytes the whole batch's)."""
    total = live_bytes = full = 0
    tokens = []
    for allocated, batch, slots, live in layers:
        seen = positions if isinstance(positions, list) else [positions] * batch
        per_token = allocated / (slots * batch)
        total += allocated
        tokens.append(live / batch)
        live_bytes += round(per_token * live)
        full += round(per_token * sum(seen))
    mean_positions = sum(positions) / len(positions) if isinstance(positions, list) else positions
    return KVState(total, live_bytes, full, tokens, mean_positions)


def _paged_dms_state(layers, positions: int) -> KVState:
    """DMS's paged cache: `bytes` is the block pool as allocated (it grows x1.5 and never shrinks), `live_bytes` the
    entries attention reads (cache_seq_lengths per batch x kv head)."""
    # one token of one head, K and V: a pool row is (block_size, 1, head_dim)
    return per_head_state([(getattr(layer, "pool_bytes", None) or layer.key_blocks.nbytes + layer.value_blocks.nbytes,
                            layer.key_blocks[0, 0].nbytes + layer.value_blocks[0, 0].nbytes, layer.cache_seq_lengths)
                           for layer in layers if layer.key_blocks is not None], positions)


class PhasePeaks:
    """Peak memory of one phase: the CUDA allocator's peak on GPU, the process's peak RSS on CPU.

    Both reset when a phase starts, so prefill and decode are measured separately. Reading them needs no device
    synchronisation (the caching allocator counts on the host), so they can sit inside a timed region.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.source = "cuda_max_memory_allocated" if device.type == "cuda" else "process_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_peak_rss()

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return _peak_rss()


def _reset_peak_rss() -> None:
    _return_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _return_free_heap() -> None:
    """glibc keeps freed heap pages resident (after a large free it raises its mmap threshold, so later large tensors
    come from the heap too): a phase that reuses them raises no RSS, and its peak would miss what it allocates. Hand
    them back to the system first (malloc_trim), so a phase's peak RSS counts its own allocations."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def in_pool(pool):
    """Allocations inside go to `pool` (a torch.cuda.MemPool), or to the default pool when it is None (CPU)."""
    return torch.cuda.use_mem_pool(pool) if pool is not None else contextlib.nullcontext()


def empty_in_pool(pool, shape, dtype, device) -> torch.Tensor:
    """A buffer carved from `pool`. A MemPool cannot reuse the default pool's cached blocks (the prefilled caches a
    load or a merge has just freed), so near the memory limit hand those back to the device once and retry, as the
    allocator does by itself within one pool (else a batch that fits would fail at ~2x its KV bytes)."""
    try:
        with in_pool(pool):
            return torch.empty(shape, device=device, dtype=dtype)
    except torch.OutOfMemoryError:
        if pool is None:
            raise
    torch.cuda.empty_cache()
    with in_pool(pool):
        return torch.empty(shape, device=device, dtype=dtype)
