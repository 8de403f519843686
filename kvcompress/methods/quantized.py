"""Quantized KV caches as methods: `fp8`, `int4`, `int2` (formats and options in methods/quant_spec.py), alone or
after any other method: `knorm@0.5+fp8`, `snapkv@0.875+int4[group=32,window=128]`, `dms-8x+fp8`. The method on the
left decides which entries are kept (evict), the format how what is kept is stored.

A `Quantized` method is its inner method (vanilla when written alone) plus a QuantSpec: it hooks, prepares and is
budgeted as the inner one, and asks the decoder for a quantized cache (`quantized_kv`, a capability of
engine/decoder.py); an engine without one refuses it in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from kvcompress.errors import UserError
from kvcompress.methods.base import Method
from kvcompress.methods.grammar import parse_options
from kvcompress.methods.quant_spec import FORMATS, QuantSpec, parse_spec
from kvcompress.methods.vanilla import Vanilla

_SUFFIX = re.compile(r"^(?:(?P<inner>.+)\+)?(?P<format>" + "|".join(FORMATS) + r")(?:\[(?P<options>[^\[\]]*)\])?$")


@dataclass
class Quantized(Method):
    inner: Method = None
    spec: QuantSpec = None

    # -- the inner method's identity and hooks -------------------------------------------------------------------------
    @property
    def single_prefill(self) -> bool:
        return self.inner.single_prefill

    @property
    def runs_in_child(self) -> bool:
        return self.inner.runs_in_child

    @property
    def needs_dms_checkpoint(self) -> bool:
        return self.inner.needs_dms_checkpoint

    @property
    def dms_impl(self) -> str | None:
        return self.inner.dms_impl

    @property
    def phase(self) -> str:
        # every token is stored quantized as it comes: the cache changes while decoding, so one prefill does not
        # serve several questions (shares_prefill); a shared prefill of several methods it joins (joins_shared_prefill)
        inner = self.inner.phase
        return "prefill+decoding" if inner in ("none", "prefill") else inner

    @property
    def expected_memory(self) -> str:
        # a mask-only press still hides rather than frees: its quantized cache holds every position
        return "mask" if self.inner.expected_memory == "mask" else "real"

    @property
    def takes_budget(self) -> bool:
        return False  # --match-kv sizes a press in bf16 bytes; a quantized cache holds fewer (one to do)

    @property
    def budget_label(self) -> str | None:
        return self.inner.budget_label

    @property
    def joins_shared_prefill(self) -> bool:
        # its press compresses the shared prefill's bf16 layer as it would its own (the cache settles a layer only
        # after the layer's press has run); what it keeps is then stored quantized (shared_prefill_cache). A
        # mask-only press over a quantized cache does not batch (batch_problem): it keeps its own prefill.
        return self.inner.joins_shared_prefill and self.inner.expected_memory != "mask"

    def shared_prefill_cache(self, cache, model):
        """What its own prefill leaves: the press's kept entries, settled into its quantized cache (fp8's scale from
        them, int4/int2's newest tokens in the bf16 window), before any question token."""
        from kvcompress.methods.quantized_cache import QuantizedKVCache

        quantized = QuantizedKVCache.for_model(self.spec, model)
        for i, layer in enumerate(cache.layers):
            quantized.update(layer.keys, layer.values, i)
        quantized.settle()
        return quantized

    def for_context(self, context_tokens: int, model=None, target_tokens: int | None = None) -> Quantized:
        inner = self.inner.for_context(context_tokens, model, target_tokens)
        return replace(self, inner=inner, compression_ratio=inner.compression_ratio)

    def press_label(self, model=None) -> str | None:
        return self.inner.press_label(model)

    def hook(self, model):
        return self.inner.hook(model)

    def prepare(self, lm, prompt) -> Quantized:
        return replace(self, inner=self.inner.prepare(lm, prompt))

    def new_cache(self, decoder, lm, n_new: int, batch_room: int | None = None):
        if self.inner.single_prefill:  # native DMS: its own cache (the rule's marks), its entries quantized
            return decoder.new_quantized_dms_cache(self.inner.params_for(lm.model), self.spec, lm, n_new, batch_room)
        return decoder.new_quantized_cache(self.spec, lm, n_new)

    # -- why it cannot run ---------------------------------------------------------------------------------------------
    def problem(self, lm) -> str | None:
        if reason := self.inner.problem(lm):
            return reason
        c = lm.model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return self.spec.problem_with(head_dim)

    def engine_problem(self, decoder) -> str | None:
        if self.spec.format not in decoder.quantized_formats:
            return f"the {decoder.name} engine does not store a {self.spec.format} KV cache yet (issue 24)"
        if self.inner.single_prefill and self.spec.format not in decoder.quantized_dms_formats:
            return f"the {decoder.name} engine does not store native DMS's cache in {self.spec.format} yet"
        if self.inner.expected_memory == "mask" and self.spec.format not in decoder.quantized_masked_formats:
            return (f"the {decoder.name} engine keeps no mask of hidden entries in a {self.spec.format} cache: "
                    f"run the mask-only press {self.inner.name} on the hf engine (--engine hf)")
        return self.inner.engine_problem(decoder)

    def batch_problem(self, settings) -> str | None:
        # native DMS over a quantized cache batches on the fast engine; the hf engine refuses it at its first cache
        if self.inner.expected_memory == "mask":
            return "batched decode of a mask-only press over a quantized cache is not supported"
        return self.inner.batch_problem(settings)

    # -- what its records say ------------------------------------------------------------------------------------------
    def record_fields(self, record, decoder) -> None:
        self.inner.record_fields(record, decoder)
        record.kv_quant = self.spec.label
        record.kv_quant_storage = decoder.quantized_kv

    def batch_notes(self, batch: int) -> list[str]:
        return self.inner.batch_notes(batch)


