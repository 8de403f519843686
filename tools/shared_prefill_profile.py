"""GPU only (issue 23): where a 4K shared prefill's time goes (Qwen3-8B architecture, random weights).
Times, CUDA-synchronised (median of 5 after a warm-up): the prefill with vanilla alone (the model's forward + one cache
copy a layer), each scorer family alone (both ratios), and all 9 methods; then one torch.profiler trace of the 9-method
prefill: the host ops by self CPU time, the kernels by device time, and the device's busy share of the wall.
`python tools/shared_prefill_profile.py [--trace OUT.json]` from the repository root."""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kvcompress import models  # noqa: E402
from kvcompress.engine import shared_prefill  # noqa: E402
from kvcompress.methods import parse_method  # noqa: E402

SETS = {
    "vanilla": ["vanilla"],
    "knorm": ["knorm@0.5", "knorm@0.875"],
    "snapkv": ["snapkv@0.5", "snapkv@0.875"],
    "expected_attention": ["expected_attention@0.5", "expected_attention@0.875"],
    "streaming_llm": ["streaming_llm@0.5", "streaming_llm@0.875"],
}
SETS["all 9"] = [m for names in SETS.values() for m in names]

parser = argparse.ArgumentParser()
parser.add_argument("--trace", help="write a Chrome trace of the 9-method prefill here")
parser.add_argument("--tokens", type=int, default=4096)
args = parser.parse_args()
lm = models.load(models.MODELS["qwen3-8b"], device=torch.device("cuda"), random_weights=True)
ids = torch.randint(0, 150000, (1, args.tokens), generator=torch.Generator().manual_seed(0))


def methods_of(names):
    return [parse_method(m).for_context(args.tokens, lm.model, args.tokens) for m in names]


def run(methods):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = shared_prefill.prefill_shared(lm, methods, ids)
    torch.cuda.synchronize()
    del out
    return time.perf_counter() - start


for label, names in SETS.items():
    methods = methods_of(names)
    run(methods)
    times = [run(methods) for _ in range(5)]
    print(f"{label:>20}: median {statistics.median(times) * 1e3:7.1f} ms  min {min(times) * 1e3:7.1f}  "
          f"max {max(times) * 1e3:7.1f}  ({len(names)} method(s), {args.tokens} tokens)", flush=True)

methods = methods_of(SETS["all 9"])
run(methods)
from torch.profiler import ProfilerActivity, profile  # noqa: E402
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    wall = run(methods)
events = prof.key_averages()
device_total = sum(e.self_device_time_total for e in events) / 1e3
print(f"profiled 9-method prefill: wall {wall * 1e3:.1f} ms (profiler on), kernels' device time {device_total:.1f} ms "
      f"({100 * device_total / (wall * 1e3):.0f} % of the wall)")
print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
print(events.table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=60))
if args.trace:
    prof.export_chrome_trace(args.trace)
