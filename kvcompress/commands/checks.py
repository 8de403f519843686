"""Physics checks of a result file: does what was measured agree with what the hardware and the model allow?

    uv run python benchmark.py check results/h200/benchmark-fast.json

1. KV bytes: vanilla holds exactly context x bytes/token (summed over a batch's sequences); a real-shrink press
   at ratio r holds (1 - r) of that within 1 %; a mask-only press holds 100 % and says so; a quantized cache
   (fp8, int4, int2, alone or after a press) holds exactly its format's codes + scales + window for the tokens
   kept, by part (methods/quant_spec.py's formula).
2. Peak memory: weights, and the prefill's activation cost (peak - weights - KV) per context.
3. Decode speed against the HBM roofline: bandwidth / bytes per step (x batch: one step gives each sequence a
   token); each method's speed-up over vanilla at the same batch against the speed-up its smaller KV predicts.
4. TTFT against compute: prefill FLOPs / matrix throughput.
5. Noise: IQR / median of TTFT and TPOT per cell, flagged above 3 %.
7. GPUs of a torchrun run: vanilla's decode tok/s at each context on every rank (the header's rank_probes), flagged
   where the fastest and slowest rank differ by more than 3 % of the median: a slow GPU shows instead of being
   averaged into the records it measured.
6. With --reference (the same cells run with --engine hf): per cell, TTFT within 5 % of the reference's (the
   engines share the prefill), decode-phase peak no higher, the same KV bytes at the end, and the decode speed-up.
   Two files are two processes: a press whose prefill waits on the host (kvpress synchronises every layer) moves
   its TTFT by several percent between processes of the same engine; tools/ttft_ab.py times both engines
   alternately in one process, which is the comparison to trust when only TTFT fails.

Architecture figures (layers, heads, parameters) come from the run header, which records the model's config.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass, field

from kvcompress import cli
from kvcompress.architecture import architecture_of
from kvcompress.errors import UserError
from kvcompress.methods.quant_spec import spec_from_label
from kvcompress.results import BenchmarkResult, duplicate_identity, load

HBM_BANDWIDTH = 4.3e12  # bytes/s: H200 device-to-device copy, read + write (measured in this workplace)
BF16_FLOPS = 790e12  # FLOP/s: H200 8192^3 bf16 matmul on random data (measured in this workplace)
# (bandwidth, bf16 FLOP/s) by a part of the GPU name a run records, measured here by tools/device_limits.py; check
# uses the run's card's unless --bandwidth / --flops are given, and the H200's, named as such, for a card not listed.
MEASURED_LIMITS = {
    "H200": (HBM_BANDWIDTH, BF16_FLOPS),  # 4.28 TB/s, 777 TFLOP/s on 6 December (results/h200/session-2026-12-06-e)
    "H100 80GB HBM3": (2.99e12, 754e12),  # results/h100/session-2026-12-06-f/call1/gpu.txt
}
NOISE_LIMIT = 0.03
TTFT_TOLERANCE = 0.05


@dataclass
class Check:
    name: str
    passed: bool | None  # None: informational
    lines: list[str] = field(default_factory=list)


def run_checks(run: dict, results: list[BenchmarkResult], bandwidth: float | None = None,
               flops: float | None = None, references: list[tuple[str, list[BenchmarkResult]]] = (),
               hardware: bool | None = None) -> list[Check]:
    """`hardware` (checks 2-6: peaks, roofline, FLOPs, noise, engines) defaults to whether the run was on a GPU:
    a CPU run's wall-clock timings and process RSS are pipeline checks, and the H200's limits mean nothing there.
    `bandwidth` / `flops` (bytes/s, FLOP/s): the run's GPU's from MEASURED_LIMITS where not given."""
    arch = run.get("architecture") or _known_architecture(run.get("model"))
    ok = [r for r in results if r.error is None and r.kv_cache_bytes is not None]
    if not ok:
        return [Check("results", False, ["no successful records to check"])]
    checks = [_kv_bytes(ok, arch)]
    if hardware is None:
        hardware = gpu_run(run)
    ranks = [_ranks(run["rank_probes"], hardware)] if run.get("rank_probes") else []
    if not hardware:
        return checks + [Check("2-6. Hardware checks", None, [
            f"skipped: this run is on {run.get('device') or 'an unknown device'}, not a GPU; peaks, roofline, "
            "FLOPs, noise and engine comparisons need a GPU run"])] + ranks
    gpu = str(run.get("gpu") or "")
    card = next((name for name in MEASURED_LIMITS if name in gpu), None)
    defaulted = bandwidth is None or flops is None
    own = MEASURED_LIMITS.get(card, (HBM_BANDWIDTH, BF16_FLOPS))
    bandwidth, flops = bandwidth or own[0], flops or own[1]  # each given one wins
    timed = [r for r in ok if r.run_mode != "quality"]  # quality records (answered once) carry no timings or peaks
    if not timed:
        compute = _shared_prefill_compute(run, flops, arch)
        _say_limits([compute], defaulted, card, gpu, own)
        return checks + [Check("2-3, 5-6. Hardware checks", None, [
            "skipped: a quality run's records hold no timings or peaks (test_long_context.py --mode measured times)"]),
            compute] + ranks
    ok = timed
    roofline, compute = _roofline(ok, bandwidth, arch), _compute(ok, flops, arch)
    _say_limits([roofline, compute], defaulted, card, gpu, own)
    checks += [_memory(ok), roofline, compute, _noise(ok)]
    if references:
        checks.append(_engines(ok, references))
    return checks + ranks


def _say_limits(checks: list[Check], defaulted: bool, card: str | None, gpu: str, own: tuple) -> None:
    """Which GPU's limits the checks used, where the user gave neither: the H200's against another GPU's run is said,
    never silent."""
    if defaulted and card is None:
        for check in checks:
            check.lines.insert(0, f"note: these limits are the H200's (the defaults); this run is on "
                                  f"{gpu or 'an unnamed GPU'}: pass --bandwidth and --flops (tools/device_limits.py "
                                  "measures them) for its own")
    elif defaulted and card != "H200":
        for check in checks:
            check.lines.insert(0, f"limits: {gpu}'s as measured here by tools/device_limits.py ({own[0] / 1e12:.2f} "
                                  f"TB/s, {own[1] / 1e12:.0f} TFLOP/s); --bandwidth / --flops override them")


def gpu_run(run: dict) -> bool:
    return str(run.get("device") or "").startswith("cuda")


def prefill_flops(arch: dict, tokens: int) -> tuple[float, float]:
    """(linear, attention) FLOPs of a causal prefill of `tokens`: 2 per weight per token; QK and PV over the lower
    triangle (half of tokens x tokens)."""
    linear = 2 * arch["layer_params"] * tokens
    attention = 2 * 2 * arch["layers"] * arch["heads"] * arch["head_dim"] * tokens * tokens / 2
    return linear, attention


def _known_architecture(model: str | None) -> dict | None:
    """Result files written before the header carried the architecture: Qwen3-8B's is known."""
    if model in ("Qwen/Qwen3-8B", "nvidia/Qwen3-8B-DMS-8x"):
        from kvcompress.models import qwen3_8b_config  # torch and transformers: only for such an old file

        return architecture_of(qwen3_8b_config())
    return None