def parse(text: str, parse_inner) -> Method | None:
    """`<method>+fp8|int4|int2[options]`, or a format alone; None when the text ends in no format. `parse_inner`
    parses what is on the left (methods/__init__.py's parse_method: any other family)."""
    match = _SUFFIX.match(text)
    if not match:
        if re.search(r"(^|\+)(" + "|".join(FORMATS) + r")(@|\[|\+|$)", text):
            raise UserError(f"cannot parse {text!r}: a KV format comes last, once, e.g. knorm@0.5+int4[group=32]; "
                            "fp8, int4 and int2 take no ratio")
        return None
    spec = parse_spec(match["format"], parse_options(match["options"] or "", text), text)
    if match["inner"] is None:
        return Quantized(spec.label, compression_ratio=0.0, inner=Vanilla("vanilla", compression_ratio=0.0), spec=spec)
    inner = parse_inner(match["inner"])
    if isinstance(inner, Vanilla):
        return parse(spec_text(match), parse_inner)
    if isinstance(inner, Quantized):
        raise UserError(f"{text!r} names two KV formats; one cache has one")
    if inner.compresses_during_decoding and not inner.single_prefill:
        raise UserError(f"{text!r}: a decoding-phase press rewrites bf16 entries the quantized cache no longer holds")
    if getattr(inner, "budget", None) and inner.budget[0] == "bytes":
        raise UserError(f"{text!r}: a byte budget sizes a bf16 cache; before a KV format write a token budget, "
                        f"e.g. knorm@2048tok+{match['format']}")
    if inner.runs_in_child:
        raise UserError(f"{text!r}: dms-8x-remote keeps its own paged bf16 cache; compose the native dms-8x")
    return Quantized(f"{inner.name}+{spec.label}", compression_ratio=inner.compression_ratio, inner=inner, spec=spec)


def spec_text(match) -> str:
    return match["format"] + (f"[{match['options']}]" if match["options"] is not None else "")
