"""GPU (issue 23): the quality decode's forced question tokens, fed in one forward (engine/fast/forced_prefill.py)
against one decode step each, on one batch: B rows of a C-token context compressed by --method (one shared prefill,
its cache copied to every row), a Q-token question per row, --budget answer tokens. Each way is timed around the
whole answer_compressed call (CUDA-synchronised, median of --repeats after a warm-up); the feed itself is also timed
alone. Qwen3-8B architecture with random weights (speed is real, tokens are noise).

    python tools/forced_feed_ab.py --rows 68 --context 2048 --question 40 --budget 8 --method knorm@0.5
    python tools/forced_feed_ab.py --smoke    # CPU, the tiny model: runs both ways once and compares the tokens
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kvcompress import models  # noqa: E402
from kvcompress.engine import GenerationSettings  # noqa: E402
from kvcompress.engine.fast import forced_prefill  # noqa: E402
from kvcompress.engine.fast.decoder import FastDecoder  # noqa: E402
from kvcompress.engine.generate import Prompt  # noqa: E402
from kvcompress.engine.quality import answer_compressed  # noqa: E402
from kvcompress.engine.sampling import SamplingConfig  # noqa: E402
from kvcompress.engine.shared_prefill import prefill_shared  # noqa: E402
from kvcompress.methods import parse_method  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=68)
parser.add_argument("--context", type=int, default=2048)
parser.add_argument("--question", type=int, default=40)
parser.add_argument("--budget", type=int, default=8)
parser.add_argument("--method", default="knorm@0.5")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--smoke", action="store_true")
args = parser.parse_args()
if args.smoke:
    args.rows, args.context, args.question, args.budget, args.repeats = 3, 200, 12, 4, 1
device = torch.device("cpu" if args.smoke else "cuda")
spec = models.MODELS["tiny" if args.smoke else "qwen3-8b"]
lm = models.load(spec, device=device, random_weights=not args.smoke)
vocab = lm.model.config.vocab_size
ids = torch.randint(0, vocab, (1, args.context + args.question), generator=torch.Generator().manual_seed(0))
prompt = Prompt(ids[:, :args.context], ids[:, args.context:])
method = parse_method(args.method).for_context(args.context, lm.model, args.context)
template = prefill_shared(lm, [method], prompt.context_ids)[method.name]
settings = GenerationSettings(args.budget, SamplingConfig(greedy=True), fixed_length=True)
decoder = FastDecoder(lm)
real_feed, real_steps = forced_prefill.feed_forced, forced_prefill.forced_steps
feed_times = []


def timed_feed(state, e):
    sync()
    start = time.perf_counter()
    real_feed(state, e)
    sync()
    feed_times.append(time.perf_counter() - start)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def answer(fed: bool) -> tuple[float, list]:
    forced_prefill.forced_steps = real_steps if fed else (lambda answer_from, steps: 0)
    caches = [copy.copy(template) for _ in range(args.rows)]
    for c in caches:
        c.cache = copy.deepcopy(template.cache)
    sync()
    start = time.perf_counter()
    got = answer_compressed(lm, caches, [prompt] * args.rows, [args.budget] * args.rows, settings, decoder)
    sync()
    return time.perf_counter() - start, [a.token_ids for a in got]


forced_prefill.feed_forced = timed_feed
results = {}
for fed in (True, False):
    answer(fed)  # warm-up: compiles, cuBLAS
    runs = [answer(fed) for _ in range(args.repeats)]
    results[fed] = (statistics.median(t for t, _ in runs), runs[-1][1])
e = real_steps([args.question] * args.rows, args.question + args.budget)
print(f"{args.rows} rows x {args.context} context tokens ({args.method}), question {args.question}, budget "
      f"{args.budget}, {lm.name} on {device.type}: fed at once ({e} steps) {results[True][0]:.3f} s, feed alone "
      f"{statistics.median(feed_times):.3f} s; every step single {results[False][0]:.3f} s; same tokens: "
      f"{results[True][1] == results[False][1]}")
