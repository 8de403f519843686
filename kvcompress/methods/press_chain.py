"""A kvpress press chain written as text: `knorm@0.5`, `adakv+expected_attention@0.5`, `knorm@2048tok`, `knorm@64MiB`.

`ratio` is kvpress's compression_ratio: the fraction of the context's KV entries to evict, in [0, 1). A budget
instead of a ratio keeps that much of every prompt's context (equal memory across methods): it becomes kvpress's
ratio per prompt, 1 - kept / context tokens (0 when the context is shorter); `PressChain.for_context` does it and the
record holds both (compression_ratio, kv_budget).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from kvcompress.errors import UserError
from kvcompress.hub import hub_available
from kvcompress.methods import presses as registry
from kvcompress.methods.base import Method
from kvcompress.methods.grammar import parse_options, parse_ratio
from kvcompress.methods.quant_spec import FORMATS

_BUDGET = re.compile(r"^(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>tok|KiB|MiB|GiB)$")
_UNIT_BYTES = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_SYNTAX = re.compile(r"^(?P<chain>[a-z0-9_+]+)(?:@(?P<ratio>[^\[]+))?(?:\[(?P<options>.*)\])?$")


@dataclass
class PressChain(Method):
    # a kept budget instead of a ratio: ("tok" | "bytes", amount), or bytes per target length (--match-kv)
    budget: tuple[str, float] | None = None
    budget_by_target: dict[int, float] | None = None
    budget_of: str = ""  # --match-kv: the method whose measured KV bytes set the budget

    @property
    def phase(self) -> str:
        if self.chain[0].name == "dmspress" and self.options.get("decoding"):
            return "prefill+decoding"
        return self.chain[0].phase

    @property
    def expected_memory(self) -> str:
        """kvpress's documented memory behaviour of the outermost element that decides it."""
        kinds = [p.memory for p in self.chain]
        outer = self.chain[0]
        kinds += [memory for option, value, memory in outer.memory_if if self.options.get(option) == value]
        for decisive in ("mask", "none", "uneven"):
            if decisive in kinds:
                return decisive
        return "real"

    @property
    def needs_hub(self) -> str:
        return "; ".join(p.needs_hub for p in self.chain if p.needs_hub)

    @property
    def needs_eager(self) -> bool:
        return any(p.needs_eager for p in self.chain)

    @property
    def not_runnable(self) -> str:
        return "; ".join(p.not_runnable for p in self.chain if p.not_runnable)

    @property
    def own_prefill(self) -> str:
        """Why it needs a prefill of its own ("" = one plain prefill can serve it and others)."""
        if self.phase != "prefill":
            return f"it compresses during decoding ({self.phase})"
        return "; ".join(p.own_prefill for p in self.chain if p.own_prefill)

    @property
    def joins_shared_prefill(self) -> bool:
        return self.shares_prefill and not self.own_prefill

    @property
    def takes_budget(self) -> bool:
        return budget_capable(self.chain) is None

    @property
    def budget_label(self) -> str | None:
        if self.budget_by_target is not None:
            return f"kv={self.budget_of}:" + ",".join(f"{t}:{b:.0f}B" for t, b in sorted(self.budget_by_target.items()))
        if self.budget is None:
            return None
        unit, value = self.budget
        return f"{value:g}tok" if unit == "tok" else f"{value:.0f}B"

    def for_context(self, context_tokens: int, model=None, target_tokens: int | None = None) -> PressChain:
        if self.budget is None and self.budget_by_target is None:
            return self
        if self.budget_by_target is not None:
            if target_tokens not in self.budget_by_target:
                raise UserError(f"{self.name}: {self.budget_of} has no measured KV bytes at {target_tokens} tokens")
            unit, value = "bytes", self.budget_by_target[target_tokens]
        else:
            unit, value = self.budget
        kept = value if unit == "tok" else value / kv_bytes_per_token(model)
        ratio = round(max(0.0, 1.0 - kept / context_tokens), 6)
        return replace(self, compression_ratio=ratio)

    def matched(self, other: str, bytes_by_target: dict[int, float]) -> PressChain:
        """This press at another method's measured KV bytes per context length (--match-kv)."""
        chain = "+".join(p.name for p in self.chain)
        return replace(self, name=f"{chain}@kv={other}", compression_ratio=None, budget=None,
                       budget_by_target=dict(bytes_by_target), budget_of=other)

    def hook(self, model):
        """A fresh press for one generation (decoding presses keep state between calls)."""
        return registry.build(self.chain, self.compression_ratio, self.options, model)

    def press_label(self, model=None) -> str | None:
        try:
            return repr(self.hook(model))[:300]
        except Exception:  # noqa: BLE001 - a label must never fail a run; the run reports the real error
            return "+".join(p.class_name for p in self.chain)

    def problem(self, lm) -> str | None:
        if reason := super().problem(lm):
            return reason
        if self.not_runnable:
            return f"not runnable here: {self.not_runnable}"
        if self.needs_hub and not hub_available():
            return f"needs the Hugging Face Hub ({self.needs_hub}); offline, skipped"
        if self.needs_eager and lm.attn_implementation != "eager":
            return "needs attention weights: rerun with --attn eager"
        return None

    def engine_problem(self, decoder) -> str | None:
        if self.compresses_during_decoding and not decoder.runs_model_forward:
            return "a decoding-phase press rewrites the cache inside transformers' forward"
        return None

    def batch_problem(self, settings) -> str | None:
        if self.compresses_during_decoding:
            return "batched decode of a decoding-phase press is not supported (it rewrites one sequence's cache per step)"
        return super().batch_problem(settings)


