"""nvidia/Qwen3-8B-DMS-8x: its sharp edges, each handled here.

- Its remote code needs transformers==4.57.3 exactly and imports flash-attn at import time: both are checked
  first and reported in one line, never as a stack trace from inside the remote module.
- Its repository has no tokenizer and its config no pad_token_id: the tokenizer is Qwen3-8B's, and
  config.pad_token_id is set from it.
- Its classes reuse transformers' names (Qwen3ForCausalLM), so a DMS checkpoint is recognised by its config
  (`dms_window_size`), never by class name.
- The revision is pinned (remote code runs on your machine).
- `import kvpress` patches attention globally, so DMS runs in its own process (see isolated.py).
"""

from __future__ import annotations

import importlib.util

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from kvcompress.errors import UserError

DMS_HUB_ID = "nvidia/Qwen3-8B-DMS-8x"
REQUIRED_TRANSFORMERS = "4.57.3"


def config_is_dms(model_id: str | None, revision: str | None = None) -> bool:
    """Read config.json only (no remote code runs) and look for DMS's own key."""
    if not model_id:
        return False
    try:
        config, _ = PretrainedConfig.get_config_dict(model_id, revision=revision)
    except (OSError, ValueError):
        return False
    return "dms_window_size" in config


def check_environment(require_flash: bool = True) -> None:
    if transformers.__version__ != REQUIRED_TRANSFORMERS:
        raise UserError(f"DMS-8x's remote code needs transformers=={REQUIRED_TRANSFORMERS} (found "
                        f"{transformers.__version__}); run `uv sync` to restore the locked version")
    if require_flash and importlib.util.find_spec("flash_attn") is None:
        raise UserError("DMS-8x's remote code imports flash-attn, which is not installed: run `uv sync --extra flash` "
                        "(builds from source: needs nvcc and a CUDA GPU)")


def load(spec, *, device: torch.device, dtype: torch.dtype, revision: str | None):
    from kvcompress.models import LoadedModel, qwen3_tokenizer

    model_id = spec.hub_id
    is_official = model_id == DMS_HUB_ID
    check_environment(require_flash=is_official)
    if is_official and device.type != "cuda":
        raise UserError("DMS-8x needs a CUDA GPU (its decode attention is flash-attn's paged kernel)")
    revision = revision if is_official else None
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=True)
    except OSError as exc:
        raise UserError(f"cannot load {model_id} (revision {revision or 'local'}): {_first_line(exc)}") from None
    if not hasattr(config, "dms_window_size"):
        raise UserError(f"{model_id} is not a DMS checkpoint (its config has no dms_window_size)")
    # The official repository ships no tokenizer: it is Qwen3-8B's. A local folder may carry its own.
    tokenizer, source = qwen3_tokenizer("Qwen/Qwen3-8B") if is_official else _tokenizer(model_id, qwen3_tokenizer)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id  # missing from DMS-8x's config.json; transformers needs it
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, config=config, dtype=dtype,
                                                     trust_remote_code=True, device_map=device)
    except ModuleNotFoundError as exc:
        if "flash_attn" in str(exc):
            raise UserError("DMS-8x's remote code imports flash-attn, which is not installed: run "
                            "`uv sync --extra flash` (needs nvcc and a CUDA GPU)") from None
        raise
    except OSError as exc:
        raise UserError(f"cannot load {model_id} weights: {_first_line(exc)}") from None
    if not hasattr(model.config, "dms_window_size"):
        raise UserError(f"{model_id} loaded without its DMS config; was trust_remote_code honoured?")
    from kvcompress.models import ModelSpec

    loaded_spec = ModelSpec(spec.name, model_id, spec.tokenizer_id, revision=revision, is_dms=True,
                            description=spec.description)
    return LoadedModel(model.eval(), tokenizer, loaded_spec, "pretrained", device, dtype,
                       getattr(model.config, "_attn_implementation", "remote"), tokenizer_source=source,
                       notes=[f"dms_window_size={config.dms_window_size}", f"revision={revision or 'local'}"])


def _tokenizer(model_id: str, qwen3_tokenizer):
    try:
        return AutoTokenizer.from_pretrained(model_id), model_id
    except (OSError, ValueError, TypeError):
        return qwen3_tokenizer("Qwen/Qwen3-8B")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
