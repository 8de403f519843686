"""The fast decode engine: what a serving engine does, applied to transformers' weights and kvpress's caches.

After the prefill (and the press's compression) the cache moves into preallocated per-layer buffers sized for what
was kept plus the tokens still to come. One decode step is a short sequence of kernels (cuBLAS GEMVs and the fused
ops of kernels.py) reading every weight and every live KV entry once; on CUDA the step is captured once as a CUDA
graph and replayed, so the host's Python never sits on the critical path. On CPU the same step runs eagerly with the
torch reference ops, which is how the tests compare it with the hf engine.

Handled: presses that keep different lengths per layer (each layer has its own buffer), mask-only presses (a
validity mask per KV head keeps masked entries out of attention), an fp8 KV cache alone or after a press (e4m3
buffers and per-sequence scales: the store kernel quantizes each new token, the attention kernel dequantizes as it
reads), an int4 / int2 cache (int_decode_state.py: packed codes and a bf16 window ring per row), native DMS
(engine/fast/dms.py: a compact cache, fp8 too per head, its own store and attention kernels), and batches
(engine.batch): sequence b fills row b of every buffer; rows shorter than the layer's longest are zero-padded and
the pads hidden by the same validity mask, each row keeps its own RoPE position, and one graph is captured per
(batch, shape). A batched step is the same kernels at batch B: GEMMs instead of GEMVs (the weights are read once for
all rows), and split-K attention over a (B x KV heads, splits) grid whose split count falls as B grows
(attention_splits), each row's KV read once.
Refused, with the reason recorded and the hf engine used instead: DMS-8x's remote code (its own paged cache) and
decoding-phase presses (they rewrite the cache inside transformers' forward). Native DMS batches too: the sequences'
compact caches are merged into one (rows b x KV heads + h) and decoded by one graph (engine/fast/dms.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from kvcompress.engine.decoder import Decoder
from kvcompress.engine.fast import dms as fast_dms, forced_prefill, int_kernels, kernels
from kvcompress.engine.fast.decode_state import DecodeState, qk_norms
from kvcompress.engine.fast.int_decode_state import IntDecodeState
from kvcompress.memory import KVState, ReportsOwnKV, empty_in_pool, padded_rows_state, take_masked_indices
from kvcompress.methods import quant
from kvcompress.methods.quantized_cache import QuantizedKVCache, QuantizedLayer


class FastDecoder(Decoder):
    name = "fast"
    dms_layout = fast_dms.CompactDMSCache.layout
    runs_model_forward = False  # its own step: hooks inside transformers' forward do not run while it decodes
    sizes_buffers_up_front = True
    quantized_kv = "stored"  # the buffers hold the codes; the attention kernel dequantizes as it reads
    # fp8: e4m3 buffers (here); int4 / int2: packed codes, scales and a bf16 window ring (int_decode_state.py)
    quantized_formats = ("fp8", "int4", "int2")
    quantized_dms_formats = ("fp8",)  # the compact DMS cache stores e4m3 codes; KIVI's groups in it: not yet
    quantized_masked_formats = ("fp8",)  # int4 / int2 rows keep no validity mask for a mask-only press's entries

    def __init__(self, lm):
        self.model = lm.model
        self.problem = architecture_problem(lm.model)
        self._state: _DecodeState | None = None
        self.dms = fast_dms.CompactDMSBackend(self)  # native DMS: its compact cache and its own captured step
        self._staging: StagingSlabs | None = None  # a batch being admitted (admit)
        # Capture needs a non-default stream. PyTorch keeps a cuBLAS workspace (32 MiB on Hopper) per stream that
        # ever ran a GEMM, so this one is made once (and only used when the caller runs on the default stream).
        self.stream = torch.cuda.Stream(lm.device) if lm.device.type == "cuda" else None
        if self.problem is None:
            self.layers = [_LayerWeights(layer) for layer in lm.model.model.layers]

    @property
    def state(self) -> _DecodeState | None:
        """The buffers and captured graph of the last press or vanilla decode (None once released): reused by the
        next decode of the same shape; what tests inspect."""
        return self._state

    @property
    def staging(self) -> StagingSlabs | None:
        """The per-layer slabs holding a batch's admitted caches until decode_batch moves them (None when none)."""
        return self._staging

    def release(self) -> None:
        """Drop the buffers and the captured graph (before a memory measurement, or between cells)."""
        self._drop_state()
        self._staging = None
        self.dms.release()

    def _drop_state(self) -> None:
        if self._state is not None:
            self._state.free()
        self._state = None

    def admit(self, cache, copy: bool = False, expected: int = 1):
        """engine.batch hands over each admitted sequence's compressed cache (copy: a cloned row's copy of it;
        expected: how many sequences a slab opened now makes room for). Each layer's K and V move into a slab of
        that layer (`StagingSlabs`), so once decode_batch has moved layer i of every sequence into the batch buffer, the
        layer's slabs are whole allocations the allocator can hand back before the next layer's buffer is carved.
        Left where the prefill put them, one sequence's layers (a few MiB each once compressed) share the
        allocator's 20 MiB segments: moving one layer across the batch freed no segment, and near the memory limit
        about five layers' KV stood twice (capped at 80 GiB, knorm@0.875 at 8K fitted 330 of the 378 its bytes
        predict; fp8's codes, before they were staged too, 81-86 of 111; int4's 163 of 169)."""
        if isinstance(cache, fast_dms.CompactDMSCache):  # prefilled into the slabs already (new_dms_cache)
            return cache.copy(self.staging_buffers(cache.n_layers, expected)) if copy else cache
        if isinstance(cache, QuantizedKVCache):  # its codes (int4 / int2: scales, zero points, window too) wait there
            cache.settle()
            self._stage(len(cache.layers))
            staged = cache.copy(clone=False) if copy else cache
            for i, layer in enumerate(staged.layers):
                layer.hold(self._staging.place_all(i, layer.tensors(), expected))
            return staged
        if not isinstance(cache, DynamicCache):
            return cache
        self._stage(len(cache.layers))
        staged = DynamicCache() if copy else cache
        for i, layer in enumerate(cache.layers):
            keys, values = self._staging.place(i, layer.keys, layer.values, expected)
            if copy:  # DynamicCache.update concatenates (a copy): give the layer its shape, then the slab's views
                staged.update(keys[:, :, :0], values[:, :, :0], i)
            staged.layers[i].keys, staged.layers[i].values = keys, values  # a moved layer's own tensors are freed
        return staged

    def staging_buffers(self, layers: int, expected: int):
        """For native DMS's batch members (fast_dms.CompactDMSCache.admit_to_batch): allocate(layer, elements, dtype,
        device) -> a flat buffer in the layer's slab, so its compact K/V land beside the other sequences' of that
        layer, as admit() puts a press's cache."""
        self._stage(layers)
        return lambda layer, need, dtype, device: self._staging.take(layer, need, dtype, device, expected)

    def _stage(self, layers: int) -> None:
        if self._staging is None or len(self._staging.slabs) != layers:
            self._staging = StagingSlabs(layers)

    def layer_moved(self, layer: int) -> None:
        """Layer `layer` of every admitted cache now sits in the batch's buffers: its slabs can go."""
        if self._staging is not None:
            self._staging.slabs[layer] = []

    def new_quantized_cache(self, spec, lm, n_new: int):
        """The prefill writes the hf engine's quantized cache; the decode moves its codes and scales into the
        buffers (fp8: e4m3 buffers the store kernel extends; int4 / int2: codes, scales and the window's ring,
        int_decode_state.py), which the attention kernels dequantize as they read. An int4 / int2 prefill quantizes
        each layer in one kernel (int_kernels.quantize_kv, bit for bit the hf engine's quantizer)."""
        return QuantizedKVCache.for_model(spec, lm.model, int_kernels.quantize_kv)

    def new_dms_cache(self, params, lm, n_new: int, batch_room: int | None = None):
        """Native DMS prefills into the compact cache it decodes from (engine/fast/dms.py); a batch's member puts its
        K/V in this decoder's staging slabs."""
        allocate = self.staging_buffers(lm.model.config.num_hidden_layers, batch_room) if batch_room else None
        return self.dms.new_cache(params, lm, n_new, allocate)

    def new_quantized_dms_cache(self, params, spec, lm, n_new: int, batch_room: int | None = None):
        """`dms-8x+fp8`: the compact cache with e4m3 codes and per-layer scales (engine/fast/dms.py)."""
        allocate = self.staging_buffers(lm.model.config.num_hidden_layers, batch_room) if batch_room else None
        return self.dms.new_cache(params, lm, n_new, allocate, spec)

    def decode(self, lm, cache, token, next_position, uniforms, settings, out_tokens, eos):
        if isinstance(cache, fast_dms.CompactDMSCache):
            return self.dms.decode(lm, cache, token, next_position, uniforms, settings, out_tokens, eos)
        # The validity mask replaces kvpress's index tensors (1 byte per entry instead of 24 per hidden entry);
        # load() frees them layer by layer, so the two never coexist in full.
        masked = take_masked_indices(self.model)
        n = self._decode([cache], [masked], token.view(1), [next_position], uniforms.view(-1, 1), settings,
                         out_tokens.view(-1, 1), eos)
        return n, self._state

    def decode_batch(self, lm, admitted, uniforms, settings, out_tokens, mark=None, eos=frozenset(), forced=None):
        """engine.batch's admitted sequences, decoded together: out_tokens (steps, batch), row 0 already sampled.
        `mark("admitted")` once the caches sit in the buffers; `mark("steady", steps)` before the steps that replay
        the graph (the first step runs eagerly and captures it); `forced` (steps, batch): tokens fed instead of the
        sampled ones where >= 0 (a graph of its own). Native DMS: engine/fast/dms.py's own batch."""
        if isinstance(admitted[0].cache, fast_dms.CompactDMSCache):
            if forced is not None:
                raise ValueError("native DMS decodes its question in its own prefill: nothing to force")
            return self.dms.decode_batch(lm, admitted, uniforms, settings, out_tokens, mark, self.layer_moved)
        n = self._decode([a.cache for a in admitted], [a.masked for a in admitted], out_tokens[0],
                         [a.next_position for a in admitted], uniforms, settings, out_tokens, set(eos), mark, forced)
        return n, self._state

    def _decode(self, caches, masks, token, positions, uniforms, settings, out_tokens, eos, mark=None,
                forced=None) -> int:
        spec = getattr(caches[0], "spec", None)  # a quantized cache (methods/quantized_cache.py): fp8 buffers
        for cache in caches if spec is not None else ():
            cache.settle()  # the question's tokens are quantized now, as the hf engine's next step would
        per_sequence = [[layer.get_seq_length() for layer in cache.layers] for cache in caches]
        lengths = [max(column) for column in zip(*per_sequence)]
        # Sequences shorter than the longest in a layer are right-padded; the pads are hidden by the validity mask.
        ragged = any(seq != lengths for seq in per_sequence)
        steps = out_tokens.shape[0]
        reserve = max(steps, settings.reserve_tokens or 0)
        signature = (tuple(lengths), ragged or any(masks), reserve, settings.sampling, len(caches), spec,
                     forced is not None)
        if self._state is None or self._state.signature != signature:
            self._drop_state()  # free the old buffers before allocating new ones (not the staged caches)
            self.dms.release()
            kind = IntDecodeState if spec is not None and spec.format != "fp8" else _DecodeState
            self._state = kind(self, caches[0], signature, settings.sampling)
        state = self._state
        state.load(caches, masks, per_sequence, token, positions, uniforms, out_tokens, forced)
        if mark is not None:
            mark("admitted")
        n = state.run(eos, steps, mark)
        out_tokens.copy_(state.out[:steps])
        return n