def _by_context(results):
    """(label, records, vanilla record) per context, batch and prompt: each record compares with vanilla on its own
    prompt at the same batch (a long-context file holds several tasks, depths and trials per length, each its own
    context; capacity records at a method's own max batch have no vanilla beside them; longest-context records are
    left out: they hold no measurement). The label names the prompt where a length has several."""
    def prompt(r):
        return (r.task_family or "", r.prompt_id or "", r.depth, r.needle or "")

    keys = sorted({(r.target_tokens or r.input_tokens, r.batch) for r in results if r.task != "capacity_context"})
    for c, batch in keys:
        cell = [r for r in results if (r.target_tokens or r.input_tokens) == c and r.batch == batch
                and r.task != "capacity_context"]
        prompts = list(dict.fromkeys(prompt(r) for r in cell))
        for p in prompts:
            group = [r for r in cell if prompt(r) == p]
            vanilla = next((r for r in group if r.method == "vanilla"), None)
            label = str(c) if batch == 1 else f"{c} x{batch}"
            if len(prompts) > 1:
                label += f" {p[1] or p[0]}" + (f" depth {p[2]:g}" if p[2] is not None else "")
            yield label, group, vanilla


def _context_tokens(record) -> int:
    """Context tokens the record's KV holds: summed over a batch's sequences."""
    return record.context_tokens_total if record.batch > 1 and record.context_tokens_total else record.context_tokens


