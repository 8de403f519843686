"""test_long_context.py: needle in a haystack and RULER-style tasks at 8K-32K, with their tables and figures."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from kvcompress import cli, quality, report, samples
from kvcompress.errors import UserError
from kvcompress.readings import by_method
from kvcompress.results import median_kv_bytes
from kvcompress.run.equal_memory import matched_methods
from kvcompress.tasks import families, niah_grid
from kvcompress.tasks.niah import NEEDLE_KINDS

PRESSES = "knorm,expected_attention,snapkv,streaming_llm"
DEFAULTS = cli.Defaults(methods="vanilla,dms-8x," + ",".join(f"{p}@{r}" for r in (0.5, 0.875) for p in PRESSES.split(",")),
                        contexts="8K,16K,32K", max_new_tokens=128, repeats=1)
# tiny's byte tokenizer: multiquery's four needles, question and answer prefix alone take ~700 tokens
TINY = cli.Defaults(methods="vanilla,dms-8x,knorm@0.5,streaming_llm@0.5", contexts="1K,2K", max_new_tokens=16,
                    repeats=1, dms_model="tiny-dms")
DESCRIPTION = (
    "Long-context quality on the same engine as benchmark.py: every method x context length x depth x trial x task "
    "is one answer. By default (--mode quality) each is answered once, nothing timed: one prefill per sample serves "
    "every method that compresses after it, samples of one length are decoded together, a killed run resumes per "
    "sample (--resume) and progress shows the time left; --mode measured times every cell as benchmark.py does "
    "(speed and memory). By default the cheap task set (" + families.CHEAP +
    "), scored with RULER's string_match_all / string_match_part: a table of mean score per task x method x "
    "context, the answer-length change against vanilla, heatmaps (depth x length per task with a depth grid and "
    "method; task x length per method for the tasks without one) and an "
    "accuracy-vs-KV-bytes plot of all methods. --tasks niah runs the needle alone: a trial is one needle (its own "
    "key and 7-digit values), found when the answer contains every value as a whole number (thinking removed, "
    "verbosity fine) and no distractor's value; it prints found/trials per cell and one depth x length heatmap PNG "
    "per method. End-of-sequence ends each answer (its length is recorded); answers are greedy unless --thinking "
    "or --sample."
)


def build_parser() -> argparse.ArgumentParser:
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
    t = parser.add_argument_group("tasks and equal memory")
    t.add_argument("--tasks", default="cheap", help="task families, comma-separated: " + "; ".join(
        f"{k}: {v}" for k, v in families.FAMILIES.items()) + f" (default cheap = {families.CHEAP}; niah alone prints "
        "the found/trials table)")
    t.add_argument("--questions", type=int, default=1, help="K questions per context, all answered from one "
                   "compression (the cache cropped back to the compressed context after each answer); records per "
                   "question, the compression time counted once (default 1; K > 1 is a path of its own, --mode "
                   "does not apply)")
    t.add_argument("--qa-data", type=Path, metavar="DIR", help="a folder with RULER's squad.json and/or hotpotqa.json "
                   "(SQuAD v2 dev, HotpotQA dev): enables --tasks qa_1,qa_2 (the project ships no third-party data)")
    t.add_argument("--samples", type=int, default=None, metavar="N", help="prompts per (task, context): trial t "
                   "at depth t mod the number of --depths, each with its own seed (replaces --trials)")
    q = parser.add_argument_group("quality mode")
    q.add_argument("--mode", choices=["quality", "measured"], default="quality", help="quality (default): each "
                   "sample answered once, no warm-up, repeats or memory pass; one prefill per sample serves every "
                   "method that compresses after it; samples of one length decoded together; records without "
                   "timings (run_mode quality). measured: every cell timed as benchmark.py times it (warm-up, "
                   "--repeats, a memory pass), one prefill per method")
    q.add_argument("--answer-batch", type=int, default=None, metavar="N", help="quality mode: samples decoded "
                   "together (default: as many as 60 %% of the GPU's free memory holds with every method's compressed "
                   "cache; 32 on a CPU; lower it if a long context runs out of memory)")
    t.add_argument("--match-kv", metavar="METHOD", help="add every press of --methods that takes a kept budget at "
                   "METHOD's measured KV bytes per context length (e.g. dms-8x), read from --match-from")
    t.add_argument("--match-from", type=Path, metavar="FILE", help="results JSON holding METHOD's records "
                   "(default: --out, with --resume)")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg, cells, grid = _grid(args)
    from kvcompress.run import runner  # torch and transformers: once the arguments are good

    quality = args.mode == "quality"
    out = runner.run(cfg, cells, task="long_context", header_extra={"niah": grid, "mode": args.mode},
                     quality=quality, answer_batch=args.answer_batch)
    summaries = niah_grid.summarize(niah_grid.select(out.results, cells, [m.name for m in cfg.methods]))
    for path in _tables_and_figures(out, cfg, args, grid["tasks"], summaries):
        runner.console.print(f"wrote {path}")
    runner.console.print(f"wrote {cfg.out}")
    return runner.exit_status(out)


def _grid(args: argparse.Namespace):
    """(cfg, cells, the grid as the run header records it): every check that needs no model, in the order a user
    meets them; those that need neither torch nor the presets' defaults before cli.resolve imports torch."""
    if args.qa_data is not None:  # through the environment: a child process rebuilding a cell reads it too
        if not args.qa_data.is_dir():
            raise UserError(f"--qa-data {args.qa_data} is not a folder (one holding RULER's squad.json and/or "
                            f"hotpotqa.json)")
        os.environ[families.ruler.qa.ENV] = str(args.qa_data.resolve())
    tasks = families.parse_tasks(args.tasks)
    if args.qa_data is not None and not set(tasks) & set(families.ruler.QA):  # not read: say so, not ignore it
        raise UserError(f"--qa-data is read by {' and '.join(families.ruler.QA)} only: add them to --tasks (e.g. "
                        f"--tasks ruler,{','.join(families.ruler.QA)}) or drop --qa-data")
    depths = niah_grid.parse_depths(args.depths)
    if args.needles < 1:
        raise UserError(f"--needles must be at least 1, got {args.needles}")
    if args.sample and args.greedy:
        raise UserError("--sample and --greedy contradict each other")
    args.greedy = args.greedy or not (args.sample or args.thinking)
    if args.thinking and args.max_new_tokens is None:
        args.max_new_tokens = niah_grid.THINKING_BUDGET
    niah_grid.check_counts(1 if args.trials is None else args.trials, args.questions)
    if args.thinking and args.max_new_tokens < niah_grid.MIN_THINKING_BUDGET:
        raise UserError(f"--thinking needs --max-new-tokens >= {niah_grid.MIN_THINKING_BUDGET} (a cut-off think "
                        "block is scored as no answer)")
    if args.questions > 1:
        args.mode = "questions"  # its own path: one compression, K answers (engine.measure_questions)
    if args.answer_batch is not None and (args.answer_batch < 1 or args.mode != "quality"):  # after --questions
        raise UserError("--answer-batch needs --mode quality and a positive count")
    if args.samples is not None and (args.samples < 1 or args.trials is not None):
        raise UserError("--samples must be positive and replaces --trials (pass one of them)")
    source = args.match_from or (args.out if args.resume else None)
    if args.match_kv and source is None:
        raise UserError(f"--match-kv {args.match_kv}: pass the file holding its records with --match-from")
    # RULER's tasks size each prompt to context - tokens_to_generate, and a quality run answers within that budget
    output_in_context = args.mode == "quality" and all(t in families.ruler.TOKENS_TO_GENERATE for t in tasks)
    cfg = cli.resolve(args, "long_context", fixed_length=False, output_in_context=output_in_context)
    changing = [m.name for m in cfg.methods if not m.shares_prefill]
    if args.questions > 1 and changing:
        raise UserError(f"--questions > 1 answers every question from one compressed context, which "
                        f"{', '.join(changing)} change(s) while answering (DMS-8x, decoding presses and quantized "
                        "caches do): drop them or use --questions 1")
    if args.match_kv:
        cfg.methods = matched_methods(cfg.methods, args.match_kv, source, cfg.contexts)
    args.trials = args.trials if args.trials is not None else (1 if cfg.preset == "tiny" else 3)
    cells = niah_grid.grid_cells(cfg.contexts, depths, args.samples or args.trials, kind=args.needle,
                                 count=args.needles, haystack=cfg.haystack, thinking=args.thinking,
                                 seed=cfg.settings.sampling.seed, tasks=tuple(tasks), questions=args.questions)
    if args.samples:
        cells = first_samples(cells, args.samples, depths)
    grid = {"depths": depths, "trials": args.trials, "needle": args.needle, "needles": args.needles,
            "haystack": cfg.haystack, "thinking": args.thinking, "tasks": tasks, "questions": args.questions,
            "match_kv": args.match_kv, "samples": args.samples}
    return cfg, cells, grid


