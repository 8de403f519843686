"""The KV quantizers (methods/quant.py) against float64 references written here: fp8 e4m3 rounding from the format's
definition, KIVI's groups sliced by index, and the quantized cache's split into codes and a bit-exact bf16 window."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kvcompress.methods import quant
from kvcompress.methods.quant_spec import QuantSpec
from kvcompress.methods.quantized_cache import QuantizedLayer


def e4m3_reference(v: np.ndarray) -> np.ndarray:
    """Round float64 v to e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits, max 448, subnormals below
    2**-6), nearest with ties to even, saturating at +-448."""
    v = np.clip(v, -448.0, 448.0)
    exponent = np.floor(np.log2(np.maximum(np.abs(v), 2.0**-30)))
    spacing = 2.0 ** (np.maximum(exponent, -6) - 3)
    return np.round(v / spacing) * spacing  # numpy rounds half to even


def test_fp8_matches_the_format_and_its_spacing():
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 40, 16) * torch.logspace(-3, 1, 16)).to(torch.bfloat16)
    x[0, 0, 0, 0] = 0.0
    for per in ("layer", "head"):
        scale = quant.fp8_scale(x, per)
        x64 = x.double().numpy()
        dims = (1, 2, 3) if per == "layer" else (2, 3)
        amax = np.abs(x64).max(axis=dims, keepdims=True)
        np.testing.assert_allclose(scale.double().numpy(), amax / 448.0, rtol=2e-7)  # float32 division
        codes = quant.fp8_quantize(x, scale)
        v = x64 / scale.double().numpy()
        ref = e4m3_reference(v)
        got = codes.double().numpy()
        # x / scale in float32 may land on the other side of a tie than in float64: only there may they differ
        exponent = np.floor(np.log2(np.maximum(np.abs(v), 2.0**-30)))
        spacing = 2.0 ** (np.maximum(exponent, -6) - 3)
        near_tie = np.abs(np.abs(v / spacing) % 1 - 0.5) < 1e-5
        assert np.all((got == ref) | near_tie)
        # the round trip's error: half a spacing (2**-4 relative for normals, 2**-10 x scale for subnormals)
        back = quant.fp8_dequantize(codes, scale, torch.float64).numpy()
        bound = np.maximum(2.0**-4 * np.abs(x64), 2.0**-10 * scale.double().numpy()) * (1 + 1e-6)
        assert np.all(np.abs(back - x64) <= bound)
        assert np.abs(back - x64).max() > 0  # it does quantize


def test_fp8_saturates_beyond_the_scale():
    scale = torch.ones(1, 1, 1, 1)
    codes = quant.fp8_quantize(torch.tensor([1000.0, -1000.0]).view(1, 1, 2, 1), scale)
    assert codes.float().flatten().tolist() == [448.0, -448.0]


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("along", ["tokens", "channels"])
def test_int_groups_match_a_sliced_float64_reference(bits, along):
    group = 8
    x = _grouped_input(along, group)
    got = quant.int_quantize(x, bits, group, along)
    check_groups(x, got, bits, group, along)


@pytest.mark.parametrize("along", ["tokens", "channels"])
def test_a_group_boundary_off_by_one_fails_the_reference(along):
    """The reference check catches a quantizer whose groups start one element late."""
    group, bits = 8, 4
    x = _grouped_input(along, group)
    dim = 2 if along == "tokens" else 3
    shifted = torch.roll(x, 1, dims=dim)  # group k then holds element k*group - 1 of x
    wrong = quant.int_quantize(shifted, bits, group, along)
    wrong = quant.IntGroups(wrong.codes, wrong.scale, wrong.zero, bits, group, along)
    codes = quant.unpack(wrong.codes, bits)
    wrong.codes = quant.pack(torch.roll(codes, -1, dims=dim), bits)  # codes back in place, groups still shifted
    with pytest.raises(AssertionError):
        check_groups(x, wrong, bits, group, along)


def _grouped_input(along: str, group: int) -> torch.Tensor:
    """Every group of its own scale: a neighbour's element in a group would widen its range ~100x."""
    torch.manual_seed(1)
    b, h, s, d = 2, 2, 32, 16
    x = torch.rand(b, h, s, d)
    idx = torch.arange(s if along == "tokens" else d) // group
    offsets = (idx * 100.0).view(1, 1, -1, 1) if along == "tokens" else (idx * 100.0).view(1, 1, 1, -1)
    return (x + offsets).to(torch.bfloat16)


