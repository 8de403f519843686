"""The pieces of the method grammar every family shares: lists of methods, ratios and `[name=value,...]` options."""

from __future__ import annotations

from kvcompress.errors import UserError


def split_top_level(text: str) -> list[str]:
    """Split on commas outside [...] so options can hold commas."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_ratio(raw: str, text: str) -> float:
    try:
        ratio = float(raw)
    except ValueError:
        raise UserError(f"ratio in {text!r} is not a number") from None
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"ratio in {text!r} must be in [0, 1) (the fraction of KV entries evicted), got {ratio:g}")
    return ratio


def parse_options(raw: str, text: str) -> dict:
    options = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        if "=" not in item:
            raise UserError(f"option {item!r} in {text!r} must look like name=value")
        key, value = (s.strip() for s in item.split("=", 1))
        options[key] = _literal(value)
    return options


def _literal(value: str):
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value
