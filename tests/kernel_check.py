"""Run by tests/test_fast_engine.py in a subprocess with TRITON_INTERPRET=1: each Triton kernel against its torch
reference twin on fresh random inputs. Prints one line per kernel and exits non-zero on a mismatch."""

import itertools
import os
import sys
from dataclasses import replace

import torch

os.environ["KVCOMPRESS_FORCE_TRITON"] = "1"
from kvcompress.engine.fast import kernels  # noqa: E402


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def run_both(fn, *make):
    """Call fn with the Triton path and with the reference path on copies of the same inputs."""
    args = [m() if callable(m) else m for m in make]
    twin = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    kernels.FORCE_TRITON = True
    out_triton = fn(*args)
    kernels.FORCE_TRITON = False
    out_ref = fn(*twin)
    return args, twin, out_triton, out_ref


def main() -> int:
    torch.manual_seed(0)
    failures = []
    B, H, Hq, Hkv, D, S, I = 1, 96, 8, 2, 32, 150, 80

    def check(name, err, tol=1e-5):
        print(f"{name}: rel err {err:.2e}")
        if not err < tol:
            failures.append(name)

    # add_rmsnorm
    w = torch.randn(H)
    args, twin, a, b = run_both(lambda r, d, o: kernels.add_rmsnorm(r, d, w, 1e-6, o),
                                torch.randn(B, H), torch.randn(B, H), torch.empty(B, H))
    check("add_rmsnorm", rel_err(a, b))
    check("add_rmsnorm residual", rel_err(args[0], twin[0]))

    # qk_norm_rope_store, with and without per-head norms and a validity mask
    for with_norm in (True, False):
        qn, kn = (torch.randn(D), torch.randn(D)) if with_norm else (None, None)
        angle = torch.randn(B, D // 2)
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
        slot = torch.tensor([37])
        args, twin, a, b = run_both(
            lambda qkv, k, v, m, q: kernels.qk_norm_rope_store(qkv, qn, kn, 1e-6, cos, sin, k, v, m, slot, q),
            torch.randn(B, (Hq + 2 * Hkv) * D), torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D),
            torch.zeros(B, Hkv, S, dtype=torch.uint8), torch.empty(B, Hq, D))
        tag = "qk_norm_rope_store" + ("" if with_norm else " (no norm)")
        check(tag + " q", rel_err(a, b))
        check(tag + " keys", rel_err(args[1], twin[1]))
        check(tag + " values", rel_err(args[2], twin[2]))
        check(tag + " valid", float((args[3] != twin[3]).sum()))

    # decode_attention: a live length short of capacity, masked entries; one split (123 tokens: two blocks of 64,
    # the online softmax carried from one block to the next) and three (each split one block, then the combine)
    for masked, splits in ((False, 1), (False, 3), (True, 1), (True, 3)):
        valid = (torch.rand(B, Hkv, S) > 0.3).to(torch.uint8) if masked else None
        length = torch.tensor([123])
        ws = kernels.attention_workspace(B, Hq, D, splits, "cpu")
        keys, values = torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
        keys[:, :, 123:] = float("nan")  # slots beyond the live length must never be read
        values[:, :, 123:] = float("nan")
        q = torch.randn(B, Hq, D)
        kernels.FORCE_TRITON = True
        a = kernels.decode_attention(q, keys, values, length, valid, D ** -0.5, torch.empty(B, Hq, D), splits, ws)
        kernels.FORCE_TRITON = False
        b = kernels.decode_attention(q, keys, values, length, valid, D ** -0.5, torch.empty(B, Hq, D))
        check(f"decode_attention{' (masked)' if masked else ''}, {splits} split(s)", rel_err(a, b))

    fp8_checks(check, B, Hq, Hkv, D, S)
    int_checks(check, Hq, Hkv, D)

    # silu_mul
    args, twin, a, b = run_both(lambda gu, o: kernels.silu_mul(gu, o), torch.randn(B, 2 * I), torch.empty(B, I))
    check("silu_mul", rel_err(a, b))
    dms_checks(check)
    print("FAILED: " + ", ".join(failures) if failures else "all kernels match")
    return 1 if failures else 0




