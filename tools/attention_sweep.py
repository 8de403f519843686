"""GPU-only: the fast engine's decode attention (kernels.decode_attention: split-K partials, then a combine) timed over
its launch parameters at the shapes the batch benchmark decodes (Qwen3-8B: 32 query heads, 8 KV heads, dim 128).

For each shape: the engine's current choice, then every (programs per SM, BLOCK_N, num_warps, num_stages), each
the median of 5 x 50 CUDA-graph replays of one layer's partial + combine kernels, in TB/s of KV read. Then native
DMS's ragged kernel (compact per-head rows, dms-8x at 8K and 32K x batch 8) at num_stages 1, 2 and 3. `--fp8`: the
caches hold e4m3 codes with one scale per sequence (fp8, dms-8x+fp8), the bytes counted are the codes'; the plain
kernel is timed with and without its scales folded out of the loop (FOLD_SCALES), and folded with its dots in float16
(F16_DOTS).
`--int`: the int4 / int2 cache's kernel (engine/fast/int_kernels.py, KIVI: group 32, window 128) over its launch
choices (int_kernels.AttentionLaunch: block, warps, group_keys, split_nibbles, word_codes, interleave_groups, ring) at
the engine's split count (kernels.wave_splits) and at 4 and 8 programs a SM, in TB/s of what it reads (codes, scales
and zero points, the bf16 ring). `--int-splits` / `--fp8-splits`: int4's or fp8's engine launch at every split count
(1..24, then every 8th; up to 8 waves of the programs an SM holds) and at the engine's own, in us. `--smoke` (CPU,
TRITON_INTERPRET=1, in the test suite): one small shape through every launch, in float32, checked against the
engine's torch twins.

    python tools/attention_sweep.py [--ragged-only] [--fp8] [--int | --int-splits | --fp8-splits]
        [--shapes 8x8192,32x8192]
"""

import argparse
import dataclasses
import itertools
import math
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kvcompress.engine.fast import kernels  # noqa: E402
from kvcompress.methods import quant  # noqa: E402
from kvcompress.engine.timing import replayed_seconds  # noqa: E402

HQ, HKV, D = 32, 8, 128
# --smoke computes in float32: Triton's interpreter gets bfloat16 tiles wrong in these kernels (outputs of ~1e8
# where the twin gives ~1); the GPU runs bfloat16 (tests/kernel_check.py gpu)
DTYPE = torch.bfloat16
FOLDS = {False: "", True: " fold scales", "f16": " fold scales, float16 dots"}  # fp8 candidates, as printed
SHAPES = [(1, 8192), (8, 1152), (32, 1152), (8, 4224)]  # (batch, cache entries per row)


def cache_tensors(shape, device, fp8: bool, batch: int | None = None):
    """Random K and V of `shape`, bf16 or fp8 codes, and the scales the kernels take (None for bf16): one a
    sequence, `batch` sequences (default: shape[0])."""
    keys, values = (torch.randn(shape, device=device, dtype=DTYPE) for _ in range(2))
    if not fp8:
        return keys, values, None
    batch = batch or shape[0]
    scales = (torch.full((batch, 1), 0.01, device=device), torch.full((batch, 1), 0.02, device=device))
    return quant.fp8_quantize(keys, 0.01), quant.fp8_quantize(values, 0.02), scales


def launch(q, keys, values, length, out, splits, block_n, warps, stages, scales=None, fold=False):
    batch, capacity = q.shape[0], keys.shape[2]
    partial_out, partial_lse = kernels.attention_workspace(batch, HQ, D, splits, q.device)
    chunk = math.ceil(math.ceil(capacity / splits) / block_n) * block_n
    k_scale, v_scale = scales if scales is not None else (q, q)
    kernels._attention_partial_kernel[(batch * HKV, splits)](
        q, keys, values, length, length, partial_out, partial_lse, D ** -0.5, chunk, k_scale, v_scale,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2), 0, 0,
        *kernels._scale_strides(scales), HEADS_KV=HKV, GROUP=HQ // HKV, GROUP_PAD=16, D=D,
        BLOCK_N=block_n, HAS_VALID=False, FP8=scales is not None, FOLD_SCALES=bool(fold), F16_DOTS=fold == "f16",
        num_warps=warps,
        num_stages=stages)
    kernels._attention_combine_kernel[(batch * HQ,)](
        partial_out, partial_lse, out, out.stride(0), out.stride(1), HEADS_Q=HQ, GROUP=HQ // HKV,
        SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits), D=D)


