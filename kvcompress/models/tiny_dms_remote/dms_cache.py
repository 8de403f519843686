"""Paged KV cache of kvcompress's tiny DMS fixture: DMS-8x's DMSCache as seen from outside, written small.

Per layer, `cache.layers[i]` is a DMSPagedCacheLayer holding
  key_blocks, value_blocks  (num_blocks, block_size, 1, head_dim): one pool of pages shared by every (batch x kv head)
                            sequence; it starts at `initial_tokens` per sequence, grows x1.5 when full, never shrinks
  block_table               (batch x kv heads, max pages): the pool block holding each sequence's i-th page (-1: none)
  cache_seq_lengths         (batch x kv heads,): live entries per sequence, i.e. what attention reads
  recent_info               (batch x kv heads, window, 2): [slot, marked for eviction] of the last `window` tokens
  cumulative_length         tokens seen (the logical length)
Eviction is delayed as in DMS: a token marked for eviction stays visible while it is among the last `window` tokens;
when it leaves the window the next token is written into its slot, so the live count stops growing there.
"""

import functools
import math

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class DMSPagedCacheLayer(CacheLayerMixin):
    def __init__(self, window: int, block_size: int, initial_tokens: int, max_positions: int,
                 growth_factor: float = 1.5):
        super().__init__()
        self.window, self.block_size, self.growth_factor = window, block_size, growth_factor
        self.initial_tokens, self.max_positions = initial_tokens, max_positions
        self.key_blocks = self.value_blocks = self.block_table = None
        self.cache_seq_lengths = self.recent_info = None
        self.free_blocks: list[int] = []
        self.cumulative_length = 0

    def lazy_initialization(self, key_states: torch.Tensor) -> None:
        batch, heads, _, head_dim = key_states.shape
        self.page_batch, self.device, self.dtype = batch * heads, key_states.device, key_states.dtype
        blocks = math.ceil(self.initial_tokens / self.block_size) * self.page_batch
        shape = (blocks, self.block_size, 1, head_dim)
        self.key_blocks = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.value_blocks = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.free_blocks = list(range(blocks))
        pages = math.ceil(self.max_positions / self.block_size) + 1
        self.block_table = torch.full((self.page_batch, pages), -1, dtype=torch.int32, device=self.device)
        self.cache_seq_lengths = torch.zeros(self.page_batch, dtype=torch.int32, device=self.device)
        self.recent_info = torch.zeros((self.page_batch, self.window, 2), dtype=torch.int32, device=self.device)
        self.is_initialized = True

    def update(self, key_states, value_states, cache_kwargs=None):
        """key/value_states (batch, kv heads, seq, head_dim); cache_kwargs["eviction_info"] (batch, kv heads, seq)."""
        marked = cache_kwargs["eviction_info"].bool()
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        seq = key_states.shape[2]
        keys, values = (t.reshape(self.page_batch, seq, -1) for t in (key_states, value_states))
        marked = marked.reshape(self.page_batch, seq)
        if seq == 1:
            self._append(keys[:, 0], values[:, 0], marked[:, 0])
        else:
            self._prefill(keys, values, marked)
        return None, None  # attention reads the pool itself

    def _prefill(self, keys, values, marked) -> None:
        if self.cumulative_length:
            raise NotImplementedError("one prefill per cache (as DMS-8x): start a new cache for a new prompt")
        seq = keys.shape[1]
        position = torch.arange(seq, device=self.device)
        recent = position[max(0, seq - self.window):]
        for page in range(self.page_batch):
            live = (~marked[page] | (position >= seq - self.window)).nonzero().squeeze(1)  # survivors, in order
            n = live.numel()
            self._write(page, torch.arange(n, device=self.device), keys[page, live], values[page, live])
            self.cache_seq_lengths[page] = n
            # the tokens still in the window are the last survivors
            self.recent_info[page, recent % self.window, 0] = torch.arange(n - recent.numel(), n, dtype=torch.int32,
                                                                           device=self.device)
            self.recent_info[page, recent % self.window, 1] = marked[page, recent].int()
        self.cumulative_length = seq

    def _append(self, key, value, marked) -> None:
        ring = self.cumulative_length % self.window  # holds the token that leaves the window now
        leaving_marked = self.recent_info[:, ring, 1].bool() & (self.cumulative_length >= self.window)
        slots = torch.where(leaving_marked, self.recent_info[:, ring, 0], self.cache_seq_lengths)
        for page in range(self.page_batch):
            self._write(page, slots[page:page + 1], key[page:page + 1], value[page:page + 1])
        self.cache_seq_lengths += (~leaving_marked).int()
        self.recent_info[:, ring, 0] = slots
        self.recent_info[:, ring, 1] = marked.int()
        self.cumulative_length += 1

    def _write(self, page: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        if slots.numel() == 0:
            return
        for index in range(int(slots.max()) // self.block_size + 1):
            if self.block_table[page, index] < 0:
                self.block_table[page, index] = self._take_block()
        blocks = self.block_table[page, (slots // self.block_size).long()].long()
        offsets = (slots % self.block_size).long()
        self.key_blocks[blocks, offsets, 0] = keys
        self.value_blocks[blocks, offsets, 0] = values

    def _take_block(self) -> int:
        if not self.free_blocks:  # grow the pool by x1.5; it never shrinks (as DMS-8x's)
            old = self.key_blocks.shape[0]
            extra = math.ceil(old * self.growth_factor) - old
            grow = lambda t: torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])  # noqa: E731
            self.key_blocks, self.value_blocks = grow(self.key_blocks), grow(self.value_blocks)
            self.free_blocks = list(range(old, old + extra))
        return self.free_blocks.pop(0)

    def live_entries(self):
        """(keys, values, valid): (page_batch, L, head_dim) gathered from the pool, valid (page_batch, L) bool."""
        lengths = self.cache_seq_lengths.long()
        slots = torch.arange(int(lengths.max()), device=self.device)
        blocks = self.block_table[:, slots // self.block_size].long().clamp(min=0)
        offsets = slots % self.block_size
        return (self.key_blocks[blocks, offsets, 0], self.value_blocks[blocks, offsets, 0],
                slots[None, :] < lengths[:, None])

    def get_mask_sizes(self, cache_position):
        return cache_position.shape[0] + self.cumulative_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_cache_shape(self) -> int:
        return self.max_positions

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("no beam search with a DMS cache (as DMS-8x)")


class DMSCache(Cache):
    def __init__(self, window: int, block_size: int, initial_tokens: int, max_positions: int):
        super().__init__(layer_class_to_replicate=functools.partial(
            DMSPagedCacheLayer, window, block_size, initial_tokens, max_positions))

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        while len(self.layers) <= layer_idx:
            self.layers.append(self.layer_class_to_replicate())
        return self.layers[layer_idx].update(key_states, value_states, cache_kwargs)
