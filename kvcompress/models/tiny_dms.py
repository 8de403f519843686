"""The tiny DMS fixture: a local model folder that loads like nvidia/Qwen3-8B-DMS-8x, through trust_remote_code.

`write_folder` writes config.json (carrying `dms_window_size` and an `auto_map`, and, like DMS-8x's, no
pad_token_id), the remote-code files from kvcompress/tiny_dms_remote/ (kvcompress's own code: a Qwen3 with a paged
DMS-style cache), the tiny Qwen3's weights (the very weights `models.load("tiny")` builds with the same seed) and
its byte tokenizer. So the tiny vanilla model and the tiny DMS model differ only in the cache and its eviction.

Eviction is a fixed rule so every live count is known in advance: kv head h keeps one token in keep_every[h] once the
token has left the last `window` tokens (DMS keeps the window whole). After n tokens, head h holds
    min(n, window) + ceil(max(0, n - window) / keep_every[h])
entries (see `expected_live_tokens`). `--dms-model tiny-dms` (and test_dms_inference.py --preset tiny) use it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from kvcompress import assets
from kvcompress.models import tiny

REMOTE_CODE = Path(__file__).with_name("tiny_dms_remote")
REMOTE_FILES = ("configuration_qwen3_dms.py", "modeling_qwen3_dms.py", "dms_cache.py")
AUTO_MAP = {"AutoConfig": "configuration_qwen3_dms.Qwen3Config",
            "AutoModelForCausalLM": "modeling_qwen3_dms.Qwen3ForCausalLM"}
# DMS-8x's modeling code imports flash-attn at module level; the `import_flash_attn` variant does the same.
FLASH_IMPORT = "from flash_attn import flash_attn_with_kvcache  # noqa: F401  (as DMS-8x's dms_attention.py)\n"


@dataclass(frozen=True)
class FixtureSpec:
    window: int = 64
    keep_every: tuple[int, ...] = (2, 4)  # one per kv head of the tiny Qwen3 (2 kv heads)
    block_size: int = 16
    initial_tokens: int = 128  # pool size at first use, per (batch x kv head)
    seed: int = 0  # the tiny Qwen3's weight seed (models.load(tiny, seed=...))
    import_flash_attn: bool = False

    def digest(self) -> str:
        """Changes whenever the folder would: the spec, the remote code, the tiny Qwen3's config and the libraries
        whose initialisation draws its weights."""
        code = b"".join((REMOTE_CODE / name).read_bytes() for name in REMOTE_FILES)
        config = _vanilla_config(tiny.build_byte_tokenizer()).to_json_string()
        versions = f"{torch.__version__} {transformers.__version__}"
        return hashlib.sha256(json.dumps(asdict(self)).encode() + code + config.encode() + versions.encode()
                              ).hexdigest()[:12]


def expected_live_tokens(n: int, spec: FixtureSpec) -> list[int]:
    """Live entries per kv head after n tokens, from the eviction rule alone."""
    return [min(n, spec.window) + math.ceil(max(0, n - spec.window) / k) for k in spec.keep_every]


def write_folder(folder: Path, spec: FixtureSpec = FixtureSpec()) -> Path:
    """Write the fixture into `folder` (replaced atomically, so concurrent writers never see half a folder)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        _write(tmp, spec)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "model.safetensors").exists():  # not just another process finishing the same folder first
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write(folder: Path, spec: FixtureSpec) -> None:
    tokenizer = tiny.build_byte_tokenizer()
    config = _vanilla_config(tokenizer)
    if len(spec.keep_every) != config.num_key_value_heads:
        raise ValueError(f"keep_every needs {config.num_key_value_heads} entries (one per kv head)")
    torch.manual_seed(spec.seed)  # the same draws as models.load(tiny, seed=spec.seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(_dms_config(config.to_dict(), spec), indent=1) + "\n")
    for name in REMOTE_FILES:
        text = (REMOTE_CODE / name).read_text()
        if spec.import_flash_attn and name.startswith("modeling_"):
            text = FLASH_IMPORT + text
        (folder / name).write_text(text)


def _vanilla_config(tokenizer):
    return tiny.tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)


def _dms_config(vanilla: dict, spec: FixtureSpec) -> dict:
    config = {k: v for k, v in vanilla.items() if not k.startswith("_")}
    config.update(architectures=["Qwen3ForCausalLM"], auto_map=AUTO_MAP, dms_window_size=spec.window,
                  dms_block_size=spec.block_size, dms_initial_tokens=spec.initial_tokens,
                  tiny_dms_keep_every=list(spec.keep_every))
    config.pop("pad_token_id", None)  # as DMS-8x's config.json
    return config


def cached_folder(seed: int = 0) -> Path:
    """The default fixture, built once per seed and code version under the kvcompress cache."""
    spec = FixtureSpec(seed=seed)
    # The folder name is also transformers' module name for the remote code: one per code version.
    # Verified at each use: a truncated file is rebuilt, not loaded (a truncated model.safetensors killed the DMS
    # child with no message)
    return assets.cached_folder(f"tiny-dms-{spec.digest()}", lambda folder: _write(folder, spec))