def _itemsize(record) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4}.get(record.dtype or "", 2)


def _bytes_per_token(arch, record) -> int | None:
    if not arch:
        return None
    return 2 * arch["layers"] * arch["kv_heads"] * arch["head_dim"] * _itemsize(record)


def _kv_bytes(results, arch) -> Check:
    check = Check("1. KV bytes against context x bytes/token", True)
    for context, cell, vanilla in _by_context(results):
        if vanilla is None:
            continue
        per_token = _bytes_per_token(arch, vanilla)
        if per_token:
            tokens = _context_tokens(vanilla)
            expected = tokens * per_token
            exact = vanilla.kv_cache_bytes == expected
            check.passed &= exact
            check.lines.append(f"{context}: vanilla {vanilla.kv_cache_bytes:,} B = {tokens} tokens x "
                               f"{vanilla.kv_cache_bytes / tokens:,.0f} B "
                               f"({'exact' if exact else f'expected {expected:,}'})")
        for r in cell:
            if r.kv_quant and arch:
                check.passed &= _quant_bytes(check, context, r, arch)
                continue
            if r.dms_impl == "native" and r.kv_tokens_per_head and per_token:
                check.passed &= _dms_bytes(check, context, r, per_token, vanilla)
                continue
            if r.method == "vanilla" or r.compression_ratio is None:
                continue
            share = r.kv_cache_bytes / vanilla.kv_cache_bytes
            if r.expected_memory == "mask":
                good = abs(share - 1) < 1e-9 and r.kv_memory_saved is False
                verdict = "mask-only: full size, flagged mem saved = no" if good else "mask-only press changed size"
            else:
                good, verdict = _press_share(r, vanilla, share, per_token)
            check.passed &= good
            check.lines.append(f"{context}: {r.method:30s} held / vanilla held {share:.4f} ({verdict}) "
                               f"{'ok' if good else 'FAIL'}")
    return check


