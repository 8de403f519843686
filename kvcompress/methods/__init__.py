"""Methods: what is compared. `vanilla`, `dms-8x`, or a kvpress press written as text.

Grammar (shared by every script):
    vanilla
    dms-8x[evict=<fraction>]              DMS's rule run natively (methods/dms.py); evict overrides the calibration
    dms-8x-remote                         the checkpoint's own remote code, in a process of its own (isolated.py)
    <press>@<ratio>                       knorm@0.5
    <wrapper>+...+<scorer>@<ratio>        adakv+expected_attention@0.5
    <press>[@<ratio>][<arg>=<value>,...]  decoding+knorm[compression_interval=8,target_size=64]
`ratio` is kvpress's compression_ratio: the fraction of the context's KV entries to evict, in [0, 1).
A budget instead of a ratio keeps that much of every prompt's context (equal memory across methods):
    <press>@<N>tok                        knorm@2048tok   (tokens kept per layer and head)
    <press>@<N>KiB|MiB|GiB                knorm@64MiB     (KV bytes kept, at the model's bytes per token)
The budget becomes kvpress's ratio per prompt, 1 - kept / context tokens (0 when the context is shorter);
`Method.for_context` does it and the record holds both (compression_ratio, kv_budget).
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

from kvcompress.errors import UserError
from kvcompress.methods import presses as registry

DMS_NAME = "dms-8x"
DMS_REMOTE_NAME = "dms-8x-remote"
_BUDGET = re.compile(r"^(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>tok|KiB|MiB|GiB)$")
_UNIT_BYTES = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_SYNTAX = re.compile(r"^(?P<chain>[a-z0-9_+]+)(?:@(?P<ratio>[^\[]+))?(?:\[(?P<options>.*)\])?$")


@dataclass
class Method:
    name: str  # canonical text, e.g. "knorm@0.5"
    kind: str  # "vanilla" | "press" | "dms"
    chain: list[registry.PressInfo] = field(default_factory=list)
    compression_ratio: float | None = None
    options: dict = field(default_factory=dict)
    impl: str | None = None  # DMS only: "native" (methods/dms.py) | "remote" (the checkpoint's code, isolated.py)
    dms_params: object = None  # DMS native only: the cell's DMSParams (calibrated thresholds), set by the runner
    # a kept budget instead of a ratio: ("tok" | "bytes", amount), or bytes per target length (--match-kv)
    budget: tuple[str, float] | None = None
    budget_by_target: dict[int, float] | None = None
    budget_of: str = ""  # --match-kv: the method whose measured KV bytes set the budget

    @property
    def budget_label(self) -> str | None:
        if self.budget_by_target is not None:
            return f"kv={self.budget_of}:" + ",".join(f"{t}:{b:.0f}B" for t, b in sorted(self.budget_by_target.items()))
        if self.budget is None:
            return None
        unit, value = self.budget
        return f"{value:g}tok" if unit == "tok" else f"{value:.0f}B"

    def for_context(self, context_tokens: int, model=None, target_tokens: int | None = None) -> "Method":
        """This method at the ratio its budget gives for a context of `context_tokens` (itself without a budget)."""
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

    def matched(self, other: str, bytes_by_target: dict[int, float]) -> "Method":
        """This press at another method's measured KV bytes per context length (--match-kv)."""
        chain = "+".join(p.name for p in self.chain)
        return replace(self, name=f"{chain}@kv={other}", compression_ratio=None, budget=None,
                       budget_by_target=dict(bytes_by_target), budget_of=other)

    @property
    def phase(self) -> str:
        if self.kind == "dms":
            return "prefill+decoding"
        if not self.chain:
            return "none"
        if self.chain[0].name == "dmspress" and self.options.get("decoding"):
            return "prefill+decoding"
        return self.chain[0].phase

    @property
    def expected_memory(self) -> str:
        """kvpress's documented memory behaviour of the outermost element that decides it."""
        if not self.chain:
            return "none" if self.kind == "vanilla" else "real"
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
    def compresses_during_decoding(self) -> bool:
        return "decoding" in self.phase

    @property
    def native_dms(self) -> bool:
        return self.kind == "dms" and self.impl == "native"

    def new_press(self, model):
        """A fresh press for one generation (decoding presses keep state between calls); native DMS's attention
        patch is installed the same way."""
        if self.native_dms:
            from kvcompress.methods import dms

            return dms.DMSPatch(self.dms_params or dms.DMSParams.from_config(model.config))
        if self.kind != "press":
            return None
        return registry.build(self.chain, self.compression_ratio, self.options, model)

    def press_label(self, model=None) -> str | None:
        if self.kind != "press":
            return None
        try:
            return repr(self.new_press(model))[:300]
        except Exception:  # noqa: BLE001 - a label must never fail a run; the run reports the real error
            return "+".join(p.class_name for p in self.chain)


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


def press_context(press, model):
    return press(model) if press is not None else nullcontext()


