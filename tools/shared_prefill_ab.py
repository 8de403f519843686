"""GPU only (issue 23): the shared prefill of one 4K context for 9 methods (Qwen3-8B architecture, random weights)
with the presses' cache positions on the device (before engine/shared_prefill.host_positions: kvpress's
is_prefilling waits on the GPU once per press and layer) and on the host, alternately, CUDA-synchronised, 5 timed
runs each after one warm-up. `python tools/shared_prefill_ab.py` from the repository root."""
import statistics
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from kvcompress import models  # noqa: E402
from kvcompress.engine import shared_prefill  # noqa: E402
from kvcompress.methods import parse_method  # noqa: E402

METHODS = ("vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,"
           "expected_attention@0.875,streaming_llm@0.875").split(",")
lm = models.load(models.MODELS["qwen3-8b"], device=torch.device("cuda"), random_weights=True)
ids = torch.randint(0, 150000, (1, 4096), generator=torch.Generator().manual_seed(0))
methods = [parse_method(m).for_context(4096, lm.model, 4096) for m in METHODS]
host = shared_prefill.host_positions
device = lambda n: torch.arange(n, device=lm.device)  # noqa: E731
times = {"device": [], "host": []}
for rep in range(6):
    for name, fn in (("device", device), ("host", host)):
        shared_prefill.host_positions = fn
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = shared_prefill.prefill_shared(lm, methods, ids)
        torch.cuda.synchronize()
        if rep:
            times[name].append(time.perf_counter() - start)
        kept = [out[m.name].cache.get_seq_length() for m in methods]
        del out
for name, t in times.items():
    print(f"positions on the {name}: median {statistics.median(t):.3f} s, min {min(t):.3f}, max {max(t):.3f} "
          f"(5 runs, 9 methods, 4096 tokens); kept {kept}")