def _quant_bytes(check: Check, context, r, arch) -> bool:
    """A quantized cache: its parts (codes, scales + zero points, window), summed from its tensors, against the
    formula for the tokens each layer kept (every position under a mask-only press), x layers."""
    if r.dms_layout == "compact per head, slots reclaimed" and r.kv_tokens_per_head:
        return _compact_quant_bytes(check, context, r, arch)
    kept = r.context_tokens if r.expected_memory == "mask" else r.kv_tokens_kept
    if r.dms_layout == "mask, no reclaim":  # native DMS on the hf engine: every position held, the rule masks
        kept = r.kv_tokens_kept_min = r.kv_tokens_kept_max = r.kv_positions or r.input_tokens
    spec = spec_from_label(r.kv_quant)
    # fp8's codes are linear in the tokens and its scales per sequence: a batch whose sequences differ in length
    # (kept is their mean) is exact on the tokens summed over its sequences
    summed = spec.format == "fp8" and r.batch > 1 and kept != int(kept) and kept * r.batch == int(kept * r.batch)
    uneven = r.batch > 1 and kept != int(kept) and not summed  # int4/int2: codes by whole groups, a window per row
    rows = r.kv_tokens_kept_rows if uneven else None
    if uneven and not (rows and all(n == int(n) for n in rows)):
        check.lines.append(f"{context}: {r.method:30s} rows of different lengths (mean {kept}): the "
                           f"{spec.format} formula is per row and the record keeps no whole count per row FAIL")
        return False
    if r.kv_tokens_kept_min != r.kv_tokens_kept_max or (kept != int(kept) and not summed and not rows) \
            or r.kv_bytes_parts is None:
        check.lines.append(f"{context}: {r.method:30s} layers keep different counts (or no parts recorded): "
                           "the formula needs one count per layer FAIL")
        return False
    heads, dim = arch["kv_heads"], arch["head_dim"]
    if summed:
        kept = kept * r.batch
        one = {**spec.bytes_parts(r.batch, heads, dim, 0), "data": spec.bytes_parts(1, heads, dim, int(kept))["data"]}
    elif rows:  # int4/int2 rows of different lengths: the formula for each row's own count, summed
        each = [spec.bytes_parts(1, heads, dim, int(n), _itemsize(r)) for n in rows]
        one = {name: sum(row[name] for row in each) for name in each[0]}
    else:
        one = spec.bytes_parts(r.batch, heads, dim, int(kept), _itemsize(r))
    expected = {name: n * arch["layers"] for name, n in one.items()}
    good = r.kv_bytes_parts == expected and r.kv_cache_bytes == sum(expected.values())
    parts = ", ".join(f"{name} {n:,}" for name, n in r.kv_bytes_parts.items())
    counted = f"rows of {', '.join(f'{int(n)}' for n in sorted(set(rows)))} tokens" if rows else f"{int(kept)} tokens"
    check.lines.append(f"{context}: {r.method:30s} {r.kv_cache_bytes:,} B = {parts} for {counted}"
                       f"{' (the sequences summed)' if summed else ''} "
                       f"({'exact' if good else f'expected {expected}'}); "
                       f"{r.kv_cache_bytes / r.kv_cache_bytes_full:.4f} of vanilla")
    return good


def _compact_quant_bytes(check: Check, context, r, arch) -> bool:
    """Native DMS's compact cache stored quantized (the fast engine's dms-8x+fp8): codes for the live entries and
    the reserve rows (max_new_tokens - 1 per (sequence, layer, kv head)), the format's scales, no window; live
    bytes are the live entries' codes plus the scales."""
    spec = spec_from_label(r.kv_quant)
    rows = sum(len(layer) for layer in r.kv_tokens_per_head)  # batch x layers x kv heads
    entries = sum(sum(layer) for layer in r.kv_tokens_per_head)
    entry = 2 * arch["head_dim"] * spec.bits // 8  # K and V codes of one token of one head
    scales = spec.bytes_parts(r.batch, arch["kv_heads"], arch["head_dim"], 0)["scales"] * arch["layers"]
    expected = {"data": (entries + (r.max_new_tokens - 1) * rows) * entry, "scales": scales, "window": 0}
    good = (r.kv_bytes_parts == expected and r.kv_cache_bytes == sum(expected.values())
            and r.kv_live_bytes == entries * entry + scales)
    check.lines.append(f"{context}: {r.method:30s} {r.kv_cache_bytes:,} B = codes of {entries:,} live entries + "
                       f"{r.max_new_tokens - 1} reserve rows x {rows} heads, {scales:,} B of scales "
                       f"({'exact' if good else f'expected {expected}, live {entries * entry + scales:,}'}); "
                       f"{r.kv_cache_bytes / r.kv_cache_bytes_full:.4f} of vanilla")
    return good


def kvpress_kept(tokens: int, ratio: float) -> int:
    """Tokens kvpress keeps of `tokens` at `ratio` (its compute_n_kept: the whole part of tokens x (1 - ratio), at
    least one, none at ratio 1): knorm@0.875 keeps 15 of 124 tokens, 0.1210 of them, not 0.125."""
    return 0 if ratio >= 1.0 else max(1, int(tokens * (1 - ratio)))


