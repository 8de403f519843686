"""`vanilla`: no compression, the reference every other method is compared with."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvcompress.errors import UserError
from kvcompress.methods.base import Method

NAMES = ("vanilla", "none", "no_press")


@dataclass
class Vanilla(Method):
    """The plain cache: a prefill, then transformers' (or the fast engine's) decode, nothing evicted."""

    @property
    def joins_shared_prefill(self) -> bool:
        return True  # its cache is the shared prefill's own


def parse(text: str) -> Method | None:
    if text in NAMES:
        return Vanilla("vanilla", compression_ratio=0.0)
    base_name = re.split(r"[@\[]", text, maxsplit=1)[0]
    if base_name in NAMES:
        raise UserError(f"{base_name} takes no ratio or options: write {base_name!r} alone (in {text!r})")
    return None