def parse_method(text: str) -> Method:
    text = text.strip()
    if text in ("vanilla", "none", "no_press"):
        return Method("vanilla", "vanilla", compression_ratio=0.0)
    dms_method = _parse_dms(text)
    if dms_method is not None:
        return dms_method
    base_name = re.split(r"[@\[]", text, maxsplit=1)[0]
    if base_name in ("vanilla", "none", "no_press"):
        raise UserError(f"{base_name} takes no ratio or options: write {base_name!r} alone (in {text!r})")
    if base_name.lower() in ("dms", DMS_NAME, DMS_REMOTE_NAME):
        raise UserError(f"{base_name} takes no ratio (its decisions set its compression): write {base_name!r}, "
                        f"or dms-8x[evict=0.5] for a calibrated fraction (in {text!r})")
    match = _SYNTAX.match(text)
    if not match:
        raise UserError(f"cannot parse method {text!r}: write e.g. knorm@0.5, adakv+snapkv@0.25, vanilla or dms-8x")
    chain_text = registry.ALIASES.get(match["chain"], match["chain"])
    names = chain_text.split("+")
    unknown = [n for n in names if n not in registry.PRESSES]
    if unknown:
        raise UserError(f"unknown press {unknown[0]!r}; valid: vanilla, dms-8x, {', '.join(registry.PRESSES)}")
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
        options = _parse_options(match["options"] or "", text)
        _check_options(chain[0], options, text)
        label = f"{budget_match['value']}{unit}"
        name = chain_text + f"@{label}" + (f"[{match['options']}]" if options else "")
        return Method(name, "press", chain, None, options, budget=("tok" if unit == "tok" else "bytes", value))
    ratio = _parse_ratio(match["ratio"], text) if match["ratio"] is not None else None
    ratio_taker = takes_ratio(chain)
    if ratio is None and ratio_taker:
        raise UserError(f"{text!r} needs a compression ratio, e.g. {chain_text}@0.5")
    if ratio is not None and not ratio_taker:
        raise UserError(f"{chain[0].name} takes no ratio (its size is set by its own arguments); drop '@{match['ratio']}'")
    options = _parse_options(match["options"] or "", text)
    _check_options(chain[0], options, text)
    name = chain_text + (f"@{ratio:g}" if ratio is not None else "") + (f"[{match['options']}]" if options else "")
    return Method(name, "press", chain, ratio, options)


def _parse_dms(text: str) -> Method | None:
    match = re.fullmatch(r"(?P<name>dms-8x-remote|dms-8x|dms)(?:\[(?P<options>.*)\])?", text.lower())
    if not match:
        return None
    remote = match["name"] == DMS_REMOTE_NAME
    options = _parse_options(match["options"] or "", text)
    unknown = sorted(set(options) - ({"evict"} if not remote else set()))
    if unknown:
        accepted = "none (the checkpoint's code decides)" if remote else "evict=<fraction in (0, 1)>"
        raise UserError(f"{match['name']} has no option {unknown[0]!r} in {text!r}; it takes: {accepted}")
    if "evict" in options:
        evict = options["evict"]
        if not isinstance(evict, (int, float)) or isinstance(evict, bool) or not 0.0 < evict < 1.0:
            raise UserError(f"evict in {text!r} must be a fraction in (0, 1) of the tokens outside the window")
        options["evict"] = float(evict)
    name = DMS_REMOTE_NAME if remote else DMS_NAME + (f"[evict={options['evict']:g}]" if options else "")
    return Method(name, "dms", options=options, impl="remote" if remote else "native")


def takes_ratio(chain: list[registry.PressInfo]) -> bool:
    """The outermost press decides: a self-sizing wrapper (decoding, cam, dmspress) takes none even over a scorer."""
    outer, base = chain[0], chain[-1]
    return outer.takes_ratio and (outer.owns_ratio or base.takes_ratio)


def _check_options(outer: registry.PressInfo, options: dict, text: str) -> None:
    """Options go to the outermost press: catch a misspelt one here, not as a failed run."""
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


def parse_methods(text: str) -> list[Method]:
    methods = [parse_method(part) for part in split_top_level(text)]
    if not methods:
        raise UserError("--methods is empty")
    names = [m.name for m in methods]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:  # both would measure the same cell, and one record would replace the other
        raise UserError(f"--methods names {twice} twice")
    return methods


def split_top_level(text: str) -> list[str]:
    """Split on commas outside [...] so options can hold commas."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _parse_ratio(raw: str, text: str) -> float:
    try:
        ratio = float(raw)
    except ValueError:
        raise UserError(f"ratio in {text!r} is not a number") from None
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"ratio in {text!r} must be in [0, 1) (the fraction of KV entries evicted), got {ratio:g}")
    return ratio


def _parse_options(raw: str, text: str) -> dict:
    options = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        if "=" not in item:
            raise UserError(f"option {item!r} in {text!r} must look like name=value")
        key, value = (s.strip() for s in item.split("=", 1))
        options[key] = _literal(value)
    return options


def _literal(value: str):
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _wrapper_names() -> list[str]:
    return [p.name for p in registry.PRESSES.values() if p.role in ("wrapper", "decoding")]