def ragged(batch: int, live: int, device, fp8: bool, stage_set=(1, 2, 3), reserve: int = 127) -> float:
    """dms-8x's compact cache: each (sequence, KV head) row holds about `live` entries plus a `reserve`-row reserve.
    Returns the largest difference from the engine's own call (decode_attention) over the stages tried."""
    rows = batch * HKV
    generator = torch.Generator(device=device).manual_seed(1)
    lengths = torch.randint(live * 9 // 10, live * 11 // 10, (rows,), device=device, generator=generator)
    stride = int(lengths.max()) + reserve
    offsets = torch.arange(rows, device=device) * stride
    keys, values, scales = cache_tensors((rows * stride, D), device, fp8, batch)
    smoke_run = device.type == "cpu"  # the torch twin is the reference
    q = torch.randn(batch, HQ, D, device=device, dtype=DTYPE)
    out = torch.empty_like(q)
    max_length = stride
    splits = kernels.attention_splits(rows, max_length, device)
    kernels.FORCE_TRITON = not smoke_run
    reference = kernels.decode_attention(q, keys, values, lengths, None, D ** -0.5, torch.empty_like(q), splits,
                                         offsets=offsets, max_length=max_length, scales=scales)
    kernels.FORCE_TRITON = smoke_run
    nbytes = 2 * int(lengths.sum()) * D * keys.element_size()
    worst = 0.0
    k_scale, v_scale = scales if scales is not None else (q, q)
    for stages, fold in itertools.product(stage_set, (False, True, "f16") if fp8 else (False,)):
        def call():
            partial_out, partial_lse = kernels.attention_workspace(batch, HQ, D, splits, device)
            chunk = math.ceil(math.ceil(max_length / splits) / kernels.BLOCK_N) * kernels.BLOCK_N
            kernels._ragged_attention_partial_kernel[(rows, splits)](
                q, keys, values, lengths, offsets, partial_out, partial_lse, D ** -0.5, chunk, k_scale, v_scale,
                q.stride(0), q.stride(1), keys.stride(0), *kernels._scale_strides(scales), HEADS_KV=HKV,
                GROUP=HQ // HKV, GROUP_PAD=16, D=D, BLOCK_N=kernels.BLOCK_N, FP8=scales is not None,
                FOLD_SCALES=bool(fold), F16_DOTS=fold == "f16", num_stages=stages)
            kernels._attention_combine_kernel[(batch * HQ,)](
                partial_out, partial_lse, out, out.stride(0), out.stride(1), HEADS_Q=HQ, GROUP=HQ // HKV,
                SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits), D=D)
        if smoke_run:  # run once, compare
            call()
            worst = max(worst, float((out.float() - reference.float()).abs().max()))
            continue
        ms = 1e3 * replayed_seconds(call)
        print(f"ragged (dms-8x{'+fp8' if fp8 else ''}) batch {batch} x ~{live} live a head ({nbytes / 1e6:.1f} MB): "
              f"stages {stages}{FOLDS[fold]} {ms * 1e3:6.1f} us = {nbytes / ms / 1e9:.2f} TB/s "
              f"(splits {splits})", flush=True)
    return worst


def int_cache(spec, batch: int, tokens: int, device):
    """An int4 / int2 layer of `batch` rows of `tokens` tokens: random codes, scales, zero points and ring."""
    from kvcompress.engine.fast import int_kernels
    layer = int_kernels.IntLayer.allocate(spec, batch, HKV, D, tokens, DTYPE,
                                          lambda shape, t: torch.empty(shape, dtype=t, device=device))
    for t in (layer.key_codes, layer.value_codes):
        t.copy_(torch.randint(0, 256, t.shape, device=device, dtype=torch.uint8))
    for t in (layer.key_scale, layer.value_scale):
        t.copy_(torch.rand(t.shape, device=device) * 0.1)
    for t in (layer.key_zero, layer.value_zero, layer.ring_keys, layer.ring_values):
        t.copy_(torch.randn(t.shape, device=device))
    return layer


