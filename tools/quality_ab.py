"""How much faster is a quality run than the measured path, and how close is its prefill to the FLOP ideal? (GPU.)

A/B (default): one process, one model; the grid that test_long_context.py would run for the arguments after `--`
is answered twice, first in quality mode (run/quality.py), then in measured mode (runner's per-cell path: warm-up,
--repeats, memory pass, a prefill per method), each timed by the host's wall clock around the whole pass (model
load and one untimed quality answer per method beforehand, which imports kvpress, excluded), then their answers and
KV bytes compared pair by pair. Both decode --max-new-tokens per answer (the measured path's budget; a quality run
otherwise uses each task's own tokens_to_generate). Prints answers/s of each and their ratio, and writes both result files and a summary
JSON.

--prefill N: for N samples per context of the same grid, the plain prefill of the context (CUDA events) and the
shared prefill that serves every joining method of --methods, against the FLOP ideal `benchmark.py check` prints
(2 FLOP per weight per token + causal attention, at the H200's measured bf16 rate).

    python tools/quality_ab.py --out-dir results/h200/quality -- --model qwen3-8b --random-weights \\
        --tasks cheap --contexts 4K --samples 1 --methods vanilla,knorm@0.5,snapkv@0.5
    python tools/quality_ab.py --prefill 3 --out-dir results/h200/quality -- --model qwen3-8b --random-weights \\
        --tasks cheap --contexts 32K --samples 3 --methods vanilla,knorm@0.5,snapkv@0.5
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvcompress.commands import long_context  # noqa: E402
from kvcompress.commands.checks import BF16_FLOPS, prefill_flops  # noqa: E402
from kvcompress.errors import UserError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill", type=int, default=0, metavar="N", help="time N samples' prefills per context "
                        "instead of the A/B")
    parser.add_argument("--out-dir", type=Path, default=Path("results/quality_ab"))
    parser.add_argument("--answer-batch", type=int, default=None, help="quality mode's --answer-batch")
    parser.add_argument("grid", nargs=argparse.REMAINDER, help="-- then test_long_context.py's arguments")
    args = parser.parse_args(argv)
    grid = args.grid[1:] if args.grid[:1] == ["--"] else args.grid
    try:
        cfg, cells, _ = long_context._grid(long_context.build_parser().parse_args(grid))
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    if any(m.runs_in_child or m.needs_dms_checkpoint for m in cfg.methods):
        print("error: the A/B runs in this process on --model: leave dms-8x-remote and checkpoint runs out")
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from kvcompress.run import runner  # torch: once the arguments are good

    with runner.tiny_threads(cfg):
        lm = runner._load_main(cfg)
        summary = prefill_probe(cfg, lm, cells, args.prefill) if args.prefill else ab(cfg, lm, cells, args)
    summary["grid"] = grid
    path = args.out_dir / ("prefill.json" if args.prefill else "ab.json")
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


def ab(cfg, lm, cells, args) -> dict:
    from kvcompress.results import ResultFile
    from kvcompress.run import quality, runner

    # warm-up, untimed: kvpress's import (seconds, on the first press built), kernels, the allocator
    warm = ResultFile(args.out_dir / "ab-warmup.json", {})
    quality.run_local(cfg, lm, cfg.methods, cells[:1], "long_context", warm, None, {"done": 0, "total": 0},
                      runner.make_decoders(cfg, lm), 1)
    (args.out_dir / "ab-warmup.json").unlink(missing_ok=True)
    out, files = {}, {}
    for mode in ("quality", "measured"):
        path = args.out_dir / f"ab-{mode}.json"
        path.unlink(missing_ok=True)
        file = ResultFile(path, runner.header_of(cfg, {"mode": mode}, task="long_context"))
        file.run.update(model=lm.name, weights=lm.weights)
        total = len(cells) * len(cfg.methods)
        progress = {"done": 0, "total": total}
        _sync(lm)
        start = time.monotonic()
        if mode == "quality":
            # the measured path decodes --max-new-tokens for every task: the same work here, whatever a task's own
            # tokens_to_generate (random weights never stop at end-of-sequence)
            quality.budget_of = lambda needle, settings: settings.max_new_tokens
            quality.run_local(cfg, lm, cfg.methods, cells, "long_context", file, None, progress,
                              runner.make_decoders(cfg, lm), args.answer_batch)
        else:
            runner._run_local(cfg, lm, cfg.methods, cells, "long_context", file, None, progress)
        _sync(lm)
        wall = time.monotonic() - start
        files[mode] = file.results
        answers = sum(r.error is None for r in file.results)
        out[mode] = {"answers": answers, "errors": len(file.results) - answers, "wall_s": round(wall, 3),
                     "answers_per_s": round(answers / wall, 3), "file": str(path)}
        print(f"{mode}: {answers} answers in {wall:.1f} s = {answers / wall:.2f} answers/s")
    out["speedup"] = round(out["quality"]["answers_per_s"] / out["measured"]["answers_per_s"], 2)
    out["agreement"] = agreement(files["quality"], files["measured"])
    print(f"same answer in both modes: {out['agreement']['same_answer']}/{out['agreement']['pairs']} pairs; same KV "
          f"bytes: {out['agreement']['same_kv_bytes']}/{out['agreement']['pairs']} (batched decode may part from "
          "batch 1 by rounding, where two tokens' logits tie within bf16); alike for the first "
          f"{out['agreement']['common_prefix_chars_median']} characters of {out['agreement']['answer_chars_median']} "
          "(medians)")
    print(f"quality / measured: x{out['speedup']:.1f} answers/s (host wall clock, model load excluded, "
          f"{lm.device}, {len(cells)} samples x {len(cfg.methods)} methods)")
    return out


def agreement(quality, measured) -> dict:
    """Pairs of records of one (method, prompt) in both modes: how many give the same answer and the same KV bytes
    (the same greedy tokens: the quality path computes what the measured one does, the batch aside)."""
    def key(r):
        return r.method, r.target_tokens, r.depth, r.prompt_id

    by_key = {key(r): r for r in measured if r.error is None}
    pairs = [(q, by_key[key(q)]) for q in quality if q.error is None and key(q) in by_key]
    differ = [f"{q.method} {q.prompt_id}: {q.answer!r} vs {m.answer!r}" for q, m in pairs if q.answer != m.answer]
    # how far two answers run alike before they part (random weights: near-tied logits part them within a few tokens)
    prefix = [len(os.path.commonprefix([q.answer or "", m.answer or ""])) for q, m in pairs]
    return {"pairs": len(pairs), "same_answer": len(pairs) - len(differ),
            "same_kv_bytes": sum(q.kv_cache_bytes == m.kv_cache_bytes for q, m in pairs),
            "common_prefix_chars_median": statistics.median(prefix) if prefix else None,
            "answer_chars_median": statistics.median(len(q.answer or "") for q, _ in pairs) if pairs else None,
            "differ": differ[:20]}


def prefill_probe(cfg, lm, cells, n: int) -> dict:
    import torch

    from kvcompress.architecture import architecture_of
    from kvcompress.engine.shared_prefill import prefill_shared
    from kvcompress.engine.timing import Stopwatch
    from kvcompress.run.one_cell import free_memory

    arch = architecture_of(lm.model.config)
    by_context: dict[int, list] = {}
    for cell in cells:
        if len(by_context.setdefault(cell.target_tokens, [])) < n:
            by_context[cell.target_tokens].append(cell)
    rows = []
    for target, group in sorted(by_context.items()):
        for cell in group:
            prompt = cell.build(lm.tokenizer)[0]
            context = prompt.context_ids.to(lm.device)
            joiners = [m.for_context(prompt.context_tokens, lm.model, target) for m in cfg.methods
                       if m.joins_shared_prefill]
            times = {}
            for name, work in (("plain", lambda: _plain(lm, context)),
                               ("shared", lambda: prefill_shared(lm, joiners, prompt.context_ids))):
                work()  # warm-up (kernels, allocator), then one timed run
                free_memory()
                clock = Stopwatch(lm.device)
                clock.start()
                kept = work()
                clock.mark("end")
                times[name] = clock.seconds("start", "end")
                del kept
                free_memory()
            linear, attention = prefill_flops(arch, prompt.context_tokens)
            ideal = (linear + attention) / BF16_FLOPS
            rows.append({"target_tokens": target, "context_tokens": prompt.context_tokens, "ideal_s": ideal,
                         "plain_s": times["plain"], "shared_s": times["shared"], "methods_served": len(joiners)})
            print(f"{prompt.context_tokens} tokens: plain prefill {times['plain']:.3f} s = "
                  f"x{times['plain'] / ideal:.2f} "
                  f"of the {ideal:.3f} s FLOP ideal; shared prefill for {len(joiners)} methods {times['shared']:.3f} s "
                  f"(x{times['shared'] / times['plain']:.2f} of the plain one)")
    return {"rows": rows, "flops_per_s": BF16_FLOPS, "device": str(lm.device), "torch": torch.__version__,
            "median_plain_over_ideal": statistics.median(r["plain_s"] / r["ideal_s"] for r in rows)}


def _plain(lm, context):
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache()
        lm.model.model(input_ids=context, past_key_values=cache, use_cache=True)
    return cache


def _sync(lm) -> None:
    import torch

    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


if __name__ == "__main__":
    sys.exit(main())