def _press_share(r, vanilla, share: float, per_token: int | None) -> tuple[bool, str]:
    """A real-shrink press against kvpress's own rounding (each sequence of a batch rounds down on its own: within one
    token per sequence), else, without the architecture or for uneven layers, within 1 % of (1 - ratio)."""
    ratio = r.compression_ratio
    band = abs(share - (1 - ratio)) <= 0.01 * (1 - ratio)
    tokens = _context_tokens(vanilla)
    if not per_token:
        return band, f"expected {1 - ratio:.3f}"
    kept = r.kv_cache_bytes / per_token  # tokens, the mean over layers
    if r.expected_memory == "uneven" or r.kv_tokens_kept_min != r.kv_tokens_kept_max:  # pyramidkv: per-layer budgets
        target = tokens * (1 - ratio)
        return abs(kept - target) <= r.batch or band, (f"uneven layers: within one token of {tokens} x "
                                                       f"{1 - ratio:g} = {target:g} per sequence; held {kept:g}")
    if r.batch == 1:
        want = kvpress_kept(tokens, ratio)
        return kept == want or band, f"kvpress keeps int({tokens} x {1 - ratio:g}) = {want} tokens; held {kept:g}"
    low = tokens * (1 - ratio) - r.batch
    return low < kept <= tokens * (1 - ratio) or band, (f"kvpress keeps {tokens} x {1 - ratio:g} less under one "
                                                        f"token per sequence; held {kept:g}")


def _dms_bytes(check: Check, context, r, per_token: int, vanilla) -> bool:
    """Native DMS: live bytes = live entries x bytes of one entry, exactly; the fast engine's compact cache allocates
    exactly a reserve of max_new_tokens - 1 rows per (layer, head) more; the hf engine's masked cache holds every
    position it has seen. A batch's rows are (sequence, layer, kv head): its bytes are its sequences' summed. Both
    are then set against vanilla's bytes, each ratio named by what it divides."""
    heads = sum(len(layer) for layer in r.kv_tokens_per_head)  # rows: batch x layers x kv heads
    entry = per_token * r.batch // heads  # K and V of one token of one (layer, kv head)
    entries = sum(sum(layer) for layer in r.kv_tokens_per_head)
    live_ok = r.kv_live_bytes == entries * entry
    if r.engine == "fast":
        slack = (r.max_new_tokens - 1) * heads * entry
        held_ok, held = r.kv_cache_bytes == r.kv_live_bytes + slack, f"live + reserve {slack:,} B"
    elif r.kv_positions is not None:  # every position seen, of every sequence: positions are a mean over a batch
        positions = round(r.kv_positions * r.batch)
        held_ok = r.kv_cache_bytes == positions * per_token
        held = f"{positions:,} positions x {per_token:,} B (mask, no reclaim)"
    elif r.batch > 1:  # files before kv_positions: each sequence's own positions
        held_ok, held = r.kv_cache_bytes == r.kv_cache_bytes_full, "every position of every sequence (mask, no reclaim)"
    else:
        held_ok, held = r.kv_cache_bytes == r.input_tokens * per_token, "every position (mask, no reclaim)"
    line = (f"{context}: {r.method:30s} live {entries:,} entries x {entry} B = {r.kv_live_bytes:,} B "
            f"({'exact' if live_ok else 'FAIL'}); held {r.kv_cache_bytes:,} B = {held} "
            f"({'exact' if held_ok else 'FAIL'})")
    if vanilla is not None and vanilla.kv_cache_bytes:
        line += (f"; live / vanilla held {r.kv_live_bytes / vanilla.kv_cache_bytes:.4f}, "
                 f"held / vanilla held {r.kv_cache_bytes / vanilla.kv_cache_bytes:.4f}")
        if r.kv_positions is None or r.kv_positions != vanilla.kv_positions:  # a file written before kv_positions
            line += f" (measured after {r.input_tokens} positions, vanilla after {vanilla.context_tokens})"
    check.lines.append(line)
    return live_ok and held_ok


