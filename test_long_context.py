"""Needle in a haystack at 8K-32K: does a method still find what the context says, and what does it cost?

    uv run python test_long_context.py                              # Qwen3-8B, 8K/16K/32K x 3 depths x 3 trials
    uv run python test_long_context.py --haystack paul_graham --needle multikey --depths 0,0.25,0.5,0.75,1
    uv run python test_long_context.py --thinking                   # Qwen3 thinking mode (4096-token budget)
    uv run python test_long_context.py --model smollm2 --contexts 1K,2K --methods vanilla,snapkv@0.5   # CPU, real
    uv run python test_long_context.py --preset tiny                # CPU pipeline check
"""

import re
import sys

from kvcompress import cli
from kvcompress.errors import UserError
from kvcompress.tasks import niah_grid
from kvcompress.tasks.niah import NEEDLE_KINDS

PRESSES = "knorm,expected_attention,snapkv,streaming_llm"
DEFAULTS = cli.Defaults(methods="vanilla,dms-8x," + ",".join(f"{p}@{r}" for r in (0.5, 0.875) for p in PRESSES.split(",")),
                        contexts="8K,16K,32K", max_new_tokens=128, repeats=1)
TINY = cli.Defaults(methods="vanilla,dms-8x,knorm@0.5,streaming_llm@0.5", contexts="512,1K", max_new_tokens=16,
                    repeats=1, dms_model="tiny-dms")
DESCRIPTION = (
    "Needle-in-a-haystack retrieval on the same engine as benchmark.py: every method x context length x needle "
    "depth x trial is one generation, recorded with its speed and memory. A trial is one needle (its own key and "
    "7-digit values); its answer counts as found when it contains every value as a whole number (thinking "
    "removed, verbosity fine) and no distractor's value. Prints found/trials per cell, writes the JSON and one "
    "depth x length heatmap PNG per method. End-of-sequence ends each answer (its length is recorded); answers "
    "are greedy unless --thinking or --sample."
)


@cli.main
def main(argv=None) -> int:
    parser = cli.parser("test_long_context.py", DESCRIPTION, DEFAULTS, tiny=TINY, hidden=("batch", "admission"))
    g = parser.add_argument_group("needle in a haystack")
    g.add_argument("--depths", default=niah_grid.DEFAULT_DEPTHS, help="needle depths as fractions of the haystack's "
                   f"tokens or percentages, snapped back to a sentence start (default {niah_grid.DEFAULT_DEPTHS})")
    g.add_argument("--trials", type=int, default=None, help="needles per cell, each with its own key, values and "
                   "seed (default 3; tiny: 1)")
    g.add_argument("--needle", default="single", choices=list(NEEDLE_KINDS), help="; ".join(
        f"{k}: {v}" for k, v in NEEDLE_KINDS.items()) + " (default single)")
    g.add_argument("--needles", type=int, default=4, help="keys (multikey) or values (multivalue) per prompt "
                   "(default 4)")
    g.add_argument("--thinking", action="store_true", help="Qwen3 thinking mode (default off, as kvpress); the "
                   f"output budget defaults to {niah_grid.THINKING_BUDGET} and must be at least "
                   f"{niah_grid.MIN_THINKING_BUDGET} so a think block can finish")
    g.add_argument("--sample", action="store_true", help="sample with --temperature/--top-p instead of greedy "
                   "(the default with --thinking, as Qwen3 advises)")
    args = parser.parse_args(argv)
    depths = niah_grid.parse_depths(args.depths)
    if args.sample and args.greedy:
        raise UserError("--sample and --greedy contradict each other")
    args.greedy = args.greedy or not (args.sample or args.thinking)
    if args.thinking and args.max_new_tokens is None:
        args.max_new_tokens = niah_grid.THINKING_BUDGET
    cfg = cli.resolve(args, "long_context", fixed_length=False)
    if args.thinking and cfg.settings.max_new_tokens < niah_grid.MIN_THINKING_BUDGET:
        raise UserError(f"--thinking needs --max-new-tokens >= {niah_grid.MIN_THINKING_BUDGET} (a cut-off think "
                        "block is scored as no answer)")
    args.trials = args.trials if args.trials is not None else (1 if cfg.preset == "tiny" else 3)
    cells = niah_grid.grid_cells(cfg.contexts, depths, args.trials, kind=args.needle, count=args.needles,
                                 haystack=cfg.haystack, thinking=args.thinking, seed=cfg.settings.sampling.seed)
    grid = {"depths": depths, "trials": args.trials, "needle": args.needle, "needles": args.needles,
            "haystack": cfg.haystack, "thinking": args.thinking}
    from kvcompress import plots, report, runner  # torch, transformers, matplotlib: once the arguments are good

    out = runner.run(cfg, cells, task="long_context", header_extra={"niah": grid})

    summaries = niah_grid.summarize(niah_grid.select(out.results, cells, [m.name for m in cfg.methods]))
    model = out.run.get("model") or cfg.spec.name  # no local method ran: the DMS records name their own model
    weights = out.run.get("weights") or next((r.weights for s in summaries for r in s.records), "?")
    what = (f"{args.needle} needle, {cfg.haystack} haystack, {'thinking' if args.thinking else 'no thinking'}, "
            f"{cfg.settings.sampling.describe()}")
    report.print_niah(summaries, f"needle in a haystack — {model} ({weights}), {what}")
    for method, method_cells in niah_grid.by_method(summaries).items():
        path = cfg.out.with_name(f"{cfg.out.stem}-heatmap-{re.sub(r'[^A-Za-z0-9_.@=-]+', '_', method)}.png")
        plots.retrieval_heatmap({(s.target_tokens, s.depth): (s.found, s.total) for s in method_cells}, path,
                                f"{method} — {model}\n{what}")
        runner.console.print(f"wrote {path}")
    runner.console.print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
