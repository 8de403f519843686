"""The fast engine's decode state for an int4 / int2 cache (KIVI, methods/quant_spec.py): per layer the packed codes,
their scales and zero points and a bf16 window ring (engine/fast/int_kernels.py's IntLayer), each row with its own
length, so rows of a batch may hold different lengths with no validity mask (the quantized part and the window are
functions of a row's length). The step is decode_state.py's; per layer it stores the token in the ring, flushes a
group that the token completed, and attends over codes and ring. A mask-only press over such a cache is refused by
the engine (FastDecoder.quantized_masked_formats): its hidden entries would need a mask of their own."""

from __future__ import annotations

import torch

from kvcompress.engine.fast import int_kernels, kernels
from kvcompress.engine.fast.decode_state import DecodeState, qk_norms
from kvcompress.memory import KVState, ReportsOwnKV, empty_in_pool, padded_rows_state


class IntDecodeState(DecodeState, ReportsOwnKV):
    """Buffers, static inputs and the captured graph for one cache shape (FastDecoder._decode picks it for int4 /
    int2 caches; `_DecodeState` holds bf16 and fp8)."""

    def __init__(self, decoder, cache, signature, sampling):
        lengths, _, n_new, _, batch, self.spec, forced = signature
        first = cache.layers[0].keys  # the bf16 window (B, H, n - Q, D): its shape and dtype are the model's
        _, heads_kv, _, dim = first.shape
        device, dtype = first.device, first.dtype
        self.capacities = [n + n_new - 1 for n in lengths]
        self.buffer_shape = (batch, heads_kv, dim, dtype, device)
        self.layers: list[int_kernels.IntLayer | None] = [None] * len(lengths)
        self.splits = [kernels.engine_splits("int", batch * heads_kv, max(1, self.spec.quantized_tokens(c)), device)
                       for c in self.capacities]
        self.pool = torch.cuda.MemPool() if device.type == "cuda" else None
        self.lengths = torch.zeros(len(lengths), batch, dtype=torch.long, device=device)  # (layer, row) tokens held
        self.slots = torch.zeros_like(self.lengths)  # each row's next ring slot: lengths % ring
        super().__init__(decoder, signature, sampling, batch, n_new, dim, dtype, device, forced)

    def load(self, caches, masks, per_sequence, token, positions, uniforms, out_tokens, forced=None) -> None:
        """Each sequence's settled cache (QuantizedKVCache) into row b, layer by layer, each source layer freed as it
        goes (codes, scales and the window as the hf engine left them: nothing is requantized)."""
        if any(masks):
            raise ValueError("an int4/int2 cache holds no validity mask for a mask-only press's hidden entries")
        batch, heads_kv, dim, dtype, device = self.buffer_shape
        empty = torch.empty(0, device=device, dtype=dtype)
        for i in range(len(self.layers)):
            if self.layers[i] is None:
                self.layers[i] = int_kernels.IntLayer.allocate(
                    self.spec, batch, heads_kv, dim, self.capacities[i], dtype,
                    lambda shape, t: empty_in_pool(self.pool, shape, t, device))
            layer = self.layers[i]
            for b, cache in enumerate(caches):
                layer.load_row(b, cache.layers[i], self.spec)
                source = cache.layers[i]
                source.keys = source.values = empty
                source.qk = source.qv = None
            self.decoder.layer_moved(i)
        self.lengths.copy_(torch.tensor(per_sequence, dtype=torch.long).T)
        torch.remainder(self.lengths, self.layers[0].ring, out=self.slots)
        self.load_inputs(token, positions, uniforms, out_tokens, forced)

    def free(self) -> None:
        super().free()
        self.layers = []
        self.pool = None

    def _step_context(self) -> torch.Tensor:
        return self.lengths + 1  # (layer, row): tokens each row holds once this step's token is stored

    def _attend(self, i, w, qkv, cos, sin, held) -> None:
        layer = self.layers[i]
        kernels.qk_norm_rope_store(qkv, *qk_norms(w), cos, sin, layer.ring_keys, layer.ring_values, None,
                                   self.slots[i], self.q, per_row=True)
        int_kernels.flush(layer, held[i], self.spec)
        int_kernels.decode_attention(self.q, layer, held[i], self.spec, w.scale, self.attn_out, self.splits[i])

    def _advance(self) -> None:
        self.lengths.add_(1)
        torch.remainder(self.lengths, self.layers[0].ring, out=self.slots)

    def kv_state(self, positions) -> KVState:
        """Bytes the buffers hold (codes and scales for the capacity's quantized tokens, the whole ring) by part, and
        the tokens attention reads (each row's length); full_bytes: the same positions in the model's dtype."""
        parts = {"data": 0, "scales": 0, "window": 0}
        layers = []
        for layer, capacity, lengths in zip(self.layers, self.capacities, self.lengths.tolist()):
            held = layer.parts()
            for name, n in held.items():
                parts[name] += n
            layers.append((sum(held.values()), layer.ring_keys.shape[0], capacity, float(sum(lengths))))
        state = padded_rows_state(layers, positions)
        state.parts = parts
        batch, heads, _, dim = self.layers[0].ring_keys.shape
        seen = sum(positions) if isinstance(positions, list) else positions * batch
        state.full_bytes = len(self.layers) * 2 * heads * dim * self.q.element_size() * seen
        return state