def first_samples(cells: list, n: int, depths: list[float]) -> list:
    """n cells per (task, context): trial t at depth t mod len(depths) (haystack-free tasks: trials 0..n-1)."""
    kept, seen = [], {}
    for cell in cells:
        trial = cell.needle_seed % 10_000
        depth_index = depths.index(cell.depth) if cell.depth in depths else 0
        if cell.depth is not None and trial % len(depths) != depth_index:
            continue
        key = (cell.task_family, cell.target_tokens)
        if seen.get(key, 0) < n:
            seen[key] = seen.get(key, 0) + 1
            kept.append(cell)
    return kept


def _tables_and_figures(out, cfg, args: argparse.Namespace, tasks: list[str], summaries) -> list[Path]:
    """The found/trials table (--tasks niah) or the task table and the Pareto figure, then beside the result file
    one depth x length heatmap per task with a depth grid and method, and one task x length heatmap per method for
    the tasks without one (RULER's: one row each); the figures' paths."""
    from kvcompress import plots  # matplotlib only when figures are drawn

    model = out.run.get("model") or cfg.spec.name  # no local method ran: the DMS records name their own model
    weights = out.run.get("weights") or next((r.weights for s in summaries for r in s.records), "?")
    what = (f"{args.needle} needle, {cfg.haystack} haystack, {'thinking' if args.thinking else 'no thinking'}, "
            f"{cfg.settings.sampling.describe()}")
    records = [r for s in summaries for r in s.records]
    written = [samples.write_samples(records, samples.samples_path(cfg.out))]
    if tasks == ["niah"] and args.questions == 1:
        report.print_niah(summaries, f"needle in a haystack — {model} ({weights}), {what}")
    else:
        report.print_tasks(summaries, records, f"long-context tasks — {model} ({weights}), {what}")
        report.print_quality(quality.quality_rows(records), f"scores with 95 % intervals — {model} ({weights})")
        if any(t in families.RULER.split(",") for t in tasks) and not any(t in families.ruler.QA for t in tasks):
            report.make_console().print(families.ruler.qa.UNAVAILABLE + ".")
        written.append(plots.accuracy_vs_kv(quality.pareto_points(records, median_kv_bytes),
                                            cfg.out.with_name(f"{cfg.out.stem}-pareto.png"),
                                            f"score vs KV bytes held — {model}, {', '.join(tasks)}"))
    depthless: dict[str, list] = {}  # method -> the cells of its tasks without a depth grid (RULER's)
    for family, family_cells in niah_grid.by_task(summaries).items():
        if family != "niah" and all(s.depth is None for s in family_cells):
            for method, method_cells in by_method(family_cells).items():
                depthless.setdefault(method, []).extend(method_cells)
            continue
        for method, method_cells in by_method(family_cells).items():
            tag = "" if family == "niah" else f"{family}-"
            path = cfg.out.with_name(f"{cfg.out.stem}-heatmap-{tag}{_file_safe(method)}.png")
            found = {(s.target_tokens, s.depth): (s.found, s.total) for s in method_cells}
            scores = None if family == "niah" else {(s.target_tokens, s.depth): s.mean_score or 0.0
                                                    for s in method_cells}
            plots.retrieval_heatmap(found, path, f"{family}: {method} — {model}\n{what}", scores=scores)
            written.append(path)
    for method, method_cells in depthless.items():  # one figure a method: its tasks x context lengths
        path = cfg.out.with_name(f"{cfg.out.stem}-tasks-{_file_safe(method)}.png")
        rows = [t for t in tasks if any(s.task_family == t for s in method_cells)]
        found = {(s.target_tokens, s.task_family): (s.found, s.total) for s in method_cells}
        scores = {(s.target_tokens, s.task_family): s.mean_score or 0.0 for s in method_cells}
        plots.task_heatmap(found, rows, path, f"{method} — {model}\n{what}", scores)
        written.append(path)
    return written


def _file_safe(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@=-]+", "_", method)