def _memory(results) -> Check:
    check = Check("2. Peak memory and the prefill's activation cost", None)
    weights = results[0].weights_bytes
    check.lines.append(f"weights {weights / 1e9:.2f} GB ({weights:,} B)")
    for context, cell, vanilla in _by_context(results):
        for r in [vanilla] if vanilla else []:
            activation = r.peak_mem_prefill_bytes - r.weights_bytes - r.kv_cache_bytes
            check.lines.append(
                f"{context}: prefill peak {r.peak_mem_prefill_bytes / 1e9:.2f} GB = weights + KV "
                f"{r.kv_cache_bytes / 1e9:.2f} GB + activations {activation / 1e9:.2f} GB "
                f"({activation / r.input_tokens / 1e3:.0f} kB/token); decode peak {r.peak_mem_decode_bytes / 1e9:.2f} GB")
    check.lines.append("The context prefill runs the decoder without its LM head and the question asks for the last "
                       "position's logits only (logits_to_keep=1): no context x vocabulary logits are materialised.")
    return check


def _step_bytes(record, arch, read_embedding: bool) -> float:
    weights = record.weights_bytes
    if arch and not read_embedding and not arch["tied_embeddings"]:
        weights -= arch["vocab"] * arch["hidden"] * _itemsize(record)  # a step looks up one embedding row
    kv = (record.kv_cache_bytes + record.kv_cache_bytes_end) / 2  # the KV read grows from start to end of decoding
    if record.engine == "fast" and record.dms_impl == "native" and record.kv_live_bytes_end is not None:
        kv = (record.kv_live_bytes + record.kv_live_bytes_end) / 2  # the compact DMS cache reads its live rows only
    return weights + kv


def _aggregate(record) -> float | None:
    """Tokens per second from the whole batch (batch 1: the decode speed)."""
    if record.decode_tokens_per_s is None:
        return None
    return record.decode_tokens_per_s * record.batch


def _roofline(results, bandwidth, arch) -> Check:
    check = Check(f"3. Decode speed against the HBM roofline ({bandwidth / 1e12:.1f} TB/s)", None)
    check.lines.append("ceiling = bandwidth / (weights + mean KV bytes per step) x batch (a step reads the weights "
                       "once and every sequence's KV, and gives each sequence a token; KV bytes are the whole "
                       "batch's); strict ceiling leaves out the embedding table, which a step only indexes; "
                       "batches show aggregate tok/s")
    for context, cell, vanilla in _by_context(results):
        for r in cell:
            speed = _aggregate(r)
            if speed is None:
                continue
            ceiling = bandwidth / _step_bytes(r, arch, True) * r.batch
            strict = bandwidth / _step_bytes(r, arch, False) * r.batch
            line = (f"{context}: {r.method:30s} {speed:7.1f} tok/s = {speed / ceiling:5.1%}"
                    f" of {ceiling:.0f} (strict {speed / strict:5.1%} of {strict:.0f})")
            if vanilla and r is not vanilla and vanilla.decode_tokens_per_s:
                measured = r.decode_tokens_per_s / vanilla.decode_tokens_per_s
                predicted = _step_bytes(vanilla, arch, True) / _step_bytes(r, arch, True)
                line += f"; speed-up x{measured:.3f} vs x{predicted:.3f} predicted ({measured / predicted:.0%})"
            check.lines.append(line)
    return check


def _compute(results, flops, arch) -> Check:
    check = Check(f"4. TTFT against compute ({flops / 1e12:.0f} TFLOP/s)", None)
    if not arch:
        check.lines.append("no architecture in the run header: cannot count FLOPs")
        return check
    for context, cell, vanilla in _by_context(results):
        if vanilla is None:
            continue
        linear, attention = prefill_flops(arch, vanilla.input_tokens)
        ideal = (linear + attention) / flops
        check.lines.append(f"{context}: {(linear + attention) / 1e12:.0f} TFLOP -> {ideal:.3f} s ideal; vanilla TTFT "
                           f"{vanilla.ttft_s:.3f} s = x{vanilla.ttft_s / ideal:.2f}")
    return check


