"""Whether the Hugging Face Hub can be reached: one quick probe per process (HF_HUB_OFFLINE=1 says no at once)."""

from __future__ import annotations

import os
import urllib.request
from functools import lru_cache


def offline_by_choice() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


@lru_cache(maxsize=1)
def hub_available() -> bool:
    if offline_by_choice():
        return False
    try:
        urllib.request.urlopen(os.environ.get("HF_ENDPOINT", "https://huggingface.co") + "/api/models?limit=1",
                               timeout=5)
        return True
    except (OSError, ValueError):
        return False


def go_offline() -> None:
    """Cached files only, from now on: the Hub is unreachable, and every download attempt would retry for minutes.
    huggingface_hub and transformers read the variable when imported, so modules already loaded are told too."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "transformers.utils.hub" in sys.modules:
        sys.modules["transformers.utils.hub"]._is_offline_mode = True
