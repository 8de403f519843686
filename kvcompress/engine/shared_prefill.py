"""One prefill of a context for every method that compresses after it (quality runs, run/quality.py).

A kvpress prefill press acts in a forward hook after each attention layer: it reads that layer's inputs (the hidden
states, the layer's full keys and values, the forward's kwargs, the attention weights if any) and replaces the
layer's cache entries; nothing it does reaches the layer's output, so every later layer sees the hidden states of an
uncompressed prefill. One plain prefill therefore holds everything each such press would see in its own prefill.
`prefill_shared` runs it once, and after each layer calls every method's own `forward_hook` (kvpress's code, not a
copy of it) on that method's own cache, holding the layer's full keys and values (the layer's own tensors for a
press that only reads them, methods/presses.reads_layer_only, a copy for any other; tests/test_shared_prefill.py runs
every registered press that is handed the layer before vanilla and holds vanilla's cache to the model's): each
method ends with the cache its own prefill would have left, and the full layer is dropped as soon as every method
has taken what it keeps.

Presses that differ only in their ratio (knorm@0.5 and knorm@0.875) score a layer the same way and keep a different
number of the same scores: such a pair's score() runs once per layer and both keep from its result
(methods/presses.shared_score_key says which presses qualify; kvpress's topk still runs per press).

Which methods qualify is the method protocol's `joins_shared_prefill` (methods/base.py; for presses the
registry's `own_prefill`, methods/presses.py; a quantized composition, its press's); a method that stores its
entries in a format of its own gets them so from `shared_prefill_cache` (methods/quantized.py: settled quantized).
tests/test_shared_prefill.py holds the caches, kept lengths per layer and greedy answers against each method's own
prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from kvcompress.memory import clear_masks
from kvcompress.methods import Method
from kvcompress.methods.presses import question_starts_at_cache_length, reads_layer_only, shared_score_key


@dataclass
class Compressed:
    """One method's cache after the shared prefill of one context."""

    cache: DynamicCache | None  # None when the method failed (see error)
    masked: dict = field(default_factory=dict)  # {layer: indices} a mask-only press hid (kvpress's masked_key_indices)
    question_start: int = 0  # the position of the question's first token (generate.question_start's rule)
    error: str | None = None


@torch.inference_mode()
def prefill_shared(lm, methods: list[Method], context_ids: torch.Tensor) -> dict[str, Compressed]:
    """{method name: its compressed cache} from one prefill of `context_ids` (1, T). A method whose press raises is
    dropped from the remaining layers with its error (one failing press must not cost the others their prefill)."""
    unfit = [m.name for m in methods if not m.joins_shared_prefill]
    if unfit:
        raise ValueError(f"{', '.join(unfit)}: these methods run their own prefill (Method.joins_shared_prefill)")
    model = lm.model
    context = context_ids.to(lm.device)
    presses = {m.name: m.hook(model) for m in methods}  # None: no compression (vanilla)
    # What kvpress's BasePress.__call__ does besides hooking each attention layer (a press that joins a shared
    # prefill has no __call__ of its own: tests/test_shared_prefill.py checks the registry for it).
    for press in presses.values():
        if press is not None:
            press.post_init_from_model(model)
    for layer in model.model.layers:
        layer.self_attn.rotary_emb = model.model.rotary_emb
    scores = ScoreMemo(presses.values())
    caches = {name: DynamicCache() for name in presses}
    masked: dict[str, dict] = {name: {} for name in presses}
    errors: dict[str, str] = {}
    shared = DynamicCache()
    positions = host_positions(context.shape[1])
    # Methods whose press only reads the full layer get the layer's own tensors; the others a copy each (a copy of a
    # 4K layer is small, but nine of them a layer were 9 % of a 4K prefill for nine methods on an H100)
    handed = {name for name, press in presses.items() if reads_layer_only(press)}

    def after_attention(module, args, kwargs, output):
        i = module.layer_idx
        layer = shared.layers[i]
        keys, values = layer.keys, layer.values
        kwargs = {**kwargs, "cache_position": positions}
        for name, press in presses.items():
            if name in errors:
                continue
            cache = caches[name]
            if name in handed:  # the layer itself: the press replaces it with new tensors of what it keeps
                cache.update(keys[:, :, :0], values[:, :, :0], i)
                cache.layers[i].keys, cache.layers[i].values = keys, values
            else:
                cache.update(keys, values, i)  # a copy of the full layer, for a press that may write into it
            if press is None:
                continue
            try:
                press.forward_hook(module, args, {**kwargs, "past_key_values": cache}, output)
            except Exception as exc:  # noqa: BLE001 - recorded on this method's records by the caller
                errors[name] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                caches[name] = None
            # a mask-only press leaves its choice on the module: each method keeps its own
            hidden = getattr(module, "masked_key_indices", None)
            if hidden is not None:
                masked[name][i] = hidden
                module.masked_key_indices = None
        # every method holds its copy now; the full layer is no longer read (its attention is done)
        layer.keys = layer.values = keys.new_empty(0)
        scores.clear()

    clear_masks(model)
    layers = model.model.layers
    handles = [layer.self_attn.register_forward_hook(after_attention, with_kwargs=True) for layer in layers]
    try:
        model.model(input_ids=context, past_key_values=shared, use_cache=True)  # no LM head: only KV is kept
    finally:
        for handle in handles:
            handle.remove()
        scores.detach()
        clear_masks(model)
    out = {}
    for method in methods:
        name, press, cache = method.name, presses[method.name], caches[method.name]
        if name in errors or cache is None:
            out[name] = Compressed(None, error=errors.get(name, "no cache"))
            continue
        start = cache.get_seq_length() if question_starts_at_cache_length(press) else context.shape[1]
        out[name] = Compressed(method.shared_prefill_cache(cache, model), masked[name], start)
    return out


def host_positions(length: int) -> torch.Tensor:
    """The prefill's cache positions (0..T-1) as the presses' hooks get them: on the host. kvpress's hook asks
    `is_prefilling(cache_position, q_len)` with `.item()`, which on the device's copy waits for the GPU: once per
    press and layer (8 presses x 36 layers a sample), each wait idling the GPU while the host prepares the next
    work. The values are the model's own (an empty cache, a prefill from position 0)."""
    return torch.arange(length)


class ScoreMemo:
    """One layer's scores, shared by the presses with the same shared_score_key: the first such press to score the
    layer computes them, the others reuse the tensor (no press changes its scores in place: ScorerPress.compress only
    takes their top k). Attached as an instance attribute over each press's score() for one shared prefill."""

    def __init__(self, presses):
        keys = [(p, shared_score_key(p)) for p in presses if p is not None]
        counts: dict = {}
        for _, key in keys:
            counts[key] = counts.get(key, 0) + 1
        sharing = [(p, key) for p, key in keys if key is not None and counts[key] > 1]  # alone: nothing to share
        self.presses = [p for p, _ in sharing]
        self.layer: dict = {}
        for press, key in sharing:
            press.score = self._sharing(key, press.score)

    def _sharing(self, key, score):
        def shared_score(module, *args, **kwargs):
            if key not in self.layer:
                self.layer[key] = score(module, *args, **kwargs)
            return self.layer[key]
        return shared_score

    def clear(self) -> None:
        self.layer = {}

    def detach(self) -> None:
        for press in self.presses:
            del press.score  # the class's own method again
        self.presses, self.layer = [], {}


def set_masks(model, masked: dict) -> None:
    """Put a method's hidden entries back on the attention modules (kvpress's attention patch reads them there)."""
    clear_masks(model)
    for i, indices in masked.items():
        model.model.layers[i].self_attn.masked_key_indices = indices