def architecture_problem(model) -> str | None:
    """Why the fast step cannot reproduce this model's forward, or None."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not hasattr(model, "lm_head"):
        return "not a transformers decoder with model.layers and lm_head"
    config = model.config
    attn, mlp = layers[0].self_attn, layers[0].mlp
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) or \
            not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        return f"{type(model).__name__}: attention/MLP are not q/k/v/o + gate/up/down projections"
    if "gemma" in type(model).__name__.lower():
        return "Gemma scales embeddings and norms differently"
    if getattr(config, "hidden_act", "silu") != "silu" or mlp.down_proj.bias is not None:
        return "MLP is not a bias-free SiLU-gated MLP"
    if getattr(config, "use_sliding_window", False) or "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return "sliding-window attention layers"
    rope = getattr(config, "rope_scaling", None) or {}
    if any(kind in str(rope.get("rope_type", rope.get("type", ""))) for kind in ("dynamic", "longrope")):
        return "dynamic RoPE scaling changes with the sequence length"
    return None


class StagingSlabs:
    """A batch's admitted caches while they wait for decode_batch: per layer a list of slabs (flat tensors). A slab
    is opened for the sequences still to come at the size of the sequence that opens it, and each sequence's K and V
    of that layer are views into it; a sequence that does not fit opens the next slab."""

    def __init__(self, layers: int):
        self.slabs: list[list[list]] = [[] for _ in range(layers)]  # per layer: [flat tensor, elements used]

    def take(self, layer: int, need: int, dtype, device, expected: int) -> torch.Tensor:
        """`need` elements of layer `layer`'s current slab (flat, uninitialised), opening a slab for `expected`
        requests of this size when it is full."""
        slabs = self.slabs[layer]
        if not slabs or slabs[-1][1] + need > slabs[-1][0].numel() or slabs[-1][0].dtype != dtype:
            slabs.append([torch.empty(need * max(1, expected), dtype=dtype, device=device), 0])
        slab = slabs[-1]
        start, slab[1] = slab[1], slab[1] + need
        return slab[0][start:start + need]

    def place_all(self, layer: int, tensors: list[torch.Tensor], expected: int) -> list[torch.Tensor]:
        """Copies of `tensors` (any dtypes) in one byte slab of layer `layer`, each at a 16-byte boundary."""
        at, offsets = 0, []
        for t in tensors:
            offsets.append(at)
            at += -(-t.nbytes // 16) * 16
        slab = self.take(layer, at + 16, torch.uint8, tensors[0].device, expected)
        base = -slab.data_ptr() % 16  # the slab view's own start may lie off a 16-byte boundary
        out = []
        for t, offset in zip(tensors, offsets):
            view = slab[base + offset:base + offset + t.nbytes].view(t.dtype).view(t.shape)
            out.append(view.copy_(t))
        return out

    def place(self, layer: int, keys: torch.Tensor, values: torch.Tensor, expected: int):
        both = self.take(layer, keys.numel() + values.numel(), keys.dtype, keys.device, expected)
        k, v = both[:keys.numel()].view(keys.shape), both[keys.numel():].view(values.shape)
        k.copy_(keys)
        v.copy_(values)
        return k, v


class _LayerWeights:
    """One decoder layer's weights, with q/k/v and gate/up fused into single matrices.

    Fusing re-points the modules' parameters at views of the fused tensor, so memory does not grow and the hf engine
    keeps computing with the very same values.
    """

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv_weight, self.qkv_bias = _fuse(attn, "_kvcompress_qkv", [attn.q_proj, attn.k_proj, attn.v_proj])
        self.gate_up_weight, _ = _fuse(mlp, "_kvcompress_gate_up", [mlp.gate_proj, mlp.up_proj])
        self.o_proj, self.down_proj = attn.o_proj, mlp.down_proj
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.scale = attn.scaling


def _fuse(owner, name: str, linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    fused = getattr(owner, name, None)
    if fused is None:  # first fast decoder on this model: fuse once, for good
        fused = torch.cat([lin.weight.detach() for lin in linears])
        row = 0
        for lin in linears:
            rows = lin.weight.shape[0]
            lin.weight.data = fused[row: row + rows]
            row += rows
        setattr(owner, name, fused)
    biases = [lin.bias for lin in linears]
    bias = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
    return fused, bias


class _DecodeState(DecodeState, ReportsOwnKV):
    """Buffers, static inputs and the captured graph for one cache shape (reused across repeats of a cell)."""


    def __init__(self, decoder: FastDecoder, cache, signature, sampling):
        lengths, self.masked, n_new, _, batch, self.spec, forced = signature
        first = cache.layers[0].keys
        _, heads_kv, _, dim = first.shape
        device, dtype = first.device, first.dtype
        # fp8: e4m3 buffers, and each layer's float32 K and V scales per sequence (B, 1) or per kv head (B, Hkv)
        self.kv_dtype = quant.FP8 if self.spec is not None else dtype
        self.scales: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(lengths)
        # Capacity: what was kept (+ question) plus the n_new - 1 tokens this decode will write. The buffers are
        # allocated layer by layer in load(), as each source layer is freed, so the cache never exists twice.
        self.capacities = [n + n_new - 1 for n in lengths]
        self.buffer_shape = (batch, heads_kv, dim, dtype, device)
        self.keys: list[torch.Tensor | None] = [None] * len(lengths)
        self.values: list[torch.Tensor | None] = [None] * len(lengths)
        self.valid: list[torch.Tensor | None] = [None] * len(lengths)
        cache_kind = "fp8" if self.spec is not None else "bf16"
        self.splits = [kernels.engine_splits(cache_kind, batch * heads_kv, c, device) for c in self.capacities]
        # The KV buffers get a memory pool of their own: carved from the allocator's general cache, a buffer can
        # land in a larger cached block whose unsplittable rest then counts as allocated (up to 1 MiB a buffer).
        self.pool = torch.cuda.MemPool() if device.type == "cuda" else None
        self.lengths = torch.zeros(len(lengths), dtype=torch.long, device=device)
        super().__init__(decoder, signature, sampling, batch, n_new, dim, dtype, device, forced)

    def load(self, caches, masks, per_sequence, token, positions, uniforms, out_tokens, forced=None) -> None:
        """Move the prefilled caches into the buffers (sequence b into row b), layer by layer, freeing each source
        layer as it goes; pads (rows shorter than the layer's longest) are zeroed and hidden."""
        batch, heads_kv, dim, dtype, device = self.buffer_shape
        lengths = self.signature[0]
        empty = torch.empty(0, device=device, dtype=dtype)
        # Work per layer, not per row where it can be (a quality batch has ~100 rows and 36 layers: each launch
        # counts): the pads zeroed in one op before the rows are copied over them, the validity mask in one compare.
        row_lengths = torch.tensor(per_sequence, device=device) if self.masked else None
        slots = torch.arange(max(self.capacities), device=device)
        for i in range(len(lengths)):
            if self.spec is not None:
                self._load_scales(i, caches)
            shortest = min(seq[i] for seq in per_sequence)
            # K, then V: each source is freed before the next buffer is allocated, so the transient is half a layer,
            # as for transformers' own cache growing by torch.cat.
            for name, buffers in (("keys", self.keys), ("values", self.values)):
                if buffers[i] is None:
                    buffers[i] = self._empty((batch, heads_kv, self.capacities[i], dim), self.kv_dtype, device)
                if shortest < lengths[i]:  # pads: zero, never garbage (a hidden entry still meets a 0 weight)
                    buffers[i][:, :, shortest:lengths[i]].view(torch.uint8 if self.spec else dtype).zero_()
                for b, cache in enumerate(caches):
                    buffers[i][b:b + 1, :, :per_sequence[b][i]].copy_(_stored(cache.layers[i], name))
                for cache in caches:
                    setattr(cache.layers[i], name, empty)
                    if self.spec is not None:
                        setattr(cache.layers[i], "qk" if name == "keys" else "qv", None)
            self.decoder.layer_moved(i)
            if self.masked and self.valid[i] is None:
                self.valid[i] = self._empty((batch, heads_kv, self.capacities[i]), torch.uint8, device).zero_()
            if self.valid[i] is not None:  # row b sees its own entries [0, n_b) of each head, but what its press hid
                live = slots[None, None, :self.capacities[i]] < row_lengths[:, i, None, None]  # (B, 1, capacity)
                self.valid[i].copy_(live.expand_as(self.valid[i]))
                for b, masked in enumerate(masks):
                    if i in masked:
                        rows, h, s = masked.pop(i)
                        self.valid[i][rows + b, h, s] = 0
        self.lengths.copy_(torch.tensor(lengths, dtype=torch.long))
        self.load_inputs(token, positions, uniforms, out_tokens, forced)

    def _load_scales(self, i: int, caches) -> None:
        """Layer i's fp8 scales, row b from sequence b's cache (set from its own prefill)."""
        rows = [torch.cat([getattr(c.layers[i], name).flatten(1) for c in caches])  # (B, 1 | Hkv) float32
                for name in ("k_scale", "v_scale")]
        if self.scales[i] is None:  # static tensors, as the buffers: a captured graph reads them where they are
            self.scales[i] = tuple(self._empty(r.shape, torch.float32, r.device) for r in rows)
        for static, r in zip(self.scales[i], rows):
            static.copy_(r)

    def _empty(self, shape, dtype, device) -> torch.Tensor:
        return empty_in_pool(self.pool, shape, dtype, device)  # the KV pool, retried once near the memory limit

    def free(self) -> None:
        """Drop the graph and the buffers, then their pool (a pool must outlive the blocks carved from it)."""
        super().free()
        self.keys = self.values = self.valid = self.scales = []
        self.pool = None

    def _step_context(self) -> torch.Tensor:
        return self.lengths + 1  # entries each layer attends to once this token is written

    def _attend(self, i, w, qkv, cos, sin, live) -> None:
        kernels.qk_norm_rope_store(qkv, *qk_norms(w), cos, sin, self.keys[i], self.values[i], self.valid[i],
                                   self.lengths[i: i + 1], self.q, scales=self.scales[i])
        kernels.decode_attention(self.q, self.keys[i], self.values[i], live[i: i + 1], self.valid[i], w.scale,
                                 self.attn_out, self.splits[i], scales=self.scales[i])

    def _advance(self) -> None:
        self.lengths.add_(1)

    def _feed_forced(self, n: int) -> int:
        """The quality batch's common forced steps in one forward (fast/forced_prefill.py); fp8 buffers step singly
        (their store kernel quantizes each token)."""
        e = forced_prefill.forced_steps(self.answer_from, n) if self.forced is not None and self.spec is None else 0
        if e:
            forced_prefill.feed_forced(self, e)
        return e

    def kv_state(self, positions) -> KVState:
        """Bytes the buffers hold (allocated capacity, pads included) and the entries attention can see; `positions`
        is one count, or one per sequence of a batch (tokens are then per sequence, bytes the whole batch's)."""
        layers = []
        parts = {"data": 0, "scales": 0, "window": 0}
        for keys, values, valid, n, scales in zip(self.keys, self.values, self.valid, self.lengths.tolist(),
                                                  self.scales):
            batch, heads, capacity, _ = keys.shape
            live = float(valid[:, :, :n].sum()) / heads if valid is not None else float(n * batch)
            held = keys.nbytes + values.nbytes + (sum(t.nbytes for t in scales) if scales else 0)
            layers.append((held, batch, capacity, live))
            parts["data"] += keys.nbytes + values.nbytes
            parts["scales"] += sum(t.nbytes for t in scales) if scales else 0
        state = padded_rows_state(layers, positions)
        if self.spec is not None:
            state.parts = parts
            # what vanilla holds for the same positions, in the model's dtype (the buffers are one byte an element)
            batch, heads, _, dim = self.keys[0].shape
            seen = sum(positions) if isinstance(positions, list) else positions * batch
            state.full_bytes = len(self.keys) * 2 * heads * dim * self.q.element_size() * seen
        return state


def _stored(layer, name: str) -> torch.Tensor:
    """What a layer of the prefilled cache holds for K or V, as the buffers store it: a plain cache's tensor, or a
    settled fp8 cache's codes (every token quantized: fp8 keeps no bf16 window)."""
    if isinstance(layer, QuantizedLayer):
        return layer.qk if name == "keys" else layer.qv
    return getattr(layer, name)
