"""A quantized KV cache's format, torch-free: `fp8`, `int4`, `int2` and their options, the split of a sequence into
its quantized part and its bf16 window, and the exact bytes it takes (the formula `check` verifies the cache's own
tensors against).

- `fp8`: e4m3 (max 448), every token quantized as it is stored, no window. Scales as vLLM's `--kv-cache-dtype fp8`:
  one float32 scale for K and one for V per layer (vLLM's per-tensor k_scale / v_scale), held per sequence and set
  from that sequence's prefill at the end of the layer's prefill (absmax / 448, as vLLM's calculate_kv_scales does
  from the first forward); later tokens reuse it and saturate at +-448 x scale. `fp8[scale=head]`: one per kv head.
- `int4`, `int2`: KIVI's asymmetric min/max quantization. Keys per channel, in groups of `group` tokens along the
  sequence; values per token, in groups of `group` channels; a float16 scale and a float16 zero point (the group's
  minimum) per group; codes packed 2 (int4) or 4 (int2) to a byte. The most recent `window` tokens stay bf16 until
  a full group of older tokens has gathered: after n tokens, Q = floor(max(0, n - window) / group) x group tokens
  are quantized, n - Q stay bf16 (KIVI's residual, here never fewer than `window` once n >= window).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvcompress.errors import UserError
from kvcompress.methods.grammar import parse_options

FORMATS = ("fp8", "int4", "int2")
FP8_MAX = 448.0  # e4m3fn's largest finite value
SCALE_BYTES = {"fp8": 4, "int4": 2, "int2": 2}  # fp8: float32 per-layer scales; KIVI: float16 scale and zero point
_DEFAULTS = {"fp8": {"scale": "layer"}, "int4": {"group": 32, "window": 128}, "int2": {"group": 32, "window": 128}}


@dataclass(frozen=True)
class QuantSpec:
    format: str  # "fp8" | "int4" | "int2"
    group: int = 1  # int: tokens per key group and channels per value group
    window: int = 0  # int: recent tokens kept bf16
    scale: str = "layer"  # fp8: "layer" | "head"

    @property
    def bits(self) -> int:
        return {"fp8": 8, "int4": 4, "int2": 2}[self.format]

    @property
    def label(self) -> str:
        if self.format == "fp8":
            return "fp8" if self.scale == "layer" else f"fp8[scale={self.scale}]"
        return f"{self.format}[group={self.group},window={self.window}]"

    def quantized_tokens(self, n: int) -> int:
        """Tokens of a sequence of `n` held quantized (the rest, the most recent, stay bf16)."""
        if self.format == "fp8":
            return n
        return max(0, n - self.window) // self.group * self.group

    def bytes_parts(self, rows: int, heads: int, head_dim: int, n: int, window_itemsize: int = 2) -> dict:
        """Exact bytes of one layer's K and V for `rows` sequences of `n` tokens each, by part: quantized codes,
        scales (+ zero points), the bf16 window."""
        q = self.quantized_tokens(n)
        data = 2 * rows * heads * q * head_dim * self.bits // 8
        if self.format == "fp8":
            scales = 2 * rows * (heads if self.scale == "head" else 1) * SCALE_BYTES["fp8"]
        else:
            key_groups = q // self.group * head_dim  # per channel, groups along tokens
            value_groups = q * (head_dim // self.group)  # per token, groups along channels
            scales = rows * heads * (key_groups + value_groups) * 2 * SCALE_BYTES[self.format]  # scale + zero
        window = 2 * rows * heads * (n - q) * head_dim * window_itemsize
        return {"data": data, "scales": scales, "window": window}

    def problem_with(self, head_dim: int) -> str | None:
        """Why this format cannot hold a model of this head size."""
        if self.format != "fp8" and head_dim % self.group:
            return f"{self.label}: head_dim {head_dim} is not a multiple of group {self.group} (values group channels)"
        return None


def spec_from_label(label: str) -> QuantSpec:
    """A record's kv_quant back into its format (QuantSpec.label's inverse)."""
    fmt, _, options = label.partition("[")
    return parse_spec(fmt, parse_options(options.rstrip("]"), label), label)


def parse_spec(fmt: str, options: dict, text: str) -> QuantSpec:
    """A format and its `[name=value,...]` options; a bad one is the grammar's one-line error."""
    accepted = _DEFAULTS[fmt]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(f"{k}=<{'layer|head' if k == 'scale' else 'int'}>" for k in accepted)
        raise UserError(f"{fmt} has no option {unknown[0]!r} in {text!r}; it takes: {takes}")
    values = {**accepted, **options}
    if fmt == "fp8":
        if values["scale"] not in ("layer", "head"):
            raise UserError(f"fp8's scale in {text!r} must be layer or head (one float32 scale per layer or kv head)")
        return QuantSpec("fp8", scale=values["scale"])
    group, window = values["group"], values["window"]
    for name, value, low in (("group", group, 1), ("window", window, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"{name} in {text!r} must be an integer >= {low}, got {value!r}")
    if group & (group - 1):
        raise UserError(f"group in {text!r} must be a power of two (it divides the head size), got {group}")
    return QuantSpec(fmt, group=group, window=window)
