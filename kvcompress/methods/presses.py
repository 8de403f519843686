"""Every press kvpress 0.5.5 exports, under the short names kvpress's own evaluation uses.

One row per press: how to build it at a ratio, which phase it acts in, what it does to memory, and what it needs.
`memory` is kvpress's documented behaviour, checked against its source; the tests check it against bytes measured
from the cache:
- real:   the K/V tensors get shorter (memory is freed)
- uneven: real, but layers keep different lengths (PyramidKV, SimLayerKV, structured KVCompose)
- mask:   tensors keep full length; evicted entries are hidden from attention (no memory saved, decode slightly slower)
- none:   no change in size (ThinK zeroes key channels)
kvpress is imported lazily: DMS-8x must run in a process where kvpress never patched attention.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import types
from dataclasses import dataclass

ROLES = ("scorer", "press", "wrapper", "decoding")


@dataclass(frozen=True)
class PressInfo:
    name: str
    class_name: str
    role: str  # "scorer" (a ScorerPress, can be wrapped), "press" (stands alone), "wrapper", "decoding" (wrap a scorer)
    phase: str  # "prefill", "decoding" or "prefill+decoding"
    memory: str  # "real", "uneven", "mask" or "none"
    takes_ratio: bool = True  # False: the press sizes itself from its own arguments (run once, not per ratio)
    owns_ratio: bool = False  # wrappers only: the ratio goes to the wrapper, not to the scorer inside
    needs_hub: str = ""  # what it downloads at run time ("" = nothing)
    attention: str = "any"  # "any", "eager" (needs attention weights) or "not eager" (its masks need a patched kernel)
    not_runnable: str = ""  # why this harness cannot run it ("" = it can)
    ratio_field: str = "compression_ratio"  # the constructor argument @ratio sets
    defaults: tuple = ()  # extra constructor arguments, as (name, value) pairs
    inner: str = ""  # wrappers: the scorer a bare `<wrapper>` runs over (kvpress's evaluation pairing where it has one)
    required: tuple = ()  # options without a usable default, e.g. dmspress's threshold
    memory_if: tuple = ()  # (option, value, memory) when an option changes the memory behaviour
    # why it needs a prefill of its own ("" = it compresses each layer from that layer's inputs alone, after the
    # layer's attention, so one plain prefill can serve it and others: engine/shared_prefill.py)
    own_prefill: str = ""
    # its score() reads neither its ratio nor a fresh random draw: in a shared prefill one scoring per layer serves
    # every instance that differs from it only in ratio (shared_score_key)
    ratio_free_score: bool = False
    note: str = ""

    @property
    def needs_eager(self) -> bool:
        return self.attention == "eager"

    @property
    def ratio_sets(self) -> str:
        """What `@ratio` means for this press, in a word (for --list)."""
        if not self.takes_ratio:
            return "no (own size)"
        return {"key_channel_compression_ratio": "key channels", "head_compression_ratio": "heads",
                "compression_ratios": "every layer", "target_compression_ratio": "tokens seen"}.get(
            self.ratio_field, "yes" if self.role in ("scorer", "press") or self.owns_ratio else "scorer's")


def _p(name, cls, role, memory, **kw) -> PressInfo:
    phase = kw.pop("phase", "decoding" if role == "decoding" else "prefill")
    return PressInfo(name, cls, role, phase, memory, **kw)


_MASK_NOTE = "hides evicted entries by masking: the tensors keep full length (no memory saved)"

PRESSES: dict[str, PressInfo] = {p.name: p for p in [
    # Scorers: score every (head, token); the lowest are evicted, the same count in every head and layer.
    _p("random", "RandomPress", "scorer", "real", ratio_free_score=True, defaults=(("seed", 0),),
       note="baseline; seeded so runs repeat"),
    _p("knorm", "KnormPress", "scorer", "real", ratio_free_score=True),
    _p("snapkv", "SnapKVPress", "scorer", "real", ratio_free_score=True),
    _p("expected_attention", "ExpectedAttentionPress", "scorer", "real", ratio_free_score=True,
       note="uniform per head; kvpress's leaderboard 'expected_attention' is adakv+expected_attention (masked)"),
    _p("expected_attention_stats", "ExpectedAttentionStatsPress", "scorer", "real",
       needs_hub="query statistics, or kmfoda/booksum",
       note="query statistics from the Hub (alessiodevoto/exp_att_stats_*), or computed over kmfoda/booksum"),
    _p("streaming_llm", "StreamingLLMPress", "scorer", "real"),
    _p("tova", "TOVAPress", "scorer", "real", ratio_free_score=True),
    _p("observed_attention", "ObservedAttentionPress", "scorer", "real", ratio_free_score=True, attention="eager",
       note="H2O-like; needs attention weights: run with --attn eager"),
    _p("qfilter", "QFilterPress", "scorer", "real", needs_hub="nthngdy/<model>_qfilt"),
    _p("pyramidkv", "PyramidKVPress", "scorer", "uneven", note="per-layer budgets: layers keep different lengths"),
    _p("lagkv", "LagKVPress", "scorer", "real"),
    _p("keydiff", "KeyDiffPress", "scorer", "real", ratio_free_score=True),
    _p("non_causal_attn", "NonCausalAttnPress", "scorer", "real"),
    _p("leverage", "LeverageScorePress", "scorer", "real"),
    _p("compactor", "CompactorPress", "scorer", "real"),
    _p("cur", "CURPress", "scorer", "real"),
    _p("cap", "CapPress", "scorer", "real"),
    _p("kvzap", "KVzapPress", "scorer", "real", needs_hub="nvidia/KVzap-<type>-<model>",
       note="meant to be wrapped in dmspress (kvpress's kvzap_mlp / kvzap_linear)"),
    # Stand-alone presses with their own logic.
    _p("think", "ThinKPress", "press", "none", ratio_field="key_channel_compression_ratio",
       note="zeroes key channels: @ratio is the channel fraction; no sequence eviction, no memory saved"),
    _p("simlayerkv", "SimLayerKVPress", "press", "uneven", takes_ratio=False,
       note="'lazy' layers keep only initial + recent tokens; others keep all; the ratio is measured, not set"),
    _p("duo_attention", "DuoAttentionPress", "press", "mask", ratio_field="head_compression_ratio",
       attention="not eager", needs_hub="GitHub head patterns or booksum",
       note="@ratio is the fraction of streaming heads; patterns exist for 6 non-Qwen models (else on-the-fly "
            "scoring over kmfoda/booksum); " + _MASK_NOTE),
    _p("finch", "FinchPress", "press", "real",
       not_runnable="query-aware only: needs a delimiter token added to the tokenizer and embeddings "
                    "(update_model_and_tokenizer) between context and question",
       own_prefill="query-aware: the question is prefilled with the context"),
    _p("kvzip", "KVzipPress", "press", "mask", attention="not eager",
       own_prefill="runs its own context-reconstruction passes around the prefill",
       note="extra context-reconstruction passes (2-3x prefill); reloads the tokenizer by config.name_or_path"),
    _p("kvgrad", "KVgradPress", "press", "mask", attention="not eager",
       own_prefill="runs its own backward passes around the prefill",
       note="a backward pass per chunk (3-4x prefill); reloads the tokenizer by config.name_or_path"),
    _p("restorekv", "RestoreKVPress", "press", "mask", attention="not eager",
       needs_hub="higokri/RestoreKV-* adapters", own_prefill="its own forward hook and adapters around the prefill"),
    _p("fastkvzip", "FastKVzipPress", "press", "mask", attention="not eager",
       needs_hub="Jang-Hyun/Fast-KVzip gates", own_prefill="its own hooks and gates around the prefill"),
    _p("kvcompose", "KVComposePress", "press", "uneven", memory_if=(("structured", False, "mask"),),
       own_prefill="runs its own eager pass over the context after the prefill",
       note="runs its own eager pass over the context again (KV about 2x during prefill); per-layer lengths; "
            "structured=false masks instead"),
    # Wrappers: `wrapper+scorer@ratio`, e.g. adakv+expected_attention@0.5. `inner` is what a bare wrapper runs over.
    _p("adakv", "AdaKVPress", "wrapper", "mask", attention="not eager", inner="expected_attention",
       note="head-wise budgets; " + _MASK_NOTE),
    _p("critical_adakv", "CriticalAdaKVPress", "wrapper", "mask", attention="not eager", inner="snapkv",
       note="CriticalKV scores with AdaKV budgets; " + _MASK_NOTE),
    _p("critical", "CriticalKVPress", "wrapper", "real", inner="snapkv",
       note="rescales the scorer by |W_o v|, two-stage selection"),
    _p("block", "BlockPress", "wrapper", "real", inner="keydiff", note="block-wise iterative top-k (KeyDiff paper)"),
    _p("chunk", "ChunkPress", "wrapper", "real", inner="knorm", note="scores each 1024-token chunk independently"),
    _p("chunkkv", "ChunkKVPress", "wrapper", "real", inner="snapkv",
       note="keeps whole 20-token chunks, so the kept count rounds to chunks"),
    _p("entropy_gated_chunkkv", "EntropyGatedChunkKVPress", "wrapper", "real", inner="snapkv"),
    _p("key_rerotation", "KeyRerotationPress", "wrapper", "real", inner="streaming_llm",
       note="re-applies RoPE so kept keys sit at contiguous positions"),
    _p("merging", "MergingPress", "wrapper", "real", inner="snapkv",
       note="folds evicted values into the most similar kept ones"),
    _p("per_layer", "PerLayerCompressionPress", "wrapper", "real", owns_ratio=True, ratio_field="compression_ratios",
       inner="knorm", note="the same ratio in every layer here (a per-layer list needs Python); kvpress warns "
                           "it is meant for flash attention"),
    _p("lukv", "LUKVPress", "wrapper", "mask", owns_ratio=True, attention="not eager", inner="expected_attention",
       needs_hub="GitHub budget curve",
       note="curves exist only for Llama-3.1-8B-Instruct + expected_attention; " + _MASK_NOTE),
    _p("composed", "ComposedPress", "wrapper", "real", inner="snapkv",
       defaults=(("key_channel_compression_ratio", 0.5),),
       note="ComposedPress([<scorer>@ratio, ThinKPress(key_channel_compression_ratio)]), kvpress's snap_think"),
    _p("dmspress", "DMSPress", "wrapper", "mask", takes_ratio=False, attention="not eager", inner="random",
       required=("threshold",),
       own_prefill="its hook keeps state across calls (scores buffered between forwards)",
       note="threshold + sliding-window PROXY of DMS, no trained evictors; NOT nvidia's DMS-8x; decoding=true "
            "evicts during decoding too; options threshold, sliding_window_size, decoding; " + _MASK_NOTE),
    # Decoding-phase presses: `decoding+knorm[compression_interval=512,target_size=2048]`.
    _p("decoding", "DecodingPress", "decoding", "real", takes_ratio=False, inner="knorm",
       note="every compression_interval decode steps, prunes the cache to target_size tokens"),
    _p("prefill_decoding", "PrefillDecodingPress", "decoding", "real", phase="prefill+decoding", inner="knorm",
       note="the scorer at @ratio on the prefill, then DecodingPress(compression_interval, target_size)"),
    _p("cam", "CAMPress", "decoding", "real", takes_ratio=False, inner="knorm",
       note="DecodingPress that merges evicted values into neighbours (Cache Merging)"),
    _p("compression_ratio_decoding", "CompressionRatioDecodingPress", "decoding", "real", owns_ratio=True,
       ratio_field="target_compression_ratio", inner="knorm",
       note="during decoding keeps (1 - @ratio) of all tokens seen so far; the prefill is not compressed"),
]}

# kvpress evaluation names for compositions (evaluation/evaluate_registry.py), as chains of this grammar.
ALIASES = {
    "adakv_expected_attention": "adakv+expected_attention",
    "adakv_snapkv": "adakv+snapkv",
    "adakv_compactor": "adakv+compactor",
    "critical_snapkv": "critical+snapkv",
    "critical_expected_attention": "critical+expected_attention",
    "critical_adakv_snapkv": "critical_adakv+snapkv",
    "critical_adakv_expected_attention": "critical_adakv+expected_attention",
    "block_keydiff": "block+keydiff",
    "snap_think": "composed+snapkv",
    "kvzap_mlp": "dmspress+kvzap",
    "decoding_knorm": "decoding+knorm",
    "decoding_streaming_llm": "decoding+streaming_llm",
    "decoding_tova": "decoding+tova",
    "decoding_keydiff": "decoding+keydiff",
    "decoding_adakv_snapkv": "decoding+adakv+snapkv",
    "cam_knorm": "cam+knorm",
    "cam_streaming_llm": "cam+streaming_llm",
    "cam_tova": "cam+tova",
    "cam_adakv_snapkv": "cam+adakv+snapkv",
}

# Options a wrapper accepts beyond its constructor's (they configure the press it adds).
_EXTRA_OPTIONS = {"composed": {"key_channel_compression_ratio"}}
_INNER_FIELD = {"decoding": "base_press"}  # by role; every other wrapper takes `press`


def kvpress_class(info: PressInfo):
    import kvpress

    return getattr(kvpress, info.class_name)


def accepted_options(info: PressInfo) -> set[str]:
    """Constructor arguments a press accepts as [name=value] options (the press it wraps excluded)."""
    names = set(inspect.signature(kvpress_class(info)).parameters) | _EXTRA_OPTIONS.get(info.name, set())
    return names - {"press", "base_press", "presses", "prefilling_press", "decoding_press", "self"} | (
        {"compression_interval", "target_size", "hidden_states_buffer_size"} if info.name == "prefill_decoding"
        else set())


def option_problem(chain: list[PressInfo], ratio: float | None, options: dict) -> str | None:
    """Why these [name=value] options cannot build this chain (None: they can), found before any model loads: a value
    of another type than the constructor's default (window_size=abc), then what kvpress's own constructor refuses
    (compression_interval=0 fails its assert)."""
    cls = kvpress_class(chain[0])
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    for name, value in options.items():
        default = fields[name].default if name in fields else None
        if default is dataclasses.MISSING or default is None:  # no default to compare with: its annotation
            numeric = name in fields and any(t in str(fields[name].type) for t in ("float", "int"))
            if numeric and isinstance(value, str):
                return f"{name}={value!r} is not a number"
            continue
        wanted = (int, float) if type(default) is float else type(default)
        if not isinstance(value, wanted) or isinstance(value, bool) and type(default) is not bool:
            kind = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(
                type(default), type(default).__name__)
            return f"{name}={value!r} is not {kind} (default {default!r})"
    try:
        build(chain, ratio, options, _ONE_LAYER)
    except (AssertionError, ValueError, TypeError) as exc:
        return f"{chain[0].class_name} refuses {options}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


# build() reads the model only for per_layer's list of ratios (one per layer): one layer is enough to check options
_ONE_LAYER = types.SimpleNamespace(config=types.SimpleNamespace(num_hidden_layers=1))


def build(chain: list[PressInfo], ratio: float | None, options: dict, model) -> object:
    """Build a press from a chain like [adakv, expected_attention]; `options` go to the outermost press."""
    *wrappers, base = chain
    if base.role in ("wrapper", "decoding"):
        raise ValueError(f"{base.name} wraps a scorer: write {base.name}+<scorer>, e.g. {base.name}+knorm")
    owner = next((w for w in wrappers if w.owns_ratio), None)
    base_ratio = ratio if owner is None and base.takes_ratio else None
    press = _construct(base, base_ratio, {} if wrappers else options)
    for i, wrapper in enumerate(reversed(wrappers)):
        is_outer = i == len(wrappers) - 1
        press = _wrap(wrapper, press, ratio if wrapper is owner else None, options if is_outer else {}, model)
    return press


def _construct(info: PressInfo, ratio: float | None, options: dict):
    kwargs = dict(info.defaults)
    if ratio is not None:
        kwargs[info.ratio_field] = ratio
    kwargs.update(options)
    return kvpress_class(info)(**kwargs)


def _wrap(info: PressInfo, inner, ratio: float | None, options: dict, model):
    cls = kvpress_class(info)
    kwargs = dict(info.defaults)
    kwargs.update(options)
    if ratio is not None:
        kwargs[info.ratio_field] = [ratio] * model.config.num_hidden_layers if info.name == "per_layer" else ratio
    if info.name == "prefill_decoding":
        scorer = copy.deepcopy(inner)
        scorer.compression_ratio = 0.0  # DecodingPress sets its own ratio at each compression
        decoding = kvpress_class(PRESSES["decoding"])(base_press=scorer, **kwargs)
        return cls(prefilling_press=inner, decoding_press=decoding)
    if info.name == "composed":
        channels = kwargs.pop("key_channel_compression_ratio")
        think = kvpress_class(PRESSES["think"])(key_channel_compression_ratio=channels)
        return cls([inner, think], **kwargs)
    return cls(**{_INNER_FIELD.get(info.role, "press"): inner}, **kwargs)


def exported_press_classes() -> list[str]:
    """Names of the press classes kvpress exports (the registry must cover each one)."""
    import kvpress

    skip = {"BasePress", "ScorerPress", "KVPressTextGenerationPipeline"}
    return [n for n in kvpress.__all__ if n.endswith("Press") and n not in skip]


def shared_score_key(press) -> tuple | None:
    """A key equal for two presses whose compression of a layer differs only in how many of the same scores they
    keep: a scorer used on its own (ScorerPress.compress calls score() once on the layer's full keys), registered
    `ratio_free_score`, with equal options apart from its ratio. None for any other press (a wrapper may call
    score() on slices, StreamingLLM's score reads its ratio, RandomPress without a seed draws anew)."""
    import kvpress

    info = next((p for p in PRESSES.values() if p.class_name == type(press).__name__), None)
    if info is None or not info.ratio_free_score or type(press).compress is not kvpress.ScorerPress.compress:
        return None
    options = tuple((f.name, repr(getattr(press, f.name))) for f in dataclasses.fields(press)
                    if f.name != "compression_ratio")
    if info.name == "random" and getattr(press, "seed", None) is None:
        return None
    return (type(press).__name__, options)


def reads_layer_only(press) -> bool:
    """The press leaves the full layer it is handed as it found it, so a shared prefill can hand it the layer's own
    tensors instead of a copy: no press at all, or a scorer compressed by kvpress's ScorerPress.compress (score()
    reads the keys, topk + gather make new tensors). Any other press gets a copy (ThinKPress zeroes key channels
    in place; a wrapper may do anything)."""
    if press is None:
        return True
    import kvpress

    return isinstance(press, kvpress.ScorerPress) and type(press).compress is kvpress.ScorerPress.compress


def question_starts_at_cache_length(press) -> bool:
    """kvpress's pipeline starts the question at the compressed cache's length, not the context's, after a press
    that rerotates the kept keys to positions 0..n-1 (KeyRerotationPress, FinchPress(rerotate_keys=True)) or
    RestoreKVPress; the same outermost-press rule here, so both put the question at the same positions."""
    if press is None:
        return False
    import kvpress

    return (isinstance(press, (kvpress.KeyRerotationPress, kvpress.RestoreKVPress))
            or (isinstance(press, kvpress.FinchPress) and press.rerotate_keys))