def kv_bytes_per_token(model) -> float:
    """K and V bytes one context token takes across all layers in an uncompressed cache (config x dtype): turns a
    byte budget into tokens; the bytes a press then holds are measured from its cache as always."""
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * model.dtype.itemsize


def budget_capable(chain) -> str | None:
    """Why a kept budget cannot size this chain (None: it can): the ratio must evict context tokens at prefill."""
    outer = chain[0]
    if not takes_ratio(chain):
        return f"{outer.name} sizes itself (takes no ratio)"
    fields = {p.ratio_field for p in chain if p.takes_ratio}
    if fields & {"key_channel_compression_ratio", "head_compression_ratio", "target_compression_ratio"}:
        return f"{outer.name}'s @ratio does not evict context tokens"
    if "decoding" in outer.phase and outer.phase != "prefill+decoding":
        return f"{outer.name} compresses during decoding only"
    return None


def takes_ratio(chain: list[registry.PressInfo]) -> bool:
    """The outermost press decides: a self-sizing wrapper (decoding, cam, dmspress) takes none even over a scorer."""
    outer, base = chain[0], chain[-1]
    return outer.takes_ratio and (outer.owns_ratio or base.takes_ratio)


def parse(text: str) -> PressChain:
    """The last family tried: anything else must be a press chain, or it is an error."""
    match = _SYNTAX.match(text)
    if not match:
        raise UserError(f"cannot parse method {text!r}: write e.g. knorm@0.5, adakv+snapkv@0.25, vanilla or dms-8x")
    chain_text = registry.ALIASES.get(match["chain"], match["chain"])
    names = chain_text.split("+")
    unknown = [n for n in names if n not in registry.PRESSES]
    if unknown:
        raise UserError(f"unknown press {unknown[0]!r}; valid: vanilla, dms-8x, {', '.join(registry.PRESSES)}; KV "
                        f"formats (alone or last, e.g. knorm@0.5+fp8): {', '.join(FORMATS)}")
    chain = [registry.PRESSES[n] for n in names]
    *wrappers, base = chain
    if base.role in ("wrapper", "decoding"):
        raise UserError(f"{base.name} wraps a scorer: write {base.name}+<scorer>, e.g. {base.name}+knorm@0.5")
    for w in wrappers:
        if w.role not in ("wrapper", "decoding"):
            raise UserError(f"{w.name} is not a wrapper; only {', '.join(_wrapper_names())} go before '+'")
    if wrappers and base.role != "scorer":
        raise UserError(f"{wrappers[-1].name} needs a scorer press inside (e.g. knorm, snapkv), not {base.name}")
    budget_match = _BUDGET.match(match["ratio"].strip()) if match["ratio"] is not None else None
    if budget_match:
        why = budget_capable(chain)
        if why:
            raise UserError(f"{text!r}: a kept budget needs a press whose ratio evicts context tokens; {why}")
        unit = budget_match["unit"]
        value = float(budget_match["value"]) * _UNIT_BYTES.get(unit, 1)
        if value <= 0:
            raise UserError(f"{text!r}: the budget must be positive")
        options = parse_options(match["options"] or "", text)
        _check_options(chain, None, options, text)
        label = f"{budget_match['value']}{unit}"
        name = chain_text + f"@{label}" + (f"[{match['options']}]" if options else "")
        return PressChain(name, None, options, chain, budget=("tok" if unit == "tok" else "bytes", value))
    ratio = parse_ratio(match["ratio"], text) if match["ratio"] is not None else None
    ratio_taker = takes_ratio(chain)
    if ratio is None and ratio_taker:
        raise UserError(f"{text!r} needs a compression ratio, e.g. {chain_text}@0.5")
    if ratio is not None and not ratio_taker:
        raise UserError(f"{chain[0].name} takes no ratio (its size is set by its own arguments); drop '@{match['ratio']}'")
    options = parse_options(match["options"] or "", text)
    _check_options(chain, ratio, options, text)
    name = chain_text + (f"@{ratio:g}" if ratio is not None else "") + (f"[{match['options']}]" if options else "")
    return PressChain(name, ratio, options, chain)


def _check_options(chain: list[registry.PressInfo], ratio: float | None, options: dict, text: str) -> None:
    """Options go to the outermost press: catch a misspelt one, one that contradicts @ratio or a bad value here, not
    as a failed run (kvpress is imported only when there are options)."""
    outer = chain[0]
    if takes_ratio(chain):
        ratio_fields = {p.ratio_field for p in chain if p.takes_ratio} | {"compression_ratio"}
        clash = sorted(ratio_fields & set(options))
        if clash:  # the record would say @ratio while the press ran at the option's value
            raise UserError(f"{text!r}: {clash[0]} is what @ratio sets; write the ratio once, as @<ratio>")
    missing = [name for name in outer.required if name not in options]
    if missing:
        raise UserError(f"{outer.name} needs {missing[0]}=<value> (no usable default), e.g. "
                        f"{outer.name}+{outer.inner or 'knorm'}[{missing[0]}=0.5]")
    if options:
        accepted = registry.accepted_options(outer)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise UserError(f"{outer.class_name} has no option {unknown[0]!r} in {text!r}; it takes: "
                            f"{', '.join(sorted(accepted)) or 'none'}")
        why = registry.option_problem(chain, ratio, options)
        if why:
            raise UserError(f"{text!r}: {why}")


def _wrapper_names() -> list[str]:
    return [p.name for p in registry.PRESSES.values() if p.role in ("wrapper", "decoding")]