def int_sweep(shapes, device, smoke_run: bool = False) -> float:
    """The int kernel's launch choices at each shape, each at the engine's split count and at 4 and 8 programs a
    SM, int4 then int2 (int2: the engine's and int4's best). Returns the largest difference from the engine's
    launch (--smoke: also the engine's launch against the torch twin)."""
    from kvcompress.engine.fast import int_kernels
    from kvcompress.methods.quant_spec import spec_from_label
    engine = (int_kernels.LAUNCH, "waves")  # "waves": the engine's split count (kernels.engine_splits)
    # session f's H100 sweep: 2 warps at block 64 lost at every shape (as the key scale folded into the query)
    launches = [int_kernels.AttentionLaunch(block, warps, group_keys=False)
                for block, warps in ((16, 2), (32, 4), (64, 4))]
    launches += [int_kernels.AttentionLaunch(64, warps, group_keys=True, split_nibbles=nibbles)
                 for nibbles, warps in itertools.product((False, True), (4, 8))]
    # session p's candidates, counted on a CPU only (10 % fewer instructions together: int_kernels.AttentionLaunch)
    launches += [int_kernels.AttentionLaunch(64, 4, group_keys=True, split_nibbles=True, word_codes=words,
                                             interleave_groups=interleave)
                 for words, interleave in ((True, False), (False, True), (True, True))]
    # session q's: the ring walked by split 0 alone ("first", the same bits) or by a program of its own ("own"), not
    # by every program (masked; int_kernels.AttentionLaunch.ring), counted on a CPU only
    launches += [dataclasses.replace(int_kernels.LAUNCH, ring=ring) for ring in ("first", "own")]
    launches += [dataclasses.replace(int_kernels.LAUNCH, word_codes=True, interleave_groups=True, ring="own")]
    choices = [(launch, per_sm) for launch, per_sm in itertools.product(launches, ("waves", kernels.PER_SM, 8))
               if not smoke_run or per_sm == "waves"]  # a CPU splits the same way whatever per_sm says
    if smoke_run:  # the interpreter ignores num_warps: launches that differ only in warps run the same program
        once = {}
        for launch, per_sm in choices:
            once.setdefault(dataclasses.replace(launch, warps=0), (launch, per_sm))
        choices = list(once.values())
    worst, best = 0.0, {}
    for bits in (4, 2):
        spec = spec_from_label(f"int{bits}")  # the method's defaults: group 32, window 128
        for batch, tokens in shapes:
            layer = int_cache(spec, batch, tokens, device)
            q = torch.randn(batch, HQ, D, device=device, dtype=DTYPE)
            out = torch.empty_like(q)
            lengths = torch.full((batch,), tokens, device=device, dtype=torch.long)
            nbytes = sum(layer.parts().values())
            others = [c for c in choices if c != engine] if bits == 4 else best.get((batch, tokens), [])
            rows = []
            for choice, per_sm in [engine] + others:  # the engine's first: the reference
                entries = max(1, spec.quantized_tokens(tokens))
                splits = (kernels.engine_splits("int", batch * HKV, entries, device)
                          if per_sm == "waves" else kernels.attention_splits(batch * HKV, entries, device, per_sm))
                call = lambda: int_kernels.decode_attention(q, layer, lengths, spec, D ** -0.5, out, splits,  # noqa
                                                            choice)
                try:
                    if smoke_run:  # once, for the difference only
                        call()
                    ms = 1.0 if smoke_run else 1e3 * replayed_seconds(call)
                except Exception as error:  # noqa: BLE001 - a tile too big for shared memory, a candidate that fails
                    if smoke_run or (choice, per_sm) == engine:  # to compile: a GPU sweep goes on without it
                        raise
                    print(f"  skip {choice}: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}")
                    continue
                if (choice, per_sm) == engine:
                    reference = out.clone()
                    if smoke_run:  # the engine's launch against the torch twin
                        kernels.FORCE_TRITON = False
                        twin = int_kernels.decode_attention(q, layer, lengths, spec, D ** -0.5, torch.empty_like(q),
                                                            splits)
                        kernels.FORCE_TRITON = True
                        worst = max(worst, float((twin.float() - reference.float()).abs().max()))
                err = float((out.float() - reference.float()).abs().max())
                worst = max(worst, err)
                rows.append((ms, choice, per_sm, splits, err))
            engine_ms, engine_splits = rows[0][0], rows[0][3]
            rows.sort(key=lambda row: row[0])
            best[(batch, tokens)] = [(c, p) for _, c, p, _, _ in rows if (c, p) != engine][:1]
            print(f"int{bits} batch {batch} x {tokens} tokens ({nbytes / 1e6:.1f} MB read): engine "
                  f"{engine_ms * 1e3:.1f} us = {nbytes / engine_ms / 1e9:.2f} TB/s (splits {engine_splits})",
                  flush=True)
            for ms, choice, per_sm, splits, err in rows[:8]:
                print(f"  {ms * 1e3:6.1f} us {nbytes / ms / 1e9:5.2f} TB/s  {choice} per_sm {per_sm} (splits "
                      f"{splits}); max diff vs engine {err:.1e}")
    return worst


