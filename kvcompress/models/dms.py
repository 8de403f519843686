"""nvidia/Qwen3-8B-DMS-8x through its remote code (method dms-8x-remote; the native method dms-8x loads the
checkpoint with transformers' Qwen3 class instead, models.load_dms_native): its sharp edges, each handled here (tests/test_dms.py exercises each on CPU through the
tiny DMS fixture, kvcompress/tiny_dms.py, which is loaded through the same trust_remote_code path).

- Its remote code needs transformers==4.57.3 exactly and imports flash-attn at import time: both are checked
  before anything is loaded, and an ImportError raised while transformers vets the remote files is turned into
  one line that names the package and how to install it, never a stack trace from inside the remote module.
- Its repository has no tokenizer and its config no pad_token_id: the tokenizer is Qwen3-8B's, and
  config.pad_token_id is set from it (recorded in the notes).
- Its classes reuse transformers' names (Qwen3ForCausalLM), so a DMS checkpoint is recognised by its config
  (`dms_window_size`), never by class name; after loading, the config is checked again (trust_remote_code honoured).
- The revision is pinned (remote code runs on your machine); --dms-revision changes it for any Hub id.
- It is released in bfloat16 and its decode kernel (flash-attn, paged) needs a CUDA GPU: both are checked.
- `import kvpress` patches attention globally, so DMS runs in its own process (see isolated.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from kvcompress.errors import UserError
from kvcompress.models.loaded import LoadedModel, ModelSpec, checkpoint_tokenizer

DMS_HUB_ID = "nvidia/Qwen3-8B-DMS-8x"
REQUIRED_TRANSFORMERS = "4.57.3"
FLASH_HINT = "run `uv sync --extra flash` (builds flash-attn from source: needs nvcc and a CUDA GPU)"


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
        raise UserError(f"DMS-8x's remote code imports flash-attn, which is not installed: {FLASH_HINT}")


def load(spec, *, device: torch.device, dtype: torch.dtype, revision: str | None, folder: Path | None = None,
         weights: str = "pretrained"):
    """Load a DMS checkpoint (the official one, another Hub id, or a local folder such as the tiny fixture)."""
    model_id = str(folder or spec.hub_id)
    is_official = model_id == DMS_HUB_ID
    local = Path(model_id).is_dir()
    check_environment(require_flash=is_official)
    if is_official and device.type != "cuda":
        raise UserError("DMS-8x needs a CUDA GPU (its decode attention is flash-attn's paged kernel)")
    if is_official and dtype != torch.bfloat16:
        raise UserError(f"DMS-8x is released and run in bfloat16; --dtype {str(dtype).removeprefix('torch.')} "
                        "is not supported for it")
    revision = None if local else revision
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=True)
    except ImportError as exc:
        raise _import_error(model_id, exc) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load {model_id} (revision {revision or 'local'}): {_first_line(exc)}") from None
    if not hasattr(config, "dms_window_size"):
        raise UserError(f"{model_id} is not a DMS checkpoint (its config has no dms_window_size)")
    # the official repository ships no tokenizer: it is Qwen3-8B's; another checkpoint uses its own if it has one
    tokenizer, source = checkpoint_tokenizer(model_id, revision, ships_none=is_official)
    notes = [f"dms_window_size={config.dms_window_size}", f"revision={revision or 'local'}"]
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"{model_id}: tokenizer {source} has {len(tokenizer)} tokens, more than the model's "
                        f"vocab_size {config.vocab_size}")
    if getattr(config, "pad_token_id", None) is None:
        if tokenizer.pad_token_id is None:
            raise UserError(f"{model_id}: its config has no pad_token_id and tokenizer {source} has no pad token")
        config.pad_token_id = tokenizer.pad_token_id  # missing from DMS-8x's config.json; transformers reads it
        notes.append(f"pad_token_id={tokenizer.pad_token_id} set from the tokenizer (missing from config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, config=config, dtype=dtype,
                                                     attn_implementation="sdpa", trust_remote_code=True,
                                                     device_map=device)
    except ImportError as exc:
        raise _import_error(model_id, exc) from None
    except OSError as exc:
        raise UserError(f"cannot load {model_id} weights: {_first_line(exc)}") from None
    if not hasattr(model.config, "dms_window_size"):
        raise UserError(f"{model_id} loaded without its DMS config; was trust_remote_code honoured?")
    loaded_spec = ModelSpec(spec.name, spec.hub_id, spec.tokenizer_id, revision=revision, is_dms=True,
                            description=spec.description)
    return LoadedModel(model.eval(), tokenizer, loaded_spec, weights, device, dtype, "dms (remote code)",
                       tokenizer_source=source, notes=notes)


def _import_error(model_id: str, exc: ImportError) -> UserError:
    """transformers vets the remote files' imports before running them and raises ImportError naming what is missing."""
    text = str(exc)
    missing = "No module named" in text or "not found in your environment" in text
    if "flash_attn" in text or "flash-attn" in text:
        if missing:
            return UserError(f"{model_id}'s remote code imports flash-attn, which is not installed: {FLASH_HINT}")
        return UserError(f"flash-attn is installed but fails to import ({_first_line(exc)}); rebuild it for this "
                         "torch: `uv sync --extra flash --reinstall-package flash-attn`")
    if missing:
        return UserError(f"{model_id}'s remote code needs a package that is not installed: {_first_line(exc)}")
    return UserError(f"{model_id}'s remote code failed to import: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