def _shared_prefill_compute(run: dict, flops: float, arch) -> Check:
    """A quality run's shared prefills (run header `quality.shared_prefills`, summed over the processes of a resumed
    run) against the FLOP ideal of a prefill of their mean context length. Each one also runs every joining press's
    scoring, so the ratio is the prefill's and the presses' together."""
    check = Check(f"4. Shared prefill against compute ({flops / 1e12:.0f} TFLOP/s)", None)
    block = run.get("quality") or {}
    tallies: dict = {}
    for process in [*block.get("earlier", []), block]:
        for context, t in (process.get("shared_prefills") or {}).items():
            into = tallies.setdefault(int(context), {"count": 0, "context_tokens": 0, "seconds": 0.0})
            for key in into:
                into[key] += t[key]
    if not arch or not tallies:
        check.lines.append("no architecture in the run header" if not arch else
                           "no shared prefills recorded (a run before they were, or no method joined one)")
        return check
    for context, t in sorted(tallies.items()):
        tokens = t["context_tokens"] / t["count"]
        ideal = sum(prefill_flops(arch, round(tokens))) / flops
        each = t["seconds"] / t["count"]
        check.lines.append(f"{context}: {t['count']} shared prefills of {tokens:,.0f} context tokens on average, "
                           f"{each:.3f} s each (the presses' scoring included); ideal {ideal:.3f} s = "
                           f"x{each / ideal:.2f}")
    return check


def _noise(results) -> Check:
    check = Check(f"5. Noise: IQR / median above {NOISE_LIMIT:.0%} flagged", True)
    for r in results:
        for name, iqr, median in (("TTFT", r.ttft_iqr_s, r.ttft_s), ("TPOT", r.tpot_iqr_ms, r.tpot_ms)):
            if iqr is None or not median:
                continue
            spread = iqr / median
            if spread > NOISE_LIMIT:
                check.passed = False
                batch = f" x{r.batch}" if r.batch > 1 else ""
                check.lines.append(f"{r.target_tokens}{batch}: {r.method} {name} IQR {spread:.1%} of the median")
    if check.passed:
        spreads = [r.tpot_iqr_ms / r.tpot_ms for r in results if r.tpot_iqr_ms is not None and r.tpot_ms]
        spreads += [r.ttft_iqr_s / r.ttft_s for r in results if r.ttft_iqr_s is not None and r.ttft_s]
        check.lines.append(f"all {len(results)} cells within {NOISE_LIMIT:.0%} (largest {max(spreads, default=0):.2%})")
    return check


def _ranks(probes: list[dict], hardware: bool) -> Check:
    """Vanilla on every rank at each context: the spread of decode tok/s across GPUs (informational off a GPU)."""
    check = Check(f"7. GPUs: vanilla decode tok/s on every rank, spread above {NOISE_LIMIT:.0%} of the median flagged",
                  True if hardware else None)
    for context in sorted({p["target_tokens"] for p in probes}):
        speeds = {(p["rank"], p.get("host"), p.get("gpu")): p["decode_tokens_per_s"] for p in probes
                  if p["target_tokens"] == context and p.get("decode_tokens_per_s")}
        if not speeds:
            continue
        median = statistics.median(speeds.values())
        spread = (max(speeds.values()) - min(speeds.values())) / median
        slowest = min(speeds, key=speeds.get)
        flagged = hardware and spread > NOISE_LIMIT
        check.passed = False if flagged else check.passed
        check.lines.append(f"{context}: {len(speeds)} ranks, median {median:,.1f} tok/s, spread {spread:.1%}; slowest "
                           f"rank {slowest[0]} ({slowest[1]}, {slowest[2] or 'cpu'}) {speeds[slowest]:,.1f}"
                           + (" — FAIL" if flagged else ""))
    return check


