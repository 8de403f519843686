"""test_dms_inference.py: vanilla and DMS-8x side by side on the same prompts, same seed, same sampling."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from kvcompress import cli, report
from kvcompress.tasks import prompts

DESCRIPTION = (
    "Run vanilla and DMS-8x on the same prompts (a short chat question, a needle prompt per --contexts length, a "
    "reasoning prompt with thinking on) with the same seed and sampling, and print them side by side: answers, "
    "TTFT, decode tok/s, phase peaks, KV bytes held and live, and the achieved ratio. Every method prefills the "
    "whole prompt in one forward (DMS-8x allows one prefill per cache) and decodes in transformers' own loop "
    "(--engine hf by default). dms-8x is DMS's rule run by kvcompress on transformers' Qwen3 (the checkpoint loaded "
    "without remote code); dms-8x-remote is the checkpoint's own code, in a process where kvpress is never "
    "imported, included by default where flash-attn is installed (tiny: the tiny DMS fixture). With both, their "
    "agreement is printed (live entries per head, answers)."
)
# The remote code imports flash-attn: compare against it only where it can run.
GPU_METHODS = "vanilla,dms-8x" + (",dms-8x-remote" if importlib.util.find_spec("flash_attn") else "")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("test_dms_inference.py", DESCRIPTION,
                        cli.Defaults(methods=GPU_METHODS, contexts="8K", max_new_tokens=512, repeats=1),
                        tiny=cli.Defaults(methods="vanilla,dms-8x,dms-8x-remote", contexts="512", max_new_tokens=24, repeats=1,
                                          dms_model="tiny-dms"),
                        hidden=("query_aware",))
    parser.set_defaults(engine="hf")
    parser.add_argument("--prompts", type=Path, default=None, help="your prompts instead of the built-in ones: "
                        'JSON Lines, {"prompt": "...", "id": "name", "thinking": false} per line (a plain line is '
                        "one prompt)")
    return parser


def run(args: argparse.Namespace) -> int:
    args.query_aware = True  # one prefill of the whole prompt for every method, as DMS-8x must
    cfg = cli.resolve(args, "dms_inference")
    from kvcompress.run import runner  # torch and transformers: only once the arguments are good

    cells = (prompts.load_cells(args.prompts) if args.prompts else
             prompts.builtin_cells(cfg.contexts, cfg.settings.sampling.seed, cfg.haystack))
    out = runner.run(cfg, cells, task="dms_inference")
    report.print_side_by_side(out.results, f"{out.run.get('model')} vs {cfg.dms_model}, "
                              f"{cfg.settings.sampling.describe()}, {cfg.settings.max_new_tokens} output tokens")
    report.print_dms_agreement(out.results)
    runner.console.print(f"wrote {cfg.out}")
    return runner.exit_status(out)
