"""The hf engine: transformers' own forward over the method's cache, one token at a time (the reference decode).

This is what a kvpress user runs today; every eager kernel launch and Python step is part of the cost. A batch is
the sequences' caches stacked into one (`BatchedCache`, right-padded, an attention mask hiding the pads; native
DMS's masked cache stacks itself, methods/dms.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from kvcompress.engine.decoder import Decoder, answer_starts, ended_rows
from kvcompress.engine.sampling import sample
from kvcompress.errors import UserError
from kvcompress.memory import KVState, ReportsOwnKV, padded_rows_state
from kvcompress.methods.dms import MaskedDMSCache
from kvcompress.methods.quantized_cache import QuantizedKVCache, QuantizedMaskedDMSCache


class HFDecoder(Decoder):
    """The reference decode: transformers' own forward over the method's cache, one token at a time."""

    name = "hf"
    dms_layout = "mask, no reclaim"  # methods/dms.py's MaskedDMSCache: evicted entries hidden, their memory kept
    runs_model_forward = True
    sizes_buffers_up_front = False  # the cache grows as it decodes: its peak needs the whole generation
    # methods/quantized_cache.py: codes + scales + bf16 window held, dequantized to bf16 for each forward's attention
    quantized_kv = "simulated"
    quantized_formats = quantized_dms_formats = quantized_masked_formats = ("fp8", "int4", "int2")

    def __init__(self, trace=None):
        # Optional `trace(step, cache)` after every decode step (tests watch a decoding press hold the cache size).
        # It must only read host metadata (shapes), so the timed path stays free of device synchronisation.
        self.trace = trace

    def new_dms_cache(self, params, lm, n_new: int, batch_room: int | None = None):
        return MaskedDMSCache(params.window)

    def new_quantized_cache(self, spec, lm, n_new: int):
        return QuantizedKVCache.for_model(spec, lm.model)

    def new_quantized_dms_cache(self, params, spec, lm, n_new: int, batch_room: int | None = None):
        if batch_room is not None:
            raise UserError("batched decode of dms-8x over a quantized cache is not supported on the hf engine "
                            "(the fast engine batches dms-8x+fp8)")
        return QuantizedMaskedDMSCache(params.window, spec)

    def admit(self, cache, copy: bool = False, expected: int = 1):
        """The prefilled cache stays where it is until decode_batch stacks it; a cloned row gets a copy."""
        if not copy:
            return cache
        if isinstance(cache, (MaskedDMSCache, QuantizedKVCache)):
            return cache.copy()  # native DMS's caches (marks, ring, per-head rows) copy themselves
        out = DynamicCache()
        for i, layer in enumerate(cache.layers):
            out.update(layer.keys, layer.values, i)  # DynamicCache.update concatenates onto an empty layer: a copy
        return out

    def decode(self, lm, cache, token, next_position, uniforms, settings, out_tokens, eos):
        model = lm.model
        position = torch.full((1, 1), next_position, dtype=torch.long, device=lm.device)
        n = out_tokens.shape[0]
        for step in range(1, n):
            logits = model(input_ids=token.view(1, 1), past_key_values=cache, position_ids=position,
                           use_cache=True).logits[:, -1]
            if self.trace is not None:
                self.trace(step, cache)
            token = sample(logits, uniforms[step], settings.sampling)
            out_tokens[step] = token
            position += 1
            if eos and int(token.item()) in eos:  # quality runs only: timing runs never synchronise here
                return step + 1, cache
        return n, cache

    def decode_batch(self, lm, admitted, uniforms, settings, out_tokens, mark=lambda *a: None, eos=frozenset(),
                     forced=None):
        """The sequences' caches stacked into one, decoded by transformers' forward at batch B."""
        model = lm.model
        first = admitted[0].cache
        if isinstance(first, MaskedDMSCache):  # native DMS: its masked cache stacks itself and hides its own pads
            batched = MaskedDMSCache.stack([a.cache for a in admitted])
            cache, mask = batched, None
        elif isinstance(first, QuantizedKVCache):  # equal lengths only: no pads to hide
            batched = QuantizedKVCache.stack([a.cache for a in admitted])
            cache, mask = batched, None
        else:
            batched = BatchedCache(admitted, model)
            cache, mask = batched.cache, batched.attention_mask
        del first
        mark("admitted")
        n, steps = out_tokens.shape[1], out_tokens.shape[0]
        token = out_tokens[0].clone()
        position = torch.tensor([a.next_position for a in admitted], dtype=torch.long, device=lm.device).view(n, 1)
        # a row's own tokens start after its forced ones (engine/quality.py's questions); only they can end it
        answer_from = answer_starts(forced, n)
        done = ended_rows(token.view(-1).tolist(), eos, 0, answer_from) if eos else set()
        for step in range(1, steps):
            if step == 2:  # timed like the fast engine's: the steps after the first
                mark("steady", steps - 2)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            logits = model(input_ids=token.view(n, 1), past_key_values=cache, position_ids=position,
                           attention_mask=mask, use_cache=True).logits[:, -1]
            token = sample(logits, uniforms[step], settings.sampling)
            if forced is not None:
                token = torch.where(forced[step] >= 0, forced[step], token)
            out_tokens[step] = token
            position += 1
            if eos:  # quality runs only: stop once every row has emitted an end-of-sequence token
                done.update(ended_rows(token.view(-1).tolist(), eos, step, answer_from))
                if len(done) == n:
                    return step + 1, batched
        return steps, batched


class BatchedCache(ReportsOwnKV):
    """The sequences' caches stacked along the batch, right-padded per layer; an attention mask hides the pads.

    transformers applies one attention mask to every layer, so a padded batch needs every sequence to keep the same
    length in all layers; presses that keep different lengths per layer are refused then (the fast engine pads
    each layer's buffer on its own)."""

    def __init__(self, admitted: list, model):
        self.cache = DynamicCache()
        n_layers = len(admitted[0].cache.layers)
        lengths = [[a.cache.layers[i].keys.shape[2] for a in admitted] for i in range(n_layers)]
        self.pads = [[max(row) - n for n in row] for row in lengths]
        padded = any(any(row) for row in self.pads)
        if padded and any(lengths[i] != lengths[0] for i in range(n_layers)):
            raise UserError("hf engine: this press keeps different lengths per layer and the batch's sequences differ, "
                            "so one attention mask cannot hide the padding; use --engine fast")
        for i in range(n_layers):
            longest = max(lengths[i])
            stacked = []
            for name in ("keys", "values"):
                sources = [getattr(a.cache.layers[i], name) for a in admitted]
                first = sources[0]
                out = first.new_zeros(len(sources), first.shape[1], longest, first.shape[3])
                for b, src in enumerate(sources):
                    out[b:b + 1, :, :src.shape[2]].copy_(src)
                for a in admitted:  # each source layer is freed as soon as it is stacked
                    setattr(a.cache.layers[i], name, first.new_empty(0))
                del sources, first
                stacked.append(out)
            self.cache.update(stacked[0], stacked[1], i)
        self.attention_mask = None
        if padded:
            mask = torch.ones(len(admitted), max(lengths[0]), dtype=torch.long, device=self.cache.layers[0].keys.device)
            for b, pad in enumerate(self.pads[0]):
                if pad:
                    mask[b, mask.shape[1] - pad:] = 0
            self.attention_mask = mask
        # Mask-only presses: kvpress hides the entries named by each attention module's masked_key_indices; offset
        # each sequence's batch index to its row.
        self.masked = {}
        for i in range(n_layers):
            parts = [(b, a.masked[i]) for b, a in enumerate(admitted) if i in a.masked]
            if parts:
                self.masked[i] = tuple(torch.cat([idx[k] + (b if k == 0 else 0) for b, idx in parts]) for k in range(3))
        for layer, indices in self.masked.items():
            model.model.layers[layer].self_attn.masked_key_indices = indices

    def kv_state(self, positions: list[int]) -> KVState:
        """Bytes of the stacked tensors (pads included: they are allocated); live entries exclude pads and hidden
        entries; full = the same sequences with nothing evicted."""
        layers = []
        for i, layer in enumerate(self.cache.layers):
            batch, heads, length, _ = layer.keys.shape
            hidden = int(self.masked[i][0].numel()) / heads if i in self.masked else 0.0
            layers.append((layer.keys.nbytes + layer.values.nbytes, batch, length,
                           batch * length - sum(self.pads[i]) - hidden))
        return padded_rows_state(layers, positions)