def _engines(results, references: list[tuple[str, list[BenchmarkResult]]]) -> Check:
    """Each record against the same cell (identity but the engine) in the first reference file that has it."""
    check = Check(f"6. Engines against the reference: TTFT within {TTFT_TOLERANCE:.0%}, decode-phase peak no higher, "
                  "same KV bytes", True)
    ttft_failed = False
    for r in results:
        cell = r.identity(across_engines=True)
        match = next(((path, ref) for path, records in references for ref in records
                      if ref.error is None and ref.identity(across_engines=True) == cell), None)
        if match is None:
            check.lines.append(f"{r.target_tokens}: {r.method}: not in any reference file")
            continue
        path, ref = match
        ttft = r.ttft_s / ref.ttft_s - 1
        peak = r.peak_mem_decode_bytes - ref.peak_mem_decode_bytes
        ttft_off = abs(ttft) > TTFT_TOLERANCE
        ttft_failed = ttft_failed or ttft_off
        failures = [f"TTFT {ttft:+.1%}"] if ttft_off else []
        failures += [f"decode peak {_signed_bytes(peak)}"] if peak > 0 else []
        failures += ["KV bytes at the end differ"] if r.kv_cache_bytes_end != ref.kv_cache_bytes_end else []
        speed = (f"decode x{r.decode_tokens_per_s / ref.decode_tokens_per_s:.1f}"
                 if r.decode_tokens_per_s and ref.decode_tokens_per_s else "decode n/a")
        check.lines.append(f"{r.target_tokens}: {r.method:<30} {r.engine} vs {ref.engine} ({path}): TTFT {ttft:+.1%}, "
                           f"decode peak {_signed_bytes(peak)}, {speed}" + (" — FAIL: " + ", ".join(failures)
                                                                          if failures else ""))
        if failures:
            check.passed = False
    if ttft_failed:
        check.lines.append("TTFT here compares two processes; a press's host-bound prefill drifts between processes "
                           "of one engine too: compare in one process with tools/ttft_ab.py")
    return check


def _signed_bytes(n: int) -> str:
    return f"{n:+,} B" if abs(n) < 10_000 else f"{n / 1e6:+.2f} MB"


def format_checks(checks: list[Check]) -> str:
    out = []
    for c in checks:
        verdict = {True: "PASS", False: "FAIL", None: "info"}[c.passed]
        out.append(f"{c.name}: {verdict}")
        out.extend(f"  {line}" for line in c.lines)
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    """`benchmark.py check FILE [--reference HF.json ...]`."""
    parser = cli.ArgumentParser(prog="benchmark.py check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="a result file written by benchmark.py (GPU runs)")
    parser.add_argument("--reference", nargs="+", default=[], metavar="HF.json",
                        help="result files of the same cells run with another engine (the first that has a cell is "
                             "used): adds check 6, TTFT and decode-phase peak against them")

    def measured(i: int) -> str:  # the table's figures, TB/s (0) or TFLOP/s (1)
        return ", ".join(f"{card} {limits[i] / 1e12:g}" for card, limits in MEASURED_LIMITS.items())

    parser.add_argument("--bandwidth", type=float,
                        help=f"memory bandwidth for the roofline, TB/s (default: the run's GPU's as measured here - "
                             f"{measured(0)} - else the H200's)")
    parser.add_argument("--flops", type=float,
                        help=f"bf16 matrix throughput, TFLOP/s (default: the run's GPU's as measured here - "
                             f"{measured(1)} - else the H200's)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the checks; exit 1 if a pass/fail check fails."""
    for name, value in (("--bandwidth", args.bandwidth), ("--flops", args.flops)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"--bandwidth and --flops must be positive numbers (TB/s, TFLOP/s), got {name} {value:g}")
    header, results = load(args.file)
    references = [(path, load(path)[1]) for path in args.reference]
    for path, records in [(args.file, results)] + references:
        twice = duplicate_identity(records)
        if twice is not None:  # the checks pair records by cell: which of the two is meant cannot be known
            raise UserError(f"{path}: the cell {twice.method} @ {twice.target_tokens} (batch {twice.batch}) is there "
                            "twice; remove one of them")
    try:
        checks = run_checks(header, results, args.bandwidth and args.bandwidth * 1e12, args.flops and args.flops * 1e12,
                            references)
    except (ArithmeticError, KeyError, ValueError, TypeError) as exc:  # types are checked at load; values are not
        raise UserError(f"{args.file}: a record or the header holds a value check cannot use ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); was it edited by hand?") from None
    print(format_checks(checks))
    return 1 if any(c.passed is False for c in checks) else 0