def fp8_checks(check, B, Hq, Hkv, D, S) -> None:
    """An fp8 cache: the store's e4m3 codes bit for bit, and the attention that dequantizes them, against the twins;
    scales per sequence (one per layer) and per kv head, batch 2."""
    from kvcompress.methods import quant

    B = 2
    for per in (1, Hkv):
        scales = (torch.rand(B, per) * 0.05 + 0.01, torch.rand(B, per) * 0.05 + 0.01)
        qn, kn = torch.randn(D), torch.randn(D)
        angle = torch.randn(B, D // 2)
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
        slot = torch.tensor([37])
        qkv = torch.randn(B, (Hq + 2 * Hkv) * D) * 3
        qkv[0, -1] = 1e4  # saturates
        args, twin, a, b = run_both(
            lambda x, k, v, q: kernels.qk_norm_rope_store(x, qn, kn, 1e-6, cos, sin, k, v, None, slot, q,
                                                          scales=scales),
            qkv, torch.zeros(B, Hkv, S, D, dtype=quant.FP8), torch.zeros(B, Hkv, S, D, dtype=quant.FP8),
            torch.empty(B, Hq, D))
        tag = f"fp8 store ({'layer' if per == 1 else 'head'} scales)"
        check(tag + " q", rel_err(a, b))
        # keys: the kernel's RoPE may differ from the twin's in the last bit, which can move a key across an e4m3
        # rounding boundary: then by one step at most, and rarely; values are copied, so their codes are exact
        kd = (args[1].float() - twin[1].float()).abs()
        step = 2.0 ** (torch.floor(torch.log2(twin[1].float().abs().clamp_min(2.0**-6))) - 3)
        check(tag + " key codes one step at most", float((kd > step * 1.0001).sum()))
        check(tag + " key codes differ (fraction)", float((kd > 0).float().mean()), tol=0.01)
        check(tag + " value codes differ", float((args[2].view(torch.uint8) != twin[2].view(torch.uint8)).sum()))
        check(tag + " written", 1.0 - float(args[1][:, :, 37].float().abs().sum() > 0))
        check(tag + " saturated", 1.0 - float(args[2].float().abs().max() == 448.0))
        keys = quant.fp8_quantize(torch.randn(B, Hkv, S, D), torch.ones(B, 1, 1, 1) * 0.01)
        values = quant.fp8_quantize(torch.randn(B, Hkv, S, D), torch.ones(B, 1, 1, 1) * 0.01)
        q = torch.randn(B, Hq, D)
        length = torch.tensor([123])
        engine_dots = kernels.FP8_F16_DOTS
        # float16 dots (the engine's): this float32 run's q and weights are rounded to float16 (on a GPU, bf16 q is
        # float16 exactly and the weights are rounded to bf16 first: the same outputs as bf16 dots, the sweep's
        # max diff 0 at equal splits); the check is then for indexing and layout, at float16's spacing (2**-11)
        for splits, f16_dots in itertools.product((1, 3), (False, True)):  # 1 split: two blocks, softmax carried
            ws = kernels.attention_workspace(B, Hq, D, splits, "cpu")
            kernels.FORCE_TRITON, kernels.FP8_F16_DOTS = True, f16_dots
            a = kernels.decode_attention(q, keys, values, length, None, D ** -0.5, torch.empty(B, Hq, D), splits,
                                         ws, scales=scales)
            kernels.FORCE_TRITON, kernels.FP8_F16_DOTS = False, engine_dots
            b = kernels.decode_attention(q, keys, values, length, None, D ** -0.5, torch.empty(B, Hq, D),
                                         scales=scales)
            check(f"fp8 decode_attention ({'layer' if per == 1 else 'head'} scales), {splits} split(s)"
                  f"{', float16 dots' if f16_dots else ''}", rel_err(a, b), tol=2e-3 if f16_dots else 1e-5)


def int_checks(check, Hq, Hkv, D) -> None:
    """An int4 / int2 cache (engine/fast/int_kernels.py), rows of different lengths: the store at each row's own ring
    slot, the flush's codes, scales and zero points bit for bit (rows that complete a group and rows that do not),
    and the attention over codes + ring; ring slots and scales outside what a row holds are NaN (never read)."""
    from kvcompress.engine.fast import int_kernels
    from kvcompress.methods.quant_spec import QuantSpec

    B = 3
    cases = {QuantSpec("int4", group=8, window=5): [13, 40, 61], QuantSpec("int2", group=4, window=0): [12, 41, 64],
             QuantSpec("int4", group=16, window=3): [19, 40, 61],  # G = 16: a block lies within one key group
             QuantSpec("int4", group=8, window=20): [3, 28, 61]}  # row 0 holds no codes yet: all in the ring
    for spec, held in cases.items():
        tag, capacity = f"{spec.format}[group={spec.group},window={spec.window}]", 70
        layer = int_kernels.IntLayer.allocate(spec, B, Hkv, D, capacity, torch.float32,
                                              lambda shape, t: torch.empty(shape, dtype=t))
        lengths = torch.tensor(held)  # tokens each row holds, this step's token stored
        for t in (layer.key_scale, layer.key_zero, layer.value_scale, layer.value_zero, layer.ring_keys,
                  layer.ring_values):
            t.fill_(float("nan"))
        for b, n in enumerate(lengths.tolist()):  # what a row holds before the step: settled codes, its ring
            q = spec.quantized_tokens(n - 1)
            k, v = torch.randn(1, Hkv, n, D), torch.randn(1, Hkv, n, D)
            kq = int_kernels.quant.int_quantize(k[:, :, :q], spec.bits, spec.group, "tokens")
            vq = int_kernels.quant.int_quantize(v[:, :, :q], spec.bits, spec.group, "channels")
            layer.key_codes[b, :, :q], layer.value_codes[b, :, :q] = kq.codes[0], vq.codes[0]
            layer.key_scale[b, :, :q // spec.group], layer.key_zero[b, :, :q // spec.group] = kq.scale[0], kq.zero[0]
            layer.value_scale[b, :, :q], layer.value_zero[b, :, :q] = vq.scale[0], vq.zero[0]
            slots = torch.arange(q, n) % layer.ring
            layer.ring_keys[b][:, slots], layer.ring_values[b][:, slots] = k[0, :, q:], v[0, :, q:]
        flushing = [spec.quantized_tokens(n) > spec.quantized_tokens(n - 1) for n in lengths.tolist()]
        check(tag + " rows that flush (some, not all)", float(not 0 < sum(flushing) < B))
        twin = int_kernels.IntLayer(**{name: t.clone() for name, t in vars(layer).items()})
        kernels.FORCE_TRITON = True
        int_kernels.flush(layer, lengths, spec)
        kernels.FORCE_TRITON = False
        int_kernels.flush(twin, lengths, spec)
        for name, t in vars(layer).items():
            same = torch.equal(t, getattr(twin, name)) or bool(((t == getattr(twin, name)) | (t.isnan() &
                                                                getattr(twin, name).isnan())).all())
            check(f"{tag} flush {name} differs", float(not same))
        q = torch.randn(B, Hq, D)
        splits = 3
        kernels.FORCE_TRITON = False
        b = int_kernels.decode_attention(q, layer, lengths, spec, D ** -0.5, torch.empty(B, Hq, D))
        kernels.FORCE_TRITON = True
        # the engine's launch, and the other ways the kernel can walk the cache (blocks within one key group, one
        # scale row a token, a block of whole groups with one scale row a group)
        engine = None

        def walk(launch):  # the launch without its unpacking options: how it walks the cache (ring "first" skips
            return replace(launch, split_nibbles=False, word_codes=False,  # only masked trips)
                           ring="every" if launch.ring == "first" else launch.ring)

        unpacking = [replace(int_kernels.LAUNCH, split_nibbles=n, word_codes=w, interleave_groups=i)
                     for n, w, i in itertools.product((False, True), repeat=3)]
        for launch in (int_kernels.LAUNCH, int_kernels.AttentionLaunch(block=16, group_keys=False),
                       int_kernels.AttentionLaunch(block=32, group_keys=False),
                       int_kernels.AttentionLaunch(group_keys=False), int_kernels.AttentionLaunch(block=16),
                       int_kernels.AttentionLaunch(block=16, word_codes=True, interleave_groups=True),
                       *[u for u in unpacking if u != int_kernels.LAUNCH],
                       *[replace(int_kernels.LAUNCH, ring=r) for r in ("every", "first", "own")
                         if r != int_kernels.LAUNCH.ring],
                       int_kernels.AttentionLaunch(block=16, ring="own"),
                       replace(int_kernels.LAUNCH, word_codes=True, interleave_groups=True, ring="own")):
            a = int_kernels.decode_attention(q, layer, lengths, spec, D ** -0.5, torch.empty(B, Hq, D), splits,
                                             launch)
            name = f"{tag} decode_attention {launch}"
            check(name, rel_err(a, b))
            check(name + " finite", float(a.isnan().sum()))
            engine = a if engine is None else engine
            if walk(launch) == walk(int_kernels.LAUNCH):  # the same codes, the same float32: the same bits
                check(name + " vs the engine's launch, bit for bit", float(not torch.equal(a, engine)))
        kernels.FORCE_TRITON = False
    # a prefill's layer quantized in one launch, from a slice of a longer (non-contiguous) tensor: bit for bit
    for bits, group in ((4, 8), (2, 4), (4, 32)):
        k, v = torch.randn(2, Hkv, 3 * group + 5, D).to(torch.bfloat16), torch.randn(2, Hkv, 3 * group + 5, D)
        kernels.FORCE_TRITON = True
        got = int_kernels.quantize_kv(k[:, :, :3 * group], v[:, :, :3 * group], bits, group)
        kernels.FORCE_TRITON = False
        want = int_kernels.quant.int_quantize_kv(k[:, :, :3 * group], v[:, :, :3 * group], bits, group)
        for part, a, b in zip(("keys", "values"), got, want):
            same = all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("codes", "scale", "zero"))
            check(f"quantize_kv int{bits}[group={group}] {part} differ", float(not same))
    # the store at one ring slot per row
    angle = torch.randn(B, D // 2)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    slot = torch.tensor([3, 0, 12])
    args, twin, a, b = run_both(
        lambda x, k, v, q: kernels.qk_norm_rope_store(x, None, None, 1e-6, cos, sin, k, v, None, slot, q,
                                                      per_row=True),
        torch.randn(B, (Hq + 2 * Hkv) * D), torch.zeros(B, Hkv, 13, D), torch.zeros(B, Hkv, 13, D),
        torch.empty(B, Hq, D))
    check("store per row slot keys", rel_err(args[1], twin[1]))
    check("store per row slot values", rel_err(args[2], twin[2]))
    written = [int((args[1][b].abs().sum(-1) > 0).nonzero()[:, 1].unique().item()) for b in range(B)]
    check("store per row slot at each row's slot", float(written != slot.tolist()))


def dms_checks(check) -> None:
    """DMS's compact cache: the ragged attention and the decision-extracting store against their torch twins."""
    from kvcompress.methods.dms import DMSParams, tie_break

    B, Hq, Hkv, D = 2, 8, 2, 32
    lengths = torch.tensor([5, 150, 1, 77], dtype=torch.int32)  # per (batch, kv head)
    capacity = torch.tensor([20, 160, 8, 90])
    offsets = torch.cumsum(capacity, 0) - capacity
    rows = int(capacity.sum())
    keys, values = torch.randn(rows, D), torch.randn(rows, D)
    live = torch.zeros(rows, dtype=torch.bool)
    for o, n in zip(offsets.tolist(), lengths.tolist()):
        live[o:o + n] = True
    keys[~live] = float("nan")  # a head's reserve and every other row must never be read
    values[~live] = float("nan")
    q = torch.randn(B, Hq, D)
    for splits in (1, 3):  # one split: a head's blocks one after another (150 tokens: three), the softmax carried
        ws = kernels.attention_workspace(B, Hq, D, splits, "cpu")
        kernels.FORCE_TRITON = True
        a = kernels.decode_attention(q, keys, values, lengths, None, D ** -0.5, torch.empty(B, Hq, D), splits, ws,
                                     offsets=offsets, max_length=int(capacity.max()))
        kernels.FORCE_TRITON = False
        b = kernels.decode_attention(q, keys, values, lengths, None, D ** -0.5, torch.empty(B, Hq, D),
                                     offsets=offsets, max_length=int(capacity.max()))
        check(f"decode_attention (ragged), {splits} split(s)", rel_err(a, b))
        check(f"decode_attention (ragged), {splits} split(s), finite", float(a.isnan().sum()))
    # fp8 codes (dms-8x+fp8): dequantized in the kernel with each sequence's (B, 1) or each head's (B, Hkv) scales;
    # three splits and their workspace, the loop's last
    from kvcompress.methods import quant

    codes_k = quant.fp8_quantize(torch.nan_to_num(keys, nan=0.0), torch.tensor(0.01))
    codes_v = quant.fp8_quantize(torch.nan_to_num(values, nan=0.0), torch.tensor(0.01))
    for shape in ((B, 1), (B, Hkv)):
        scales = (torch.rand(shape) + 0.5, torch.rand(shape) + 0.5)
        kernels.FORCE_TRITON = True
        a = kernels.decode_attention(q, codes_k, codes_v, lengths, None, D ** -0.5, torch.empty(B, Hq, D), splits, ws,
                                     offsets=offsets, max_length=int(capacity.max()), scales=scales)
        kernels.FORCE_TRITON = False
        b = kernels.decode_attention(q, codes_k, codes_v, lengths, None, D ** -0.5, torch.empty(B, Hq, D),
                                     offsets=offsets, max_length=int(capacity.max()), scales=scales)
        check(f"decode_attention (ragged, fp8, scales {tuple(shape)})", rel_err(a, b))

    # the store: several positions (ring wrap-around included), each batch row at its own position (a batch's
    # sequences differ in length: ring slots and tie-breaks per row), random marks in the ring, both threshold kinds
    ring = 5
    for position, thresholds in ((7, None), (10, torch.randn(3, Hkv) * 50), (1, None)):
        params = DMSParams(window=ring - 1, alpha_scale=100.0, alpha_offset=5.0, cr=8, kv_heads=Hkv,
                           threshold=thresholds)
        layer = 1
        row = thresholds[layer].float() if thresholds is not None else torch.zeros(Hkv)
        pos = (position + 3 * torch.arange(B)).view(B, 1)  # rows at positions p, p + 3
        tie = tie_break(pos.view(-1)) if thresholds is not None else torch.zeros(B)
        qn, kn = torch.randn(D), torch.randn(D)
        angle = torch.randn(B, D // 2)
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
        marks = (torch.rand(B * Hkv, ring) > 0.5).to(torch.int8)
        args, twin, a, b = run_both(
            lambda qkv, k, v, n, slot, mark, o: kernels.dms_qk_norm_rope_store(
                qkv, qn, kn, 1e-6, cos, sin, k, v, offsets, n, slot, mark, pos, row, tie, params, layer, o),
            torch.randn(B, (Hq + 2 * Hkv) * D), torch.zeros(rows, D), torch.zeros(rows, D), lengths.clone(),
            torch.randint(0, 5, (B * Hkv, ring), dtype=torch.int32), marks, torch.empty(B, Hq, D))
        tag = f"dms store (p={position}{', calibrated' if thresholds is not None else ''})"
        check(tag + " q", rel_err(a, b))
        check(tag + " keys", rel_err(args[1], twin[1]))
        check(tag + " values", rel_err(args[2], twin[2]))
        for i, name in ((3, "lengths"), (4, "ring slots"), (5, "ring marks")):
            check(f"{tag} {name}", float((args[i] != twin[i]).sum()))
        group = Hq // Hkv
        check(tag + " decision channel zeroed", float(a[:, ::group, -1].abs().sum()))
        written = torch.cat([args[1], args[2]]).abs().sum(-1) > 0
        check(tag + " one row per head written", float(written.sum() != 2 * B * Hkv))
        # fp8: the same row written as e4m3 codes of k / scale (per head scales here), bit for bit
        scales = (torch.rand(B, Hkv) + 0.5, torch.rand(B, Hkv) * 0.1 + 0.01)
        args, twin, _, _ = run_both(
            lambda qkv, k, v, n, slot, mark, o: kernels.dms_qk_norm_rope_store(
                qkv, qn, kn, 1e-6, cos, sin, k, v, offsets, n, slot, mark, pos, row, tie, params, layer, o, scales),
            torch.randn(B, (Hq + 2 * Hkv) * D) * 4, torch.zeros(rows, D, dtype=quant.FP8),
            torch.zeros(rows, D, dtype=quant.FP8), lengths.clone(),
            torch.randint(0, 5, (B * Hkv, ring), dtype=torch.int32), marks, torch.empty(B, Hq, D))
        # keys: one e4m3 step at most where RoPE's last bit differs (as fp8_checks); values are copied: exact
        kd = (args[1].float() - twin[1].float()).abs()
        step = 2.0 ** (torch.floor(torch.log2(twin[1].float().abs().clamp_min(2.0**-6))) - 3)
        check(tag + " fp8 key codes one step at most", float((kd > step * 1.0001).sum()))
        check(tag + " fp8 value codes differ", float((args[2].view(torch.uint8) != twin[2].view(torch.uint8)).sum()))
        check(tag + " fp8 row written", float((args[1].float().abs().sum(-1) > 0).sum() == 0))

    # each row's own tie-break decides: row 1's threshold sits just above its logit + tie_break(its position), so
    # it keeps (ring mark 0) with its own tie-break and would evict with row 0's (tie_break(10) > tie_break(13))
    from kvcompress.methods.dms import decision_logits

    pos = torch.tensor([[10], [13]])
    tie = tie_break(pos.view(-1))
    qkv, qn = torch.randn(B, (Hq + 2 * Hkv) * D), torch.randn(D)
    base = DMSParams(window=ring - 1, alpha_scale=100.0, alpha_offset=5.0, cr=8, kv_heads=Hkv)
    q_normed = kernels._rmsnorm_reference(qkv.view(B, -1, D)[:, :Hq], qn, 1e-6)[:, :, None, :]
    logits = decision_logits(q_normed, base)[1, :, 0]  # (Hkv,) row 1
    assert tie[0] > tie[1] + 1e-4
    params = DMSParams(window=ring - 1, alpha_scale=100.0, alpha_offset=5.0, cr=8, kv_heads=Hkv,
                       threshold=torch.stack([logits + tie[1] + 5e-5] * 2))
    angle = torch.randn(B, D // 2)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    args, twin, a, b = run_both(
        lambda k, v, n, slot, mark, o: kernels.dms_qk_norm_rope_store(
            qkv, qn, torch.randn(D), 1e-6, cos, sin, k, v, offsets, n, slot, mark, pos, params.threshold[1], tie,
            params, 1, o),
        torch.zeros(rows, D), torch.zeros(rows, D), lengths.clone(), torch.zeros(B * Hkv, ring, dtype=torch.int32),
        torch.ones(B * Hkv, ring, dtype=torch.int8), torch.empty(B, Hq, D))
    previous = (pos.view(B, 1).expand(B, Hkv).reshape(-1) - 1) % ring
    marks = args[4][torch.arange(B * Hkv), previous]
    check("dms store per-row tie-break: ring marks", float((args[4] != twin[4]).sum()))
    check("dms store per-row tie-break: row 1 keeps", float(marks[Hkv:].sum()))


def engine_check(steps: int = 10) -> int:
    """The whole fast step through the Triton kernels (interpreted) against the hf engine, greedy, tiny model."""
    from kvcompress import models
    from kvcompress.engine import GenerationSettings, generate_once
    from kvcompress.engine.fast.decoder import FastDecoder
    from kvcompress.engine.generate import HFDecoder
    from kvcompress.engine.sampling import SamplingConfig
    from kvcompress.methods import parse_method
    from kvcompress.tasks import niah

    lm = models.load(models.MODELS["tiny"], device=torch.device("cpu"))
    prompt = niah.build_prompt(lm.tokenizer, 300, 0.5, niah.make_needle("single", 1)).prompt
    settings = GenerationSettings(steps, SamplingConfig(greedy=True))
    status = 0
    for name in ("vanilla", "adakv+snapkv@0.5", "knorm@0.5+fp8", "knorm@0.5+int4[group=4,window=4]"):
        method = parse_method(name)
        kernels.FORCE_TRITON = False
        reference = generate_once(lm, method, prompt, settings, HFDecoder()).token_ids
        kernels.FORCE_TRITON = True
        fast = generate_once(lm, method, prompt, settings, FastDecoder(lm)).token_ids
        print(f"engine {name}: hf {reference} fast {fast}")
        status |= reference != fast
    # A batch whose rows keep different lengths (padded, pads hidden by the validity mask), per-row positions.
    from kvcompress.engine.batch import generate_batch
    from kvcompress.tasks.cell import Cell

    prompts = Cell(target_tokens=300, needle_seed=1).build_batch(lm.tokenizer, 2)[0]
    for name in ("knorm@0.5", "fp8", "int2[group=4,window=3]"):  # fp8: each row its scales; int2: its own length
        method = parse_method(name)
        kernels.FORCE_TRITON = False
        reference = [generate_once(lm, method, p, settings, HFDecoder()).token_ids for p in prompts]
        kernels.FORCE_TRITON = True
        fast = generate_batch(lm, method, prompts, settings, FastDecoder(lm)).batch_token_ids
        print(f"batch {name} x2: hf alone {reference} fast batched {fast}")
        status |= reference != fast
    return status


def dms_engine_check(steps: int = 10) -> int:
    """Native DMS's whole fast step through the Triton kernels (interpreted) against the hf engine: same greedy tokens
    and the same live entries per (layer, head) at the end (tiny model, window 16, prompt of 300 tokens)."""
    from kvcompress import models
    from kvcompress.engine import GenerationSettings, generate_once
    from kvcompress.engine.fast.decoder import FastDecoder
    from kvcompress.engine.generate import HFDecoder
    from kvcompress.engine.sampling import SamplingConfig
    from kvcompress.methods import parse_method
    from kvcompress.tasks import niah

    lm = models.load(models.MODELS["tiny"], device=torch.device("cpu"))
    prompt = niah.build_prompt(lm.tokenizer, 300, 0.5, niah.make_needle("single", 1)).prompt
    settings = GenerationSettings(steps, SamplingConfig(greedy=True))
    method = parse_method("dms-8x")
    kernels.FORCE_TRITON = False
    reference = generate_once(lm, method, prompt, settings, HFDecoder())
    kernels.FORCE_TRITON = True
    fast = generate_once(lm, method, prompt, settings, FastDecoder(lm))
    print(f"dms engine tokens: hf {reference.token_ids} fast {fast.token_ids}")
    print(f"dms engine live per head: hf {reference.kv_end.tokens_per_head} fast {fast.kv_end.tokens_per_head}")
    failures = dms_engine_failures(reference, fast)
    method_fp8 = parse_method("dms-8x+fp8")  # the compact cache's fp8 codes: store and attention kernels
    kernels.FORCE_TRITON = False
    reference = generate_once(lm, method_fp8, prompt, settings, HFDecoder())
    kernels.FORCE_TRITON = True
    fast = generate_once(lm, method_fp8, prompt, settings, FastDecoder(lm))
    print(f"dms-8x+fp8 engine tokens: hf {reference.token_ids} fast {fast.token_ids}")
    failures += [f"fp8: {f}" for f in dms_engine_failures(reference, fast)]
    # a batch of two prompts of different lengths: one merged compact cache, rows at their own positions
    from dms_reference import batch_prompts
    from kvcompress.engine.batch import generate_batch

    prompts = batch_prompts(lm.tokenizer, (120, 113))
    method = method.prepare(lm, prompts[0])  # calibrated: the kernel's thresholds and per-row tie-breaks
    kernels.FORCE_TRITON = False
    alone = [generate_once(lm, method, p, settings, HFDecoder()) for p in prompts]
    kernels.FORCE_TRITON = True
    batch = generate_batch(lm, method, prompts, settings, FastDecoder(lm))
    want_live = batch_rows([g.kv_end for g in alone])
    print(f"dms batch x2 tokens: hf alone {[g.token_ids for g in alone]} fast batched {batch.batch_token_ids}")
    print(f"dms batch x2 live per row: hf alone {want_live} fast batched {batch.kv_end.tokens_per_head}")
    failures += dms_batch_failures(alone, batch)
    if failures:
        print("FAILED: " + ", ".join(failures))
    return 1 if failures else 0


def engine_gpu_check(steps: int = 24) -> int:
    """GPU only (the lead's H200 run): the fast engine's captured CUDA graphs against the hf engine on the tiny model
    in fp32, greedy (must match exactly) and sampled (Qwen3's top-k 20 / top-p 0.95 at temperature 8, so the seed
    decides; shown as tokens equal before the first difference): each method alone, and a batch of 3 against each
    sequence alone. `python tests/kernel_check.py gpu`."""
    from kvcompress import models
    from kvcompress.engine import GenerationSettings, generate_once
    from kvcompress.engine.batch import generate_batch
    from kvcompress.engine.fast.decoder import FastDecoder
    from kvcompress.engine.generate import HFDecoder
    from kvcompress.engine.sampling import SamplingConfig
    from kvcompress.methods import parse_method
    from kvcompress.tasks.cell import Cell

    device = torch.device(os.environ.get("KVCOMPRESS_CHECK_DEVICE", "cuda"))  # cpu: a dry run, as dms_gpu_check
    lm = models.load(models.MODELS["tiny"], device=device, dtype=torch.float32)
    prompts = Cell(target_tokens=400, needle_seed=0).build_batch(lm.tokenizer, 3)[0]  # as tests/test_batch.py
    decoder, status = FastDecoder(lm), 0
    for sampling in (SamplingConfig(greedy=True), SamplingConfig(temperature=8.0, seed=5)):
        for name in ("vanilla", "knorm@0.5", "adakv+snapkv@0.5", "pyramidkv@0.5",  # plain, shrink, mask, uneven
                     "fp8", "knorm@0.5+fp8",  # fp8 buffers, stored and read by the kernels
                     "int4[group=8,window=4]", "knorm@0.5+int2[group=4,window=8]"):  # packed codes + ring
            method = parse_method(name)
            own = [GenerationSettings(steps, replace(sampling, seed=sampling.seed + b)) for b in range(3)]
            hf = [generate_once(lm, method, p, s, HFDecoder()).token_ids for p, s in zip(prompts, own)]
            fast = [generate_once(lm, method, p, s, decoder).token_ids for p, s in zip(prompts, own)]
            batch = generate_batch(lm, method, prompts, GenerationSettings(steps, sampling), decoder).batch_token_ids
            print(f"engine gpu {sampling.describe()} {name}: tokens equal before the first difference, per "
                  f"sequence: fast alone vs hf {_agree(fast, hf)}, fast batch of 3 vs hf alone {_agree(batch, hf)}, "
                  f"fast batch vs fast alone {_agree(batch, fast)} (of {steps})")
            # Greedy must match exactly. Sampled at temperature 8 the tiny model's top 20 are nearly flat, so fp32
            # logits that differ in the last bits (other kernels, another GEMM shape in a batch) can move a draw
            # across a CDF boundary and the sequences part; CPU tests assert sampled equality where the ops agree.
            status |= sampling.greedy and not hf == fast == batch
    print("FAILED" if status else "fast engine matches hf on the GPU")
    return status


def _agree(a: list[list[int]], b: list[list[int]]) -> list[int]:
    return [next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), min(len(p), len(q))) for p, q in zip(a, b)]


def batch_rows(states) -> list[list[int]]:
    """Live entries per [layer][row] a batch of these sequences must hold: sequence b's heads are rows b * Hkv + h."""
    return [[n for state in states for n in state.tokens_per_head[i]] for i in range(len(states[0].tokens_per_head))]


def dms_engine_failures(hf, fast, again=None) -> list[str]:
    """Native DMS, greedy, one sequence: the fast engine must give the hf engine's tokens and live entries per
    (layer, head) exactly, and replaying its captured graph (`again`, where run) the same tokens."""
    failures = ["greedy tokens"] if fast.token_ids != hf.token_ids else []
    failures += ["live per head"] if fast.kv_end.tokens_per_head != hf.kv_end.tokens_per_head else []
    failures += ["graph replay"] if again is not None and again.token_ids != fast.token_ids else []
    return failures


def dms_batch_failures(alone, batch, summed_bytes: int | None = None) -> list[str]:
    """Native DMS, greedy, a batch on the fast engine against each sequence alone on hf: the same tokens per
    sequence, the same live entries per row, and (where given) the bytes of the sequences' own caches summed."""
    failures = ["batch greedy tokens"] if batch.batch_token_ids != [g.token_ids for g in alone] else []
    want_live = batch_rows([g.kv_end for g in alone])
    failures += ["batch live per row"] if batch.kv_end.tokens_per_head != want_live else []
    failures += ["batch KV bytes"] if summed_bytes is not None and batch.kv_end.bytes != summed_bytes else []
    return failures


def dms_gpu_check() -> int:
    """GPU only (the lead's H200 run): the compiled DMS kernels at Qwen3-8B shapes in bf16 against their torch twins
    (run on CPU copies in fp32), then native DMS through the fast engine's captured CUDA graph against the hf engine
    on the tiny model in fp32. `python tests/kernel_check.py dms-gpu`; exits non-zero on a kernel mismatch, and on
    any greedy token or live count where the engines differ."""
    from kvcompress.methods.dms import DMSParams, tie_break

    # KVCOMPRESS_CHECK_DEVICE=cpu (with TRITON_INTERPRET=1, in fp32) dry-runs this check without a GPU
    dev = torch.device(os.environ.get("KVCOMPRESS_CHECK_DEVICE", "cuda"))
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    failures = []
    for B in (1, 4):  # batch 1, and a batch whose rows sit at different positions
        Hq, Hkv, D, window, reserve = 32, 8, 128, 512, 256
        lengths = torch.randint(600, 5000, (B * Hkv,), dtype=torch.int32)
        capacity = lengths.long() + reserve
        offsets = torch.cumsum(capacity, 0) - capacity
        rows = int(capacity.sum())
        keys, values = torch.randn(rows, D, dtype=dt), torch.randn(rows, D, dtype=dt)
        q = torch.randn(B, Hq, D, dtype=dt)
        kernels.FORCE_TRITON = True  # compiled on CUDA, interpreted on CPU
        splits = kernels.attention_splits(B * Hkv, int(capacity.max()), dev)
        a = kernels.decode_attention(q.to(dev), keys.to(dev), values.to(dev), lengths.to(dev), None, D ** -0.5,
                                     torch.empty(B, Hq, D, device=dev, dtype=dt), splits, offsets=offsets.to(dev),
                                     max_length=int(capacity.max()))
        kernels.FORCE_TRITON = False  # the twin, on CPU
        b = kernels.decode_attention(q.float(), keys.float(), values.float(), lengths, None, D ** -0.5,
                                     torch.empty(B, Hq, D), offsets=offsets, max_length=int(capacity.max()))
        err = rel_err(a.cpu(), b)
        print(f"batch {B}: ragged decode_attention, {splits} splits: rel err {err:.2e}")
        failures += [f"batch {B}: ragged attention"] if not err < 2e-2 else []
        ring = window + 1
        params = DMSParams(window=window, alpha_scale=100.0, alpha_offset=5.0, cr=8, kv_heads=Hkv,
                           threshold=torch.randn(2, Hkv) * 30)
        position = 9000
        qkv = torch.randn(B, (Hq + 2 * Hkv) * D, dtype=dt)
        qn, kn = torch.randn(D, dtype=dt), torch.randn(D, dtype=dt)
        angle = torch.randn(B, D // 2)
        cos, sin = torch.cat([angle.cos()] * 2, -1).to(dt), torch.cat([angle.sin()] * 2, -1).to(dt)
        pos = (position + 7 * torch.arange(B)).view(B, 1)  # each row at its own position
        state = [keys, values, lengths, torch.randint(0, 600, (B * Hkv, ring), dtype=torch.int32),
                 (torch.rand(B * Hkv, ring) > 0.5).to(torch.int8)]
        row, tie = params.threshold[1].float(), tie_break(pos.view(-1))
        outs = []
        for side, (device, dtype) in enumerate(((dev, dt), (torch.device("cpu"), torch.float32))):
            k, v, n, slot, mark = [t.clone().to(device) for t in state]
            k, v = k.to(dtype), v.to(dtype)
            out = torch.empty(B, Hq, D, device=device, dtype=dtype)
            kernels.FORCE_TRITON = side == 0  # Triton, then the twin
            kernels.dms_qk_norm_rope_store(qkv.to(device, dtype), qn.to(device, dtype), kn.to(device, dtype), 1e-6,
                                           cos.to(device, dtype), sin.to(device, dtype), k, v, offsets.to(device), n,
                                           slot, mark, pos.to(device), row.to(device), tie.to(device), params, 1, out)
            outs.append([t.cpu().float() for t in (out, k, v, n, slot, mark)])
        for name, x, y in zip(("q", "keys", "values"), outs[0][:3], outs[1][:3]):
            err = rel_err(x, y)
            print(f"batch {B}: dms store {name}: rel err {err:.2e}")
            failures += [f"batch {B}: store {name}"] if not err < 2e-2 else []
        for name, x, y in zip(("lengths", "ring slots", "ring marks"), outs[0][3:], outs[1][3:]):
            wrong = int((x != y).sum())
            # a decision within bf16 rounding of its threshold may differ
            print(f"batch {B}: dms store {name}: {wrong} differ")
            failures += [f"batch {B}: store {name}"] if wrong > 1 else []

    from kvcompress import models
    from kvcompress.engine import GenerationSettings, generate_once
    from kvcompress.engine.fast.decoder import FastDecoder
    from kvcompress.engine.generate import HFDecoder
    from kvcompress.engine.sampling import SamplingConfig
    from kvcompress.methods import parse_method
    from kvcompress.tasks import niah

    lm = models.load(models.MODELS["tiny"], device=dev, dtype=torch.float32)
    prompt = niah.build_prompt(lm.tokenizer, 1000, 0.5, niah.make_needle("single", 1)).prompt
    settings = GenerationSettings(48, SamplingConfig(greedy=True))
    method = parse_method("dms-8x")
    hf = generate_once(lm, method, prompt, settings, HFDecoder())
    kernels.FORCE_TRITON = True
    fast_decoder = FastDecoder(lm)
    fast = generate_once(lm, method, prompt, settings, fast_decoder)
    again = generate_once(lm, method, prompt, settings, fast_decoder)  # the captured graph replayed over reused buffers
    same = sum(x == y for x, y in zip(hf.token_ids, fast.token_ids))
    print(f"dms engine (tiny, fp32, CUDA graph): {same}/{len(hf.token_ids)} greedy tokens as hf; "
          f"live per head hf {hf.kv_end.tokens_per_head} fast {fast.kv_end.tokens_per_head}; "
          f"repeat identical: {again.token_ids == fast.token_ids}")
    failures += dms_engine_failures(hf, fast, again)
    # a batch of 4 prompts of different lengths, calibrated on sequence 0's: one merged compact cache, one graph
    from dms_reference import batch_prompts
    from kvcompress.engine.batch import generate_batch

    prompts = batch_prompts(lm.tokenizer, (300, 297, 310, 291))
    method = method.prepare(lm, prompts[0])
    alone = [generate_once(lm, method, p, settings, HFDecoder()) for p in prompts]
    batch = generate_batch(lm, method, prompts, settings, fast_decoder)
    same = [sum(x == y for x, y in zip(g.token_ids, t)) for g, t in zip(alone, batch.batch_token_ids)]
    want_live = batch_rows([g.kv_end for g in alone])
    summed = sum(generate_once(lm, method, p, settings, fast_decoder).kv_end.bytes for p in prompts)
    print(f"dms batch x4 (tiny, fp32, CUDA graph): greedy tokens as hf alone per sequence {same} of "
          f"{len(alone[0].token_ids)}; live per row as alone: {batch.kv_end.tokens_per_head == want_live}; "
          f"KV bytes {batch.kv_end.bytes:,}, the sequences' fast bytes summed {summed:,}")
    failures += dms_batch_failures(alone, batch, summed)
    # dms-8x+fp8: codes in the compact cache, the same kernels' fp8 branches in the captured graph; a batch of 4
    method = parse_method("dms-8x+fp8").prepare(lm, prompts[0])
    hf = generate_once(lm, method, prompt, settings, HFDecoder())
    fast = generate_once(lm, method, prompt, settings, fast_decoder)
    alone = [generate_once(lm, method, p, settings, fast_decoder) for p in prompts]
    batch = generate_batch(lm, method, prompts, settings, fast_decoder)
    print(f"dms-8x+fp8 (tiny, fp32, CUDA graph): {sum(x == y for x, y in zip(hf.token_ids, fast.token_ids))}/"
          f"{len(hf.token_ids)} greedy tokens as hf; batch x4 rows as alone on fast: "
          f"{batch.batch_token_ids == [g.token_ids for g in alone]}")
    failures += [f"fp8: {f}" for f in dms_engine_failures(hf, fast)]
    failures += [f"fp8: {f}" for f in dms_batch_failures(alone, batch, sum(g.kv_end.bytes for g in alone))]
    print("FAILED: " + ", ".join(failures) if failures else "dms kernels match on the GPU")
    return 1 if failures else 0


def quality_gpu_check(budget: int = 12) -> int:
    """GPU only: a quality batch on CUDA (tiny model, fp32, greedy): the shared prefill's caches answered as one
    batch on the fast engine, its questions' common part fed in one forward (fast/forced_prefill.py, SDPA on the
    GPU), against each sample answered alone by the hf engine; one question cut short so some question tokens stay
    single steps. `python tests/kernel_check.py quality-gpu` (KVCOMPRESS_CHECK_DEVICE=cpu: a dry run)."""
    from kvcompress import models
    from kvcompress.engine import GenerationSettings
    from kvcompress.engine.fast import forced_prefill
    from kvcompress.engine.fast.decoder import FastDecoder
    from kvcompress.engine.generate import HFDecoder, Prompt
    from kvcompress.engine.quality import answer_alone, answer_compressed
    from kvcompress.engine.sampling import SamplingConfig
    from kvcompress.engine.shared_prefill import prefill_shared
    from kvcompress.methods import parse_method
    from kvcompress.tasks.cell import Cell

    device = torch.device(os.environ.get("KVCOMPRESS_CHECK_DEVICE", "cuda"))
    lm = models.load(models.MODELS["tiny"], device=device, dtype=torch.float32)
    built = Cell(target_tokens=400, needle_seed=0).build_batch(lm.tokenizer, 3)[0]
    prompts = [Prompt(p.context_ids, p.question_ids[:, :n or None]) for p, n in zip(built, [0, -3, 0])]
    settings = GenerationSettings(budget, SamplingConfig(greedy=True), fixed_length=False)
    fed = []
    real_feed = forced_prefill.feed_forced
    forced_prefill.feed_forced = lambda state, e: (fed.append(e), real_feed(state, e))
    failures, decoder = [], FastDecoder(lm)
    for name in ("vanilla", "knorm@0.5", "adakv+snapkv@0.5", "pyramidkv@0.5"):
        method = parse_method(name)
        compressed = [prefill_shared(lm, [method], p.context_ids)[name] for p in prompts]
        batch = [a.token_ids for a in answer_compressed(lm, compressed, prompts, [budget] * 3, settings, decoder)]
        alone = [answer_alone(lm, method, p, budget, settings, HFDecoder()).token_ids for p in prompts]
        print(f"quality gpu {name}: batch of 3 (fast, questions' common part fed at once: {fed[-1]} steps) vs hf "
              f"alone, tokens equal before the first difference {_agree(batch, alone)} of {budget}")
        if batch != alone:
            failures.append(name)
    forced_prefill.feed_forced = real_feed
    print("FAILED: " + ", ".join(failures) if failures else "quality batches match hf on the GPU")
    return 1 if failures else 0


if __name__ == "__main__":
    mode = sys.argv[1:2]
    checks = {"engine": engine_check, "dms-engine": dms_engine_check, "dms-gpu": dms_gpu_check,
              "gpu": engine_gpu_check, "quality-gpu": quality_gpu_check}
    sys.exit(checks[mode[0]]() if mode else main())