def check_groups(x: torch.Tensor, got: quant.IntGroups, bits: int, group: int, along: str) -> None:
    """Each group sliced by index in float64: its scale and zero point, and every element within half a step (plus
    the float16 rounding of scale and zero) of its value."""
    qmax = 2**bits - 1
    x64 = x.double().numpy()
    back = quant.int_dequantize(got, torch.float64).numpy()
    scale, zero = got.scale.double().numpy(), got.zero.double().numpy()
    b, h, s, d = x.shape
    for k in range((s if along == "tokens" else d) // group):
        sl = slice(k * group, (k + 1) * group)
        block = x64[:, :, sl, :] if along == "tokens" else x64[:, :, :, sl]
        axis = 2 if along == "tokens" else 3
        low, high = block.min(axis=axis), block.max(axis=axis)
        step = (high - low) / qmax
        s16 = scale[:, :, k, :] if along == "tokens" else scale[:, :, :, k]
        z16 = zero[:, :, k, :] if along == "tokens" else zero[:, :, :, k]
        assert np.all(np.abs(s16 - step) <= 2.0**-11 * step + 2.0**-24)  # float16 rounding of the scale
        assert np.all(np.abs(z16 - low) <= 2.0**-11 * np.abs(low) + 2.0**-24)
        bound = step / 2 + np.abs(z16 - low) + qmax * np.abs(s16 - step) + 1e-6 * (np.abs(low) + np.abs(high))
        err = np.abs((back[:, :, sl, :] if along == "tokens" else back[:, :, :, sl]) - block)
        assert np.all(err <= np.expand_dims(bound, axis))


def test_pack_round_trip():
    for bits in (4, 2):
        codes = torch.randint(0, 2**bits, (2, 3, 5, 16), dtype=torch.uint8)
        packed = quant.pack(codes, bits)
        assert packed.shape[-1] == 16 * bits // 8
        assert torch.equal(quant.unpack(packed, bits), codes)


@pytest.mark.parametrize("spec", [QuantSpec("int4", group=8, window=12), QuantSpec("int2", group=4, window=0),
                                  QuantSpec("fp8")])
def test_layer_splits_tokens_and_keeps_the_window_bit_exact(spec):
    """Fed a prefill then single tokens, a layer quantizes exactly spec.quantized_tokens(n) of them, keeps the rest
    bit-exact, and returns them dequantized in order; its bytes equal the formula."""
    torch.manual_seed(2)
    b, h, d = 2, 2, 16
    layer = QuantizedLayer(spec)
    k_all = torch.randn(b, h, 45, d).to(torch.bfloat16)
    v_all = torch.randn(b, h, 45, d).to(torch.bfloat16)
    layer.update(k_all[:, :, :30], v_all[:, :, :30])
    for n in range(30, 45):
        keys, values = layer.update(k_all[:, :, n:n + 1], v_all[:, :, n:n + 1])
        assert keys.shape[2] == n + 1
    layer.settle()
    n = 45
    q = spec.quantized_tokens(n)
    assert q == (n if spec.format == "fp8" else (n - spec.window) // spec.group * spec.group)
    assert layer.quantized == q and layer.get_seq_length() == n
    assert torch.equal(layer.keys, k_all[:, :, q:]) and torch.equal(layer.values, v_all[:, :, q:])
    assert layer.parts() == spec.bytes_parts(b, h, d, n)
    keys, _ = layer.dequantized(torch.float32)
    step = (k_all[:, :, :q].float().abs().max() * (2.0**-3 if spec.format == "fp8" else 1.0))
    assert (keys - k_all[:, :, :q].float()).abs().max() <= step


def test_bytes_formula_by_hand():
    """int4, group 32, window 128, one sequence of 1000 tokens, 8 heads of 128: Q = 864 quantized tokens."""
    parts = QuantSpec("int4", group=32, window=128).bytes_parts(1, 8, 128, 1000)
    assert parts["data"] == 2 * 8 * 864 * 128 // 2
    assert parts["scales"] == 8 * (864 // 32 * 128 + 864 * 128 // 32) * 2 * 2
    assert parts["window"] == 2 * 8 * 136 * 128 * 2
    assert math.isclose(QuantSpec("fp8").bytes_parts(1, 8, 128, 1000)["data"], 2 * 8 * 1000 * 128)
