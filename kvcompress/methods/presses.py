"""Every press kvpress 0.5.5 exports, under the short names kvpress's own evaluation uses.

One row per press: how to build it at a ratio, which phase it acts in, what it does to memory, and what it needs.
`memory` is kvpress's documented behaviour; the test suite checks it against bytes measured from the cache:
- real:   the K/V tensors get shorter (memory is freed)
- uneven: real, but layers keep different lengths (PyramidKV, SimLayerKV)
- mask:   tensors keep full length; evicted entries are hidden from attention (no memory saved, decode slightly slower)
- none:   no change in size (ThinK zeroes key channels)
kvpress is imported lazily: DMS-8x must run in a process where kvpress never patched attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class PressInfo:
    name: str
    class_name: str
    role: str  # "scorer" (a ScorerPress; can be wrapped), "press" (stands alone), "wrapper" (wraps a scorer), "decoding"
    phase: str  # "prefill", "decoding" or "prefill+decoding"
    memory: str  # "real", "uneven", "mask" or "none"
    takes_ratio: bool = True
    needs_hub: str = ""  # what it downloads at run time ("" = nothing)
    needs_eager: bool = False
    not_runnable: str = ""  # why this harness cannot run it ("" = it can)
    ratio_field: str = "compression_ratio"
    defaults: tuple = ()  # extra constructor arguments, as (name, value) pairs
    note: str = ""


def _p(name, cls, role, memory, **kw) -> PressInfo:
    phase = kw.pop("phase", "decoding" if role == "decoding" else "prefill")
    return PressInfo(name, cls, role, phase, memory, **kw)


PRESSES: dict[str, PressInfo] = {p.name: p for p in [
    # Scorers: score every (head, token); the lowest are evicted. All shrink the cache for real.
    _p("random", "RandomPress", "scorer", "real", note="baseline"),
    _p("knorm", "KnormPress", "scorer", "real"),
    _p("snapkv", "SnapKVPress", "scorer", "real"),
    _p("expected_attention", "ExpectedAttentionPress", "scorer", "real"),
    _p("expected_attention_stats", "ExpectedAttentionStatsPress", "scorer", "real",
       needs_hub="query statistics (alessiodevoto/expectedattentionstats-*) or kmfoda/booksum"),
    _p("streaming_llm", "StreamingLLMPress", "scorer", "real"),
    _p("tova", "TOVAPress", "scorer", "real"),
    _p("observed_attention", "ObservedAttentionPress", "scorer", "real", needs_eager=True,
       note="needs attention weights: the model must load with attn_implementation=eager"),
    _p("qfilter", "QFilterPress", "scorer", "real", needs_hub="learned filters (nthngdy/<model>_qfilt)"),
    _p("pyramidkv", "PyramidKVPress", "scorer", "uneven", note="per-layer budgets: layers keep different lengths"),
    _p("lagkv", "LagKVPress", "scorer", "real"),
    _p("keydiff", "KeyDiffPress", "scorer", "real"),
    _p("non_causal_attn", "NonCausalAttnPress", "scorer", "real"),
    _p("leverage", "LeverageScorePress", "scorer", "real"),
    _p("compactor", "CompactorPress", "scorer", "real"),
    _p("cur", "CURPress", "scorer", "real"),
    _p("cap", "CapPress", "scorer", "real"),
    _p("kvzap", "KVzapPress", "scorer", "real", needs_hub="surrogate model (nvidia/KVzap-*)",
       note="meant to be wrapped in dmspress"),
    # Stand-alone presses with their own logic.
    _p("think", "ThinKPress", "press", "none", ratio_field="key_channel_compression_ratio",
       note="zeroes key channels: ratio is the channel fraction, no memory saved"),
    _p("simlayerkv", "SimLayerKVPress", "press", "uneven", takes_ratio=False,
       note="lazy layers keep only initial + recent tokens; ratio is measured, not set"),
    _p("duo_attention", "DuoAttentionPress", "press", "mask", ratio_field="head_compression_ratio",
       needs_hub="head patterns (raw.githubusercontent.com) or kmfoda/booksum"),
    _p("finch", "FinchPress", "press", "real",
       not_runnable="needs a delimiter token added to the tokenizer and model (update_model_and_tokenizer); "
                    "query-aware only"),
    _p("kvzip", "KVzipPress", "press", "mask", note="extra reconstruction passes; reloads the tokenizer by name"),
    _p("kvgrad", "KVgradPress", "press", "mask", note="a backward pass per chunk (3-4x prefill)"),
    _p("restorekv", "RestoreKVPress", "press", "mask", needs_hub="LoRA adapters (higokri/RestoreKV-*)"),
    _p("fastkvzip", "FastKVzipPress", "press", "mask", needs_hub="trained gates (Jang-Hyun/Fast-KVzip)"),
    _p("kvcompose", "KVComposePress", "press", "real", note="runs an extra eager pass; KV about 2x during prefill"),
    _p("lukv", "LUKVPress", "press", "mask", needs_hub="budget curves (a URL; Llama only)"),
    # Wrappers: `wrapper+scorer@ratio`, e.g. adakv+expected_attention@0.5.
    _p("adakv", "AdaKVPress", "wrapper", "mask", note="head-wise budgets, applied by masking"),
    _p("critical_adakv", "CriticalAdaKVPress", "wrapper", "mask"),
    _p("critical", "CriticalKVPress", "wrapper", "real"),
    _p("block", "BlockPress", "wrapper", "real", defaults=(("block_size", 128),)),
    _p("chunk", "ChunkPress", "wrapper", "real"),
    _p("chunkkv", "ChunkKVPress", "wrapper", "real"),
    _p("entropy_gated_chunkkv", "EntropyGatedChunkKVPress", "wrapper", "real"),
    _p("key_rerotation", "KeyRerotationPress", "wrapper", "real"),
    _p("merging", "MergingPress", "wrapper", "real"),
    _p("per_layer", "PerLayerCompressionPress", "wrapper", "real", note="needs flash attention"),
    _p("dmspress", "DMSPress", "wrapper", "mask", takes_ratio=False,
       defaults=(("threshold", 0.5),),
       note="threshold + sliding-window proxy of DMS without trained evictors; NOT nvidia's DMS-8x; masks only"),
    # Decoding-phase presses: `decoding+knorm[compression_interval=512,target_size=2048]`.
    _p("decoding", "DecodingPress", "decoding", "real", takes_ratio=False,
       note="compresses every compression_interval steps to target_size tokens"),
    _p("prefill_decoding", "PrefillDecodingPress", "decoding", "real", phase="prefill+decoding",
       note="the scorer at @ratio on the prefill, plus DecodingPress during decoding"),
    _p("cam", "CAMPress", "decoding", "real", takes_ratio=False),
    _p("compression_ratio_decoding", "CompressionRatioDecodingPress", "decoding", "real", takes_ratio=False,
       not_runnable="needs logical position_ids inside the attention kwargs, which transformers 4.57 does not pass"),
    _p("composed", "ComposedPress", "press", "real", takes_ratio=False,
       not_runnable="a list of presses; compose in Python (ComposedPress([...]))"),
]}

# Aliases kvpress's evaluation registry uses for composite presses.
ALIASES = {
    "adakv_expected_attention": "adakv+expected_attention",
    "adakv_snapkv": "adakv+snapkv",
    "critical_snapkv": "critical+snapkv",
    "critical_expected_attention": "critical+expected_attention",
    "block_keydiff": "block+keydiff",
}


def kvpress_class(info: PressInfo):
    import kvpress

    return getattr(kvpress, info.class_name)


def build(chain: list[PressInfo], ratio: float | None, options: dict, model) -> object:
    """Build a press from a chain like [adakv, expected_attention]; `options` go to the outermost press."""
    *wrappers, base = chain
    if base.role in ("wrapper", "decoding"):
        raise ValueError(f"{base.name} wraps a scorer: write {base.name}+<scorer>, e.g. {base.name}+knorm")
    outer_options = options if not wrappers else {}
    press = _construct(base, ratio if base.takes_ratio else None, outer_options, model)
    for i, wrapper in enumerate(reversed(wrappers)):
        is_outer = i == len(wrappers) - 1
        press = _wrap(wrapper, press, ratio, options if is_outer else {}, model)
    return press


def _construct(info: PressInfo, ratio: float | None, options: dict, model):
    kwargs = dict(info.defaults)
    if ratio is not None:
        kwargs[info.ratio_field] = ratio
    kwargs.update(options)
    return kvpress_class(info)(**kwargs)


def _wrap(info: PressInfo, inner, ratio: float | None, options: dict, model):
    cls = kvpress_class(info)
    kwargs = dict(info.defaults)
    kwargs.update(options)
    if info.name == "per_layer":
        kwargs.setdefault("compression_ratios", [ratio or 0.0] * model.config.num_hidden_layers)
    if info.name == "prefill_decoding":
        decoding = kvpress_class(PRESSES["decoding"])(base_press=type(inner)(), **kwargs)
        return cls(prefilling_press=inner, decoding_press=decoding)
    if info.role == "decoding":
        return cls(base_press=inner, **kwargs)
    return cls(inner, **kwargs)


def exported_press_classes() -> list[str]:
    """Names of the press classes kvpress exports (the registry must cover each one)."""
    import kvpress

    skip = {"BasePress", "ScorerPress", "KVPressTextGenerationPipeline"}
    return [n for n in kvpress.__all__ if n.endswith("Press") and n not in skip]


Builder = Callable[[object], object]