def split_counts(batch_heads: int, blocks: int, slots: int) -> list[int]:
    """The split counts --int-splits / --fp8-splits time at one shape: every count up to 24, then every 8th, none
    with an empty share of the cache (`blocks` blocks of 64 tokens) nor more than 8 waves of `slots` programs."""
    top = min(blocks, max(1, 8 * slots // batch_heads))
    return [s for s in range(1, top + 1) if s <= 24 or s % 8 == 0]


def split_sweep(shapes, device, cache: str = "int4", smoke_run: bool = False) -> float:
    """int4 or fp8 (`cache`), the engine's launch, at every split count of split_counts and the engine's own
    (kernels.wave_splits): how the time follows the waves of programs the GPU runs (a split count's programs =
    batch x KV heads x splits). Returns the largest difference from the engine's split count."""
    from kvcompress.engine.fast import int_kernels
    from kvcompress.methods.quant_spec import spec_from_label
    kind = "int" if cache == "int4" else "fp8"  # kernels.engine_splits' name for the cache
    sms = 1 if smoke_run else torch.cuda.get_device_properties(device).multi_processor_count
    worst = 0.0
    for batch, tokens in shapes:
        q = torch.randn(batch, HQ, D, device=device, dtype=DTYPE)
        out = torch.empty_like(q)
        if kind == "int":
            spec = spec_from_label("int4")
            layer = int_cache(spec, batch, tokens, device)
            lengths = torch.full((batch,), tokens, device=device, dtype=torch.long)
            entries = max(1, spec.quantized_tokens(tokens))
            attend = lambda splits: int_kernels.decode_attention(q, layer, lengths, spec, D ** -0.5, out,  # noqa
                                                                 splits)
        else:
            keys, values, scales = cache_tensors((batch, HKV, tokens, D), device, True)
            length = torch.tensor([tokens], device=device)
            entries = tokens
            attend = lambda splits: kernels.decode_attention(q, keys, values, length, None, D ** -0.5, out,  # noqa
                                                             splits, scales=scales)
        engine = kernels.engine_splits(kind, batch * HKV, entries, device)
        slots = kernels.RESIDENT[kind] * sms
        counts = [1, 2, 3] if smoke_run else sorted({engine, *split_counts(batch * HKV, math.ceil(entries / 64),
                                                                           slots)})
        attend(engine)
        reference = out.clone()
        times = {}
        for splits in counts:
            attend(splits)
            worst = max(worst, float((out.float() - reference.float()).abs().max()))
            times[splits] = 1.0 if smoke_run else 1e3 * replayed_seconds(lambda: attend(splits))  # noqa: B023
        best = min(times, key=times.get)
        print(f"{cache} batch {batch} x {tokens} tokens, {batch * HKV} (row, head) pairs on {sms} SMs: engine splits "
              f"{engine} {times.get(engine, float('nan')) * 1e3:.1f} us, best splits {best} "
              f"{times[best] * 1e3:.1f} us", flush=True)
        print("  " + " ".join(f"{s}:{t * 1e3:.1f}" for s, t in times.items()), flush=True)
    return worst


def smoke() -> int:
    """CPU, under TRITON_INTERPRET=1: each launch this tool times, on one small shape, against the engine's torch twin
    (so the tool follows the kernels' signatures); exits 1 on a difference."""
    global DTYPE
    DTYPE = torch.float32
    kernels.FORCE_TRITON = True
    device = torch.device("cpu")
    worst = 0.0
    for fp8 in (False, True):
        keys, values, scales = cache_tensors((1, HKV, 40, D), device, fp8)
        q = torch.randn(1, HQ, D, dtype=DTYPE)
        length = torch.tensor([33])
        kernels.FORCE_TRITON = False  # the torch twin is the reference
        reference = kernels.decode_attention(q, keys, values, length, None, D ** -0.5, torch.empty_like(q), 1,
                                             scales=scales)
        kernels.FORCE_TRITON = True
        out = torch.empty_like(q)
        launch(q, keys, values, length, out, 1, 32, 4, 1, scales)
        worst = max(worst, float((out.float() - reference.float()).abs().max()))
        for fold in (True, "f16") if fp8 else ():
            launch(q, keys, values, length, out, 1, 32, 4, 1, scales, fold=fold)
            worst = max(worst, float((out.float() - reference.float()).abs().max()))
        worst = max(worst, ragged(1, 20, device, fp8, (1,), reserve=4))
    worst = max(worst, int_sweep([(1, 200)], device, smoke_run=True), split_sweep([(1, 200)], device, "int4", True),
                split_sweep([(1, 200)], device, "fp8", True))
    print(f"smoke: largest difference from the torch twin {worst:.1e}")
    return 0 if worst < 1e-2 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ragged-only", action="store_true", help="only native DMS's ragged kernel")
    parser.add_argument("--shapes", help="batch x entries per row, e.g. 32x8320,8x32896 (default: the built-in set)")
    parser.add_argument("--fp8", action="store_true", help="e4m3 caches with per-sequence scales (fp8, dms-8x+fp8)")
    parser.add_argument("--int", action="store_true", help="the int4 / int2 cache's kernel over its launch choices")
    parser.add_argument("--int-splits", action="store_true",
                        help="int4, the engine's launch, timed at every split count (how time follows waves)")
    parser.add_argument("--fp8-splits", action="store_true", help="the same for an fp8 cache")
    parser.add_argument("--smoke", action="store_true", help="CPU (TRITON_INTERPRET=1): check each launch once")
    args = parser.parse_args()
    if args.smoke:
        return smoke()
    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    torch.manual_seed(0)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")] if args.shapes else SHAPES
    if args.int_splits or args.fp8_splits:
        split_sweep(shapes, device, "int4" if args.int_splits else "fp8")
        return 0
    if args.int:
        int_sweep(shapes, device)
        return 0
    for batch, capacity in [] if args.ragged_only else shapes:
        keys, values, scales = cache_tensors((batch, HKV, capacity, D), device, args.fp8)
        q = torch.randn(batch, HQ, D, device=device, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        length = torch.tensor([capacity], device=device)
        nbytes = keys.nbytes + values.nbytes
        current = kernels.engine_splits("fp8" if args.fp8 else "bf16", batch * HKV, capacity, device)
        base = 1e3 * replayed_seconds(
            lambda: kernels.decode_attention(q, keys, values, length, None, D ** -0.5, out, current, scales=scales))
        reference = out.clone()
        print(f"batch {batch} x {capacity} entries ({nbytes / 1e6:.1f} MB): engine {base * 1e3:.1f} us = "
              f"{nbytes / base / 1e9:.2f} TB/s (splits {current})", flush=True)
        rows = []
        folds = (False, True, "f16") if scales is not None else (False,)
        for per_sm, block_n, warps, stages, fold in itertools.product((4, 8), (64, 128), (4, 8), (1, 2, 3), folds):
            splits = max(1, min(math.ceil(per_sm * sms / (batch * HKV)), math.ceil(capacity / block_n)))
            try:
                ms = 1e3 * replayed_seconds(
                    lambda: launch(q, keys, values, length, out, splits, block_n, warps, stages, scales, fold))
            except Exception as error:  # out of shared memory for a tile: skip that combination
                print(f"  skip per_sm {per_sm} block {block_n} warps {warps} stages {stages}: "
                      f"{type(error).__name__}")
                continue
            err = float((out.float() - reference.float()).abs().max())
            rows.append((ms, per_sm, block_n, warps, stages, splits, fold, err))
        rows.sort()
        for ms, per_sm, block_n, warps, stages, splits, fold, err in rows[:8]:
            print(f"  {ms * 1e3:6.1f} us {nbytes / ms / 1e9:5.2f} TB/s  per_sm {per_sm} block {block_n} warps {warps}"
                  f" stages {stages} (splits {splits}){FOLDS[fold]}; max diff vs engine {err:.1e}")
        for fold in folds[1:]:  # the best folded launch, whatever its rank
            best = next(row for row in rows if row[6] == fold)
            print(f"  best{FOLDS[fold]}: {best[0] * 1e3:6.1f} us, per_sm {best[1]} block {best[2]} warps "
                  f"{best[3]} stages {best[4]}; max diff vs engine {best[7]:.1e}")
    for batch, live in ((8, 1473), (8, 4500), (32, 1473)) if not args.shapes else ():
        ragged(batch, live, device, args.fp8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
