"""The quantizers of a quantized KV cache (formats in methods/quant_spec.py): fp8 e4m3 with a float32 scale, and
KIVI-style asymmetric int4 / int2 in groups (keys per channel along tokens, values per token along channels).

Tensors are (batch, kv heads, tokens, head_dim). Arithmetic is float32; scales and zero points are rounded to their
storage dtype before the codes are computed, so dequantization reproduces exactly what was stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcompress.methods.quant_spec import FP8_MAX

FP8 = torch.float8_e4m3fn


# --- fp8 -------------------------------------------------------------------------------------------------------------

def fp8_scale(x: torch.Tensor, per: str) -> torch.Tensor:
    """float32 scale(s) mapping x's absmax to 448: one per sequence ("layer", shape (B, 1, 1, 1)) or per kv head
    ("head", (B, H, 1, 1)). An all-zero slice gets scale 1."""
    dims = (1, 2, 3) if per == "layer" else (2, 3)
    amax = x.detach().abs().float().amax(dim=dims, keepdim=True)
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))


def fp8_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Codes x / scale rounded to e4m3 (round to nearest even); beyond +-448 saturates."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (codes.float() * scale).to(dtype)


# --- int4 / int2 (KIVI) ----------------------------------------------------------------------------------------------

@dataclass
class IntGroups:
    """Quantized tokens of K or V: codes packed along head_dim (8 / bits per byte), a float16 scale and zero point
    per group. along="tokens" (keys): groups of `group` tokens per channel, scale (B, H, Q / group, D);
    along="channels" (values): groups of `group` channels per token, scale (B, H, Q, D / group)."""
    codes: torch.Tensor  # uint8 (B, H, Q, D * bits / 8)
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group: int
    along: str

    @property
    def tokens(self) -> int:
        return self.codes.shape[2]

    @property
    def nbytes(self) -> tuple[int, int]:
        """(codes, scales + zero points)."""
        return self.codes.nbytes, self.scale.nbytes + self.zero.nbytes

    def cat(self, other: IntGroups) -> IntGroups:
        return IntGroups(torch.cat([self.codes, other.codes], 2), torch.cat([self.scale, other.scale], 2),
                         torch.cat([self.zero, other.zero], 2), self.bits, self.group, self.along)

    def rows(self, index) -> IntGroups:
        """The sequences `index` selects (a batch's rows)."""
        return IntGroups(self.codes[index], self.scale[index], self.zero[index], self.bits, self.group, self.along)


def int_quantize(x: torch.Tensor, bits: int, group: int, along: str) -> IntGroups:
    """Asymmetric min/max quantization of x (B, H, S, D) in groups; S must be a multiple of `group` along tokens, D
    along channels."""
    qmax = 2**bits - 1
    grouped = _grouped(x.float(), group, along)
    axis = -2 if along == "tokens" else -1
    low, high = grouped.amin(dim=axis), grouped.amax(dim=axis)
    scale = ((high - low) / qmax).to(torch.float16)
    zero = low.to(torch.float16)
    # broadcast over each group in the grouped view (the same element-wise arithmetic as expanding the scales to
    # the tensor's shape, without two full-size copies: a prefill's quantization is part of its TTFT)
    s32, z32 = scale.float().unsqueeze(axis), zero.float().unsqueeze(axis)
    codes = torch.round((grouped - z32) / torch.where(s32 > 0, s32, torch.ones_like(s32))).clamp_(0, qmax)
    return IntGroups(pack(codes.view(x.shape).to(torch.uint8), bits), scale, zero, bits, group, along)


def int_quantize_kv(k: torch.Tensor, v: torch.Tensor, bits: int, group: int) -> tuple[IntGroups, IntGroups]:
    """KIVI's pair: keys per channel in groups of tokens, values per token in groups of channels."""
    return int_quantize(k, bits, group, "tokens"), int_quantize(v, bits, group, "channels")


def int_dequantize(g: IntGroups, dtype=torch.float32) -> torch.Tensor:
    codes = unpack(g.codes, g.bits).float()
    return (codes * _expand(g.scale.float(), g.group, g.along) + _expand(g.zero.float(), g.group, g.along)).to(dtype)


def _grouped(x: torch.Tensor, group: int, along: str) -> torch.Tensor:
    b, h, s, d = x.shape
    if along == "tokens":
        return x.view(b, h, s // group, group, d)
    return x.view(b, h, s, d // group, group)


def _expand(per_group: torch.Tensor, group: int, along: str) -> torch.Tensor:
    """A per-group tensor repeated over its group's elements, in (B, H, S, D)."""
    if along == "tokens":
        return per_group.repeat_interleave(group, dim=2)
    return per_group.repeat_interleave(group, dim=3)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2**bits along the last dim, 8 / bits to a byte (the first in the low bits)."""
    per = 8 // bits
    c = codes.view(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = torch.zeros(c.shape[:-1], dtype=torch.uint8, device=codes.device)
    for i in range(per):
        out |= c[..., i] << (bits * i)
    return out


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per, mask = 8 // bits, 2**bits - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per)]
    return torch.stack(parts, dim=-1).view(*packed.shape[:-1], packed.shape[-1] * per)
