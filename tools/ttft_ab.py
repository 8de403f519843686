"""Is a TTFT difference between the two engines real? (GPU only; Qwen3-8B architecture, random weights.)

Both engines time the same code up to the first token (generate_once's prefill, compression, question and first
sample); they differ only in what the previous generation left behind. benchmark.py measures each engine in its own
process, so a TTFT difference between two files also holds whatever differs between two processes. This tool takes
that out: one process, one model, and per cell the engines alternate (fast, hf, fast, hf, ...), each time through
measure() exactly as benchmark.py calls it (warm-up, repeats, memory pass) on the same needle prompt.

Then one prefill per method under the profiler: the GPU's busy time (union of its kernel and copy intervals), the
time it sat idle within the TTFT, and the host-device synchronisations (`.item()` and friends) that the method's
code makes. An idle GPU inside the prefill is time set by the host's Python, which is what varies between processes.

    python tools/ttft_ab.py --cells expected_attention@0.5:8192,knorm@0.5:16384 --rounds 2 --repeats 3
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvcompress import models  # noqa: E402
from kvcompress.cli import parse_contexts  # noqa: E402
from kvcompress.engine import measure  # noqa: E402
from kvcompress.engine.fast.decoder import FastDecoder  # noqa: E402
from kvcompress.engine.generate import GenerationSettings, HFDecoder, generate_once  # noqa: E402
from kvcompress.engine.sampling import SamplingConfig  # noqa: E402
from kvcompress.engine.timing import measurement_stream  # noqa: E402
from kvcompress.errors import UserError  # noqa: E402
from kvcompress.methods import parse_method  # noqa: E402
from kvcompress.tasks.cell import Cell  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")  # ops that wait for the device


def parse_cells(text: str) -> list[tuple[str, int]]:
    cells = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        method, _, tokens = item.rpartition(":")
        if not method:
            raise SystemExit(f"--cells: {item!r} must look like method:tokens (e.g. knorm@0.5:16K)")
        try:
            cells.append((method, parse_contexts(tokens)[0]))
        except UserError as exc:
            raise SystemExit(f"--cells: {exc}") from None
    return cells


def busy_seconds(intervals: list[tuple[int, int]]) -> float:
    """Length of the union of [start, end) intervals in nanoseconds, as seconds."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total / 1e9


def profile_prefill(lm, method, prompt, settings) -> str:
    """One prefill (max_new_tokens=1) under the profiler: TTFT, GPU busy and idle time, host syncs."""
    from torch.profiler import ProfilerActivity, profile

    one = GenerationSettings(max_new_tokens=1, sampling=settings.sampling)
    decoder = HFDecoder()
    with measurement_stream(lm.device):
        generate_once(lm, method, prompt, one, decoder)  # warm
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            g = generate_once(lm, method, prompt, one, decoder)
    device_intervals, syncs = [], 0
    for event in prof.profiler.kineto_results.events():
        if event.device_type() == torch.autograd.DeviceType.CUDA:
            device_intervals.append((event.start_ns(), event.start_ns() + event.duration_ns()))
        elif event.name() in SYNC_OPS:
            syncs += 1
    busy = busy_seconds(device_intervals)
    return (f"TTFT {g.ttft_s * 1e3:7.1f} ms (profiled), GPU busy {busy * 1e3:7.1f} ms, idle "
            f"{(g.ttft_s - busy) * 1e3:6.1f} ms, host syncs {syncs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", required=True, help="comma-separated method:context, e.g. knorm@0.5:16K")
    parser.add_argument("--rounds", type=int, default=2, help="fast/hf alternations per cell")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per measure() call")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    cells = parse_cells(args.cells)
    device = torch.device("cuda")
    lm = models.load(models.MODELS["qwen3-8b"], device=device, random_weights=True)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, sampling=SamplingConfig())
    decoders = (FastDecoder(lm), HFDecoder())
    prompts = {tokens: Cell(tokens).build(lm.tokenizer)[0] for _, tokens in cells}
    print(f"{args.rounds} rounds of fast, hf per cell; {args.repeats} repeats each; {args.max_new_tokens} new tokens")
    for text, tokens in cells:
        method, prompt = parse_method(text), prompts[tokens]
        method = method.prepare(lm, prompt)  # random weights: DMS's thresholds calibrated here, as the runner does
        samples = {d.name: [] for d in decoders}
        for _ in range(args.rounds):
            for decoder in decoders:
                record = measure(lm, method, prompt, settings, decoder, repeats=args.repeats)
                samples[decoder.name].extend(record.ttft_samples_s)
                ms = ", ".join(f"{s * 1e3:.0f}" for s in record.ttft_samples_s)
                print(f"  {text} @ {tokens} {decoder.name:4s}: TTFT ms [{ms}]", flush=True)
        fast, hf = (statistics.median(samples[n]) for n in ("fast", "hf"))
        print(f"{text} @ {tokens}: median TTFT fast {fast * 1e3:.1f} ms, hf {hf * 1e3:.1f} ms, "
              f"fast vs hf {100 * (fast / hf - 1):+.1f}%", flush=True)
    if args.no_profile:
        return
    for text in dict.fromkeys(["vanilla"] + [m for m, _ in cells]):
        tokens = next((t for m, t in cells if m == text), cells[0][1])
        try:
            method = parse_method(text).prepare(lm, prompts[tokens])
            print(f"profile {text} @ {tokens}: {profile_prefill(lm, method, prompts[tokens], settings)}",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - the A/B figures above are already printed
            print(f"profile {text} @ {tokens}: failed: {type(exc).__name__}: {str(exc)[:200]}")


if __name__ == "__main__":
    main()
