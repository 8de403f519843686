"""The hf engine's quantized KV cache: reference semantics of `fp8`, `int4`, `int2` (methods/quant_spec.py), simulated
in that attention runs on the dequantized entries (bf16) inside transformers' forward, while what the cache holds
between forwards is only the quantized codes, their scales and zero points, and the bf16 window.

Each layer holds the tokens it has quantized (`quantized`, codes + scales) and, in `keys` / `values` (transformers'
and kvpress's names), the bf16 tokens not quantized yet. A prefill's (or a question's) tokens stay bf16 for its own
attention and until the layer settles: when the next layer's update begins (this layer's forward and its press are
done), at its own next update, or when the cache's bytes are read, whichever comes first. A decode step's single token is stored first and then read as stored, as a
serving engine's decode does (quantized for fp8; in the bf16 window for int4/int2 until its group is quantized). So the prefill's own attention runs in bf16 and a prefill press (kvpress's forward hook, after the
attention) compresses bf16 keys and values: evict, then store what is kept quantized. Settling quantizes the oldest
tokens until spec.quantized_tokens(length) are quantized; fp8's per-layer scale is fixed at the first settle, from
what the prefill left.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers.cache_utils import Cache, DynamicLayer

from kvcompress.errors import UserError
from kvcompress.memory import KVState, ReportsOwnKV, masked_counts
from kvcompress.methods import quant
from kvcompress.methods.dms import MaskedDMSCache
from kvcompress.methods.quant_spec import QuantSpec


class QuantizedLayer(DynamicLayer):
    def __init__(self, spec: QuantSpec, quantize_kv=quant.int_quantize_kv):
        super().__init__()
        self.spec = spec
        self.quantize_kv = quantize_kv  # int4/int2: (k, v, bits, group) -> two IntGroups (an engine may bring its own)
        self.quantized = 0  # tokens held quantized
        self.qk = self.qv = None  # int: IntGroups; fp8: e4m3 codes (B, H, Q, D)
        self.k_scale = self.v_scale = None  # fp8's float32 scales, fixed at the first settle

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        self.settle()
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        if key_states.shape[-2] == 1:
            # a decode step stores its token, then attends over the cache (vLLM: reshape_and_cache, then paged
            # attention): the token is read as stored, quantized unless it lands in the bf16 window
            self.settle()
        if not self.quantized:
            return self.keys, self.values
        keys, values = self.dequantized(self.keys.dtype)
        return torch.cat([keys, self.keys], dim=-2), torch.cat([values, self.values], dim=-2)

    def settle(self) -> None:
        """Quantize the oldest bf16 tokens until spec.quantized_tokens(length) are quantized."""
        if not self.is_initialized or self.keys.numel() == 0:
            return
        take = self.spec.quantized_tokens(self.get_seq_length()) - self.quantized
        if take <= 0:
            return
        k, v = self.keys[:, :, :take], self.values[:, :, :take]
        if self.spec.format == "fp8":
            if self.k_scale is None:
                self.k_scale = quant.fp8_scale(self.keys, self.spec.scale)
                self.v_scale = quant.fp8_scale(self.values, self.spec.scale)
            new_k, new_v = quant.fp8_quantize(k, self.k_scale), quant.fp8_quantize(v, self.v_scale)
            self.qk = new_k if self.qk is None else torch.cat([self.qk, new_k], dim=2)
            self.qv = new_v if self.qv is None else torch.cat([self.qv, new_v], dim=2)
        else:
            new_k, new_v = self.quantize_kv(k, v, self.spec.bits, self.spec.group)
            self.qk = new_k if self.qk is None else self.qk.cat(new_k)
            self.qv = new_v if self.qv is None else self.qv.cat(new_v)
        self.quantized += take
        self.keys, self.values = self.keys[:, :, take:].clone(), self.values[:, :, take:].clone()

    def dequantized(self, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.format == "fp8":
            return quant.fp8_dequantize(self.qk, self.k_scale, dtype), quant.fp8_dequantize(self.qv, self.v_scale, dtype)
        return quant.int_dequantize(self.qk, dtype), quant.int_dequantize(self.qv, dtype)

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.quantized + self.keys.shape[-2]

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a quantized cache is not cropped (methods share no prefill)")

    def parts(self) -> dict:
        """Bytes of this layer's tensors by part: codes, scales (+ zero points), the bf16 window."""
        data = scales = 0
        if self.quantized:
            if self.spec.format == "fp8":
                data = self.qk.nbytes + self.qv.nbytes
                scales = self.k_scale.nbytes + self.v_scale.nbytes
            else:
                for g in (self.qk, self.qv):
                    codes, s = g.nbytes
                    data, scales = data + codes, scales + s
        elif self.k_scale is not None:
            scales = self.k_scale.nbytes + self.v_scale.nbytes
        return {"data": data, "scales": scales, "window": self.keys.nbytes + self.values.nbytes}

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the layer holds: the bf16 window (keys, values), then the codes (fp8), or each IntGroups'
        codes, scale and zero (int4 / int2). `hold` takes such a list back."""
        held = [self.keys, self.values]
        for groups in (self.qk, self.qv):
            if isinstance(groups, torch.Tensor):
                held.append(groups)
            elif groups is not None:
                held += [groups.codes, groups.scale, groups.zero]
        return held

    def hold(self, held: list[torch.Tensor]) -> None:
        """Hold `held` (the same tensors as `tensors()` lists, elsewhere: an engine's staging) instead."""
        self.keys, self.values, rest = held[0], held[1], held[2:]
        if isinstance(self.qk, torch.Tensor):
            self.qk, self.qv = rest
        elif self.qk is not None:
            self.qk, self.qv = (replace(groups, codes=c, scale=s, zero=z)
                                for groups, (c, s, z) in ((self.qk, rest[:3]), (self.qv, rest[3:])))

    def copy(self, clone: bool = True) -> QuantizedLayer:
        """A copy of the layer; clone=False: its tensors shared (for a caller that replaces them)."""
        out = QuantizedLayer(self.spec, self.quantize_kv)
        out.__dict__.update({k: (v.clone() if clone and isinstance(v, torch.Tensor) else v)
                             for k, v in self.__dict__.items()})
        if clone and self.qk is not None and not isinstance(self.qk, torch.Tensor):
            out.qk, out.qv = self.qk.rows(slice(None)), self.qv.rows(slice(None))
        return out


class QuantizedKVCache(Cache, ReportsOwnKV):
    """One QuantizedLayer per model layer (transformers' Cache: the model's forward updates it layer by layer)."""

    def __init__(self, spec: QuantSpec, n_layers: int, head_dim: int, quantize_kv=quant.int_quantize_kv):
        super().__init__(layers=[QuantizedLayer(spec, quantize_kv) for _ in range(n_layers)])
        self.spec, self.head_dim = spec, head_dim
        self.model = None  # set by the engine: mask-only presses record their hidden entries on its modules

    @property
    def quantize_kv(self):
        """The layers' quantizer (int4 / int2; an engine may bring its own)."""
        return self.layers[0].quantize_kv

    @classmethod
    def for_model(cls, spec: QuantSpec, model, quantize_kv=quant.int_quantize_kv) -> QuantizedKVCache:
        c = model.config
        cache = cls(spec, c.num_hidden_layers, getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                    quantize_kv)
        cache.model = model  # mask-only presses leave their hidden entries on its attention modules
        return cache

    def update(self, key_states, value_states, layer_idx: int, cache_kwargs=None):
        # the layer below has finished this forward, its press included: quantize it now, so a prefill holds one
        # layer's prompt in bf16 at a time (the last one settles at the next forward or when its bytes are read)
        if layer_idx > 0:
            self.layers[layer_idx - 1].settle()
        return super().update(key_states, value_states, layer_idx, cache_kwargs)

    def settle(self) -> None:
        for layer in self.layers:
            layer.settle()

    def parts(self) -> dict:
        total = {"data": 0, "scales": 0, "window": 0}
        for layer in self.layers:
            for name, n in layer.parts().items():
                total[name] += n
        return total

    def kv_state(self, positions) -> KVState:
        """Bytes summed from the layers' own tensors (settled first: the prefill's tokens are quantized now, as at
        the end of each layer's prefill); full_bytes: the same sequences in bf16 with nothing evicted."""
        self.settle()
        seen = sum(positions) if isinstance(positions, list) else None  # a batch: each sequence's own positions
        masked = masked_counts(self.model) if self.model is not None else {}
        total = live = full = 0
        tokens = []
        for i, layer in enumerate(self.layers):
            if not layer.is_initialized:
                continue
            batch, heads = layer.keys.shape[:2]
            layer_bytes = sum(layer.parts().values())
            length = layer.get_seq_length()
            hidden = masked.get(i, 0) / heads  # entries hidden by a mask-only press, summed over the batch's rows
            total += layer_bytes
            live += round(layer_bytes * (batch * length - hidden) / max(1, batch * length))
            full += 2 * heads * (seen or batch * positions) * self.head_dim * layer.keys.element_size()
            tokens.append(length - hidden / batch)
        mean = seen / len(positions) if seen is not None else positions
        state = KVState(total, live, full, tokens, mean)
        state.parts = self.parts()
        return state

    def copy(self, clone: bool = True) -> QuantizedKVCache:
        out = QuantizedKVCache(self.spec, len(self.layers), self.head_dim, self.quantize_kv)
        out.layers = [layer.copy(clone) for layer in self.layers]
        out.model = self.model
        return out

    @staticmethod
    def stack(caches: list[QuantizedKVCache]) -> QuantizedKVCache:
        """The sequences' caches as one batch (the hf engine's decode_batch): row b is caches[b]. Each layer's split
        into quantized tokens and window is a function of its length, so equal lengths stack with no padding;
        sequences of different lengths are refused (transformers' one attention mask cannot hide pads inside the
        quantized part)."""
        first = caches[0]
        out = QuantizedKVCache(first.spec, len(first.layers), first.head_dim, first.quantize_kv)
        out.model = first.model
        for cache in caches:
            cache.settle()
        for i, layer in enumerate(out.layers):
            sources = [c.layers[i] for c in caches]
            if len({s.get_seq_length() for s in sources}) > 1:
                raise UserError("hf engine: a batch of quantized caches needs sequences of one length per layer "
                                "(the prompts, or what the press kept, differ); use one prompt length")
            src = sources[0]
            layer.lazy_initialization(src.keys)
            layer.quantized = src.quantized
            layer.keys = torch.cat([s.keys for s in sources])
            layer.values = torch.cat([s.values for s in sources])
            if src.k_scale is not None:
                layer.k_scale = torch.cat([s.k_scale for s in sources])
                layer.v_scale = torch.cat([s.v_scale for s in sources])
            if src.quantized and src.spec.format == "fp8":
                layer.qk, layer.qv = torch.cat([s.qk for s in sources]), torch.cat([s.qv for s in sources])
            elif src.quantized:
                layer.qk, layer.qv = (quant.IntGroups(*(torch.cat([getattr(getattr(s, name), f) for s in sources])
                                                        for f in ("codes", "scale", "zero")),
                                                      src.spec.bits, src.spec.group, along)
                                      for name, along in (("qk", "tokens"), ("qv", "channels")))
            for s in sources:  # each source is freed as soon as it is stacked
                s.keys = s.values = s.qk = s.qv = None
        return out


class QuantizedMaskedDMSCache(MaskedDMSCache):
    """Native DMS's hf cache (methods/dms.py: every entry kept, the rule applied by masking) with its entries stored
    as QuantizedLayers: `dms-8x+fp8` on the hf engine. DMS decides on bf16 keys (its prefill attends in bf16); what
    attention reads afterwards is dequantized. Held bytes are every position's (mask, no reclaim), by part."""

    def __init__(self, window: int, spec: QuantSpec):
        super().__init__(window)
        self.spec = spec
        self.layer_class_to_replicate = lambda: QuantizedLayer(spec)  # Cache.update appends one per new layer index

    def update(self, key_states, value_states, layer_idx: int, cache_kwargs=None):
        if layer_idx > 0:  # as QuantizedKVCache: the layer below is done, DMS's marks and all
            self.layers[layer_idx - 1].settle()
        return super().update(key_states, value_states, layer_idx, cache_kwargs)

    def parts(self) -> dict:
        total = {"data": 0, "scales": 0, "window": 0}
        for layer in self.layers:
            layer.settle()
            for name, n in layer.parts().items():
                total[name] += n
        return total

    def kv_snapshot(self, positions):
        parts = self.parts()  # settles every layer: the prefill's tokens are quantized now
        counts = [c.clone() for c in self.live_per_head()]
        sizes = [(sum(layer.parts().values()), (layer.keys.shape[0], layer.keys.shape[1], layer.get_seq_length()))
                 for layer in self.layers]

        seen = sum(positions) if isinstance(positions, list) else positions * self.layers[0].keys.shape[0]
        # what vanilla holds for the same positions, in the model's dtype (not in quantized entries)
        full = sum(2 * layer.keys.shape[1] * seen * layer.keys.shape[-1] * layer.keys.element_size()
                   for layer in self.layers)

        def state():
            out = self._state(counts, sizes, positions)
            out.parts, out.full_bytes = parts, full
            return out
        return state

    def copy(self):
        raise NotImplementedError("a quantized DMS cache is not copied (dms-8x+<format> decodes batch 1)")
