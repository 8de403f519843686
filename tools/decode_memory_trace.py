"""Which allocations make up each engine's decode-phase peak? (GPU only; Qwen3-8B architecture, random weights.)

Runs measure()'s memory pass (after a warm-up and a release, as benchmark.py does) once per engine and method with
PyTorch's allocator history on, replays the history from the moment the decode phase starts (the second peak reset
of generate_once) and prints, at the phase's peak: how far above the phase's start it is, which new blocks are
alive there (grouped by the line of Python that allocated them) and how many of the bytes held at the start have
been freed by then. The replay counts requested sizes; the allocator's own peak (first line) counts whole blocks,
so the two differ by the blocks' unused remainders.

    python tools/decode_memory_trace.py --context 8192 --new-tokens 32 --methods vanilla,knorm@0.875

Seen on an H200 (8K, 32 new tokens): both engines' peaks are the KV cache grown to its final length plus one layer's
keys in transit (transformers' torch.cat in the hf engine; the copy into the static buffers in the fast engine):
vanilla +21.80 MB (hf) vs +22.55 MB (fast; 1.08 MB of it the split-K workspace, at 33f4b42). A captured graph's
recording peaks at +5.5 MB and keeps nothing allocated (a capture-only probe at 1252ed6). The peak grows with the
output length (the cache's final size), so engines must be compared at the same --max-new-tokens.
"""

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvcompress import models  # noqa: E402
from kvcompress.engine import generate as generate_module  # noqa: E402
from kvcompress.engine.fast.decoder import FastDecoder  # noqa: E402
from kvcompress.engine.generate import GenerationSettings, HFDecoder, Prompt, generate_once  # noqa: E402
from kvcompress.engine.measure import _release  # noqa: E402
from kvcompress.engine.sampling import SamplingConfig  # noqa: E402
from kvcompress.engine.timing import measurement_stream  # noqa: E402
from kvcompress.memory import PhasePeaks  # noqa: E402
from kvcompress.methods import parse_method  # noqa: E402

MARKER_BYTES = 3 * 1024 * 1024 + 512 * 7  # a size nothing else allocates: marks each peak reset in the history
MB = 1e6


class MarkedPeaks(PhasePeaks):
    resets: list[int] = []

    def reset(self) -> None:
        torch.cuda.synchronize()
        MarkedPeaks.resets.append(torch.cuda.memory_allocated())
        torch.empty(MARKER_BYTES, dtype=torch.uint8, device="cuda")  # allocated and freed at once: the marker
        super().reset()


def where(frames) -> str:
    for frame in frames:
        name = frame["filename"]
        if "/torch/" not in name and "decode_memory_trace" not in name:
            return f"{Path(name).name}:{frame['line']} {frame['name']}"
    return "torch internals"


def decode_phase_peak(trace) -> None:
    markers = [i for i, e in enumerate(trace) if e["action"] == "alloc" and e["size"] == MARKER_BYTES]
    start = markers[-1]
    alive: dict[int, tuple[int, str]] = {}
    for e in trace[:start]:
        if e["action"] == "alloc":
            alive[e["addr"]] = (e["size"], "before")
        elif e["action"] == "free_requested":
            alive.pop(e["addr"], None)
    before = set(alive)
    level = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    freed_at_peak = freed = 0
    for e in trace[start + 1:]:
        if e["action"] == "alloc":
            alive[e["addr"]] = (e["size"], where(e.get("frames", [])))
            level += e["size"]
        elif e["action"] == "free_requested" and e["addr"] in alive:
            size, _ = alive.pop(e["addr"])
            level -= size
            if e["addr"] in before:
                freed += size
                before.discard(e["addr"])
        else:
            continue
        if level > peak:
            peak, freed_at_peak = level, freed
            at_peak = {a: v for a, v in alive.items() if v[1] != "before"}
    groups = collections.Counter()
    for size, site in at_peak.values():
        groups[site] += size
    new = sum(groups.values())
    print(f"  peak {peak / MB:+.2f} MB over the phase start = new blocks alive {new / MB:.2f} MB "
          f"- start blocks freed {freed_at_peak / MB:.2f} MB")
    for site, size in groups.most_common(12):
        print(f"    {size / MB:9.3f} MB  {site}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--methods", default="vanilla")
    args = parser.parse_args()
    device = torch.device("cuda")
    lm = models.load(models.MODELS["qwen3-8b"], device=device, random_weights=True)
    generate_module.PhasePeaks = MarkedPeaks
    ids = torch.randint(1000, 100000, (1, args.context + 24), generator=torch.Generator().manual_seed(0))
    prompt = Prompt(ids[:, :args.context], ids[:, args.context:])
    settings = GenerationSettings(max_new_tokens=args.new_tokens, sampling=SamplingConfig())
    for text in args.methods.split(","):
        method = parse_method(text)
        for decoder in (HFDecoder(), FastDecoder(lm)):
            with measurement_stream(device):
                generate_once(lm, method, prompt, settings, decoder)  # warm-up
                _release(decoder)
                MarkedPeaks.resets.clear()
                torch.cuda.memory._record_memory_history(max_entries=2_000_000, context="alloc", stacks="python")
                g = generate_once(lm, method, prompt, settings, decoder)
                trace = torch.cuda.memory._snapshot()["device_traces"][device.index or 0]
                torch.cuda.memory._record_memory_history(enabled=None)
                _release(decoder)
            start = MarkedPeaks.resets[-1]
            print(f"{text} {decoder.name}: decode-phase peak {g.peak_decode / 1e9:.4f} GB "
                  f"= phase start {start / 1e9:.4f} GB {(g.peak_decode - start) / MB:+.2f} MB")
            decode_phase_peak(trace)


if __name__ == "__main__":
    main()
