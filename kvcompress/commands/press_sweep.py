"""test_kvpress_api.py, the kvpress sweep: which methods a list of presses x ratios expands to, what each record's
measured bytes say about the press's memory behaviour, and the command that runs them and draws the grid.

A press that takes a ratio runs once per ratio. A press that sizes itself (simlayerkv, dmspress, decoding, cam) runs
once, with settings scaled to the prompt so it does something at any context length (OWN_SETTINGS); options given
in --presses override them.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from kvcompress import cli, report
from kvcompress.errors import UserError
from kvcompress.methods import Method, split_top_level, parse_method, takes_ratio
from kvcompress.methods import presses as registry
from kvcompress.readings import measured_memory, positions_end
from kvcompress.results import BenchmarkResult, check_writable
from kvcompress.tasks.cell import Cell

DEFAULT_RATIOS = "0.25,0.5,0.75,0.875"
_ITEM = re.compile(r"^(?P<chain>[a-z0-9_+]+)(?:@(?P<ratio>[^\[]+))?(?:\[(?P<options>.*)\])?$")

OWN_SETTINGS = """\
Settings scaled to the prompt (T = --context tokens, N = --max-new-tokens) so each press acts at any length;
options given in --presses override them:
  decoding, cam (once)              compression_interval = max(1, N // 4), target_size = T // 2
  compression_ratio_decoding (per ratio)  compression_interval = max(1, N // 4); keeps 1 - ratio of the tokens seen
  prefill_decoding (per ratio)      compression_interval = max(1, N // 4), target_size = int(T * (1 - ratio))
  dmspress (once, twice: prefill only and decoding=true)  over random scores (uniform in [0, 1)), threshold = 0.5,
                                    kvpress's 128-token sliding window
  simlayerkv (once)                 lazy_threshold = 0.85 (kvpress's value for Qwen), n_recent = min(1024, T // 4)
Decoding-only presses act after the prefill: their 'achieved' and 'mem saved' are read at the end of decoding.
"""


def parse_ratios(text: str) -> list[float]:
    ratios = []
    for part in filter(None, (s.strip() for s in text.split(","))):
        try:
            ratio = float(part)
        except ValueError:
            raise UserError(f"ratio {part!r} is not a number") from None
        if not 0.0 < ratio < 1.0:
            raise UserError(f"ratio {part} must be in (0, 1): the fraction of the context's KV entries to evict")
        if ratio in ratios:  # as --methods and --contexts naming one twice: a typo, not a wish to run it twice
            raise UserError(f"--ratios names {ratio:g} twice")
        ratios.append(ratio)
    if not ratios:
        raise UserError("--ratios is empty")
    return sorted(set(ratios))


def default_presses() -> list[str]:
    """Every press of the registry, each wrapper over its default scorer, DMSPress with and without decoding."""
    items = [_with_inner(name) for name in registry.PRESSES]
    dms = items.index(_with_inner("dmspress"))
    items.insert(dms + 1, _with_inner("dmspress") + "[decoding=true]")
    return items


def _with_inner(name: str) -> str:
    info = registry.PRESSES[name]
    return f"{name}+{info.inner}" if info.role in ("wrapper", "decoding") else name


def sweep_methods(presses: str, ratios: list[float], target_tokens: int, max_new_tokens: int) -> list[Method]:
    """vanilla, then each press at each ratio (or once, if it sizes itself). Bad names fail here, in one line."""
    items = default_presses() if presses.strip() == "all" else split_top_level(presses)
    if not items:
        raise UserError("--presses is empty")
    methods = [parse_method("vanilla")]
    for item in items:
        match = _ITEM.match(item)
        if not match or match["chain"] in ("vanilla", "none", "no_press"):
            method = parse_method(item)  # raises the grammar's one-line error for anything malformed
            if method.needs_dms_checkpoint:
                raise UserError("dms-8x is a model, not a kvpress press: compare it with test_dms_inference.py")
            continue  # vanilla always runs first, as the reference
        chain = registry.ALIASES.get(match["chain"], match["chain"])
        if chain in registry.PRESSES:
            chain = _with_inner(chain)  # a bare wrapper runs over its default scorer, as kvpress's evaluation does
        given = match["options"] or ""
        if match["ratio"] is not None:  # an explicit ratio: run just that
            methods.append(parse_method(item))
            continue
        names = chain.split("+")
        if any(n not in registry.PRESSES for n in names):
            parse_method(chain)  # the grammar's "unknown press" error
        infos = [registry.PRESSES[n] for n in names]
        for ratio in (ratios if takes_ratio(infos) else [None]):
            options = {**own_settings(infos, ratio, target_tokens, max_new_tokens), **_options_dict(given)}
            text = chain + (f"@{ratio:g}" if ratio is not None else "") + _options_text(options)
            methods.append(parse_method(text))
    seen, unique = set(), []
    for m in methods:
        if m.name not in seen:
            seen.add(m.name)
            unique.append(m)
    return unique


def own_settings(chain: list[registry.PressInfo], ratio: float | None, target_tokens: int,
                 max_new_tokens: int) -> dict:
    """Settings for a self-sizing press so it acts within this prompt and output length (see OWN_SETTINGS)."""
    outer, base = chain[0].name, chain[-1].name
    interval = max(1, max_new_tokens // 4)
    if outer in ("decoding", "cam"):
        return {"compression_interval": interval, "target_size": max(1, target_tokens // 2)}
    if outer == "compression_ratio_decoding":
        return {"compression_interval": interval}
    if outer == "prefill_decoding" and ratio is not None:
        return {"compression_interval": interval, "target_size": max(1, int(target_tokens * (1 - ratio)))}
    if outer == "dmspress" and base == "random":
        return {"threshold": 0.5}
    if outer == "simlayerkv":
        return {"lazy_threshold": 0.85, "n_recent": min(1024, max(1, target_tokens // 4))}
    return {}


def _options_dict(text: str) -> dict:
    options = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = part.partition("=")
        options[key.strip()] = value.strip()
    return options


def _options_text(options: dict) -> str:
    if not options:
        return ""
    return "[" + ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()) + "]"


def annotate(record: BenchmarkResult, method: Method) -> None:
    """Add the sweep's own fields to a record before it is saved."""
    if method.chain:  # a kvpress press (not the vanilla reference)
        own = _options_text(method.options) or "(defaults)"
        record.notes.append("ratio sweep" if method.compression_ratio is not None else
                            f"takes no ratio: ran once with its own settings {own}")
    if record.error or record.kv_cache_bytes is None:
        return
    record.kv_memory_measured = measured_memory(record)
    if record.kv_memory_measured == "none" and method.expected_memory != "none":
        # a self-sizing press whose own rule found nothing to evict here (e.g. SimLayerKV finding no lazy layer):
        # its documented behaviour was not exercised, and the record says so rather than passing as measured
        record.notes.append(f"evicted nothing with these settings: its documented '{method.expected_memory}' "
                            "behaviour was not exercised on this model and prompt")
    if record.kv_tokens_end is not None and positions_end(record) > 0:
        record.kv_compression_achieved_end = 1.0 - record.kv_tokens_end / positions_end(record)


def warn_once() -> None:
    """kvpress warns each time some presses are built (PerLayer, KVzip, ...), i.e. several times per cell: let each
    distinct kvpress message through once."""
    seen: set[str] = set()

    def first_time(record: logging.LogRecord) -> bool:
        if not record.name.startswith("kvpress"):
            return True
        message = record.getMessage()
        if message in seen:
            return False
        seen.add(message)
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(first_time)


def registry_rows() -> list[dict]:
    """One row per registry entry for --list."""
    rows = []
    for info in registry.PRESSES.values():
        rows.append({
            "name": info.name,
            "class": info.class_name,
            "role": info.role,
            "phase": info.phase,
            "memory": info.memory,
            "ratio": info.ratio_sets,
            "hub": info.needs_hub or "-",
            "attention": {"any": "any", "eager": "eager", "not eager": "no eager"}[info.attention],
            "note": "; ".join(filter(None, [
                f"alone runs as {_with_inner(info.name)}" if info.inner else "",
                f"NOT RUNNABLE here: {info.not_runnable}" if info.not_runnable else "", info.note])),
        })
    return rows


MEMORY = """\
Memory behaviour (column 'press': documented by kvpress vs measured here):
  real    the K/V tensors get shorter: memory is freed      uneven  real, but layers keep different lengths
  mask    tensors keep full length, evicted entries are hidden from attention: no memory saved
  none    no change in size (ThinK zeroes key channels; a threshold press that evicted nothing)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        "test_kvpress_api.py",
        "Run every kvpress press (or --presses) at each --ratios value on one needle prompt and record, per press "
        "and ratio, TTFT, decode speed, phase peaks, KV bytes measured from the cache tensors, kept tokens (per-layer "
        "min/max), achieved vs requested ratio, whether memory was really saved, and a short answer. A press that "
        "fails is recorded with a one-line error and the sweep goes on.",
        cli.Defaults(methods="vanilla", contexts="8K", max_new_tokens=32, repeats=3),
        tiny=cli.Defaults(methods="vanilla", contexts="384", max_new_tokens=4, repeats=1),
        hidden=("methods", "contexts"))
    parser.epilog += "\n" + MEMORY + OWN_SETTINGS
    g = parser.add_argument_group("press sweep")
    g.add_argument("--presses", default="all", help="comma-separated presses in the methods grammar without a "
                   "ratio, e.g. knorm,adakv+snapkv,dmspress+knorm[threshold=-5]; a wrapper alone runs over the scorer "
                   "--list shows; name@ratio runs just that ratio (default: all, every press of the registry)")
    g.add_argument("--ratios", default=DEFAULT_RATIOS,
                   help=f"compression ratios for presses that take one (default {DEFAULT_RATIOS})")
    g.add_argument("--context", dest="contexts", default=None,
                   help="prompt length in tokens, context + question (default 8K; tiny: 384)")
    g.add_argument("--plot", type=Path, default=None, help="PNG of KV bytes vs requested ratio (default: --out "
                   "with .png)")
    g.add_argument("--list", action="store_true", help="print the press registry (name, class, phase, memory "
                   "behaviour, needs Hub, attention) and exit")
    return parser


def run(args: argparse.Namespace) -> int:
    console = report.make_console()
    if args.list:
        report.print_registry(registry_rows(), console)
        return 0
    if args.methods is not None:
        raise UserError("--methods belongs to benchmark.py; here choose --presses and --ratios")
    if args.contexts is not None and len(cli.parse_contexts(args.contexts)) != 1:
        raise UserError("--context takes one prompt length (the table's columns are ratios)")
    ratios = parse_ratios(args.ratios)
    cfg = cli.resolve(args, "kvpress_api")
    from kvcompress.run import runner  # torch and transformers: only once the arguments are good

    warn_once()
    check_writable(args.plot or cfg.out.with_suffix(".png"))  # now, not after the whole sweep
    target = cfg.contexts[0]
    cfg.methods = sweep_methods(args.presses, ratios, target, cfg.settings.max_new_tokens)
    args.methods = None  # the run header records --presses and --ratios instead
    cell = Cell(target_tokens=target, depth=0.5, needle_kind="single", needle_seed=cfg.settings.sampling.seed,
                haystack=cfg.haystack)
    own = {m.name: m.options for m in cfg.methods if m.chain and m.compression_ratio is None}
    extra = {"presses": args.presses, "ratios": ratios, "own_settings": own}  # runner adds torch_threads
    out = runner.run(cfg, [cell], task="kvpress_api", annotate=annotate, header_extra=extra)
    title = (f"kvpress presses — {out.run.get('model')} ({out.run.get('weights')}), {target}-token prompt, "
             f"{cfg.settings.max_new_tokens} output tokens, {cfg.repeats} repeat(s)")
    report.print_press_grid(out.results, ratios, title, console)
    from kvcompress import plots  # matplotlib only when a plot is drawn

    plot = plots.kv_bytes_vs_ratio(out.results, args.plot or cfg.out.with_suffix(".png"), title)
    console.print(f"wrote {cfg.out} and {plot}")
    return runner.exit_status(out)

