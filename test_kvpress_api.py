"""Every kvpress press x compression ratio on the shared engine: what each saves (KV bytes measured in the cache's
tensors; real eviction vs masking), what it costs (TTFT with compression, decode tok/s), and a short answer to eyeball.

    uv run python test_kvpress_api.py --list                   # the registry: class, phase, memory, Hub, attention
    uv run python test_kvpress_api.py                          # Qwen3-8B, 8K prompt, every press x 4 ratios
    uv run python test_kvpress_api.py --random-weights         # no weights needed: true speed and memory
    uv run python test_kvpress_api.py --presses knorm,adakv+snapkv,decoding+knorm --ratios 0.5,0.875
    uv run python test_kvpress_api.py --preset tiny            # CPU pipeline check (a few minutes)
"""

import sys
from pathlib import Path

from kvcompress import cli, report
from kvcompress.commands import press_sweep
from kvcompress.errors import UserError

MEMORY = """\
Memory behaviour (column 'press': documented by kvpress vs measured here):
  real    the K/V tensors get shorter: memory is freed      uneven  real, but layers keep different lengths
  mask    tensors keep full length, evicted entries are hidden from attention: no memory saved
  none    no change in size (ThinK zeroes key channels; a threshold press that evicted nothing)
"""


@cli.main
def main(argv=None) -> int:
    parser = cli.parser(
        "test_kvpress_api.py",
        "Run every kvpress press (or --presses) at each --ratios value on one needle prompt and record, per press "
        "and ratio, TTFT, decode speed, phase peaks, KV bytes measured from the cache tensors, kept tokens (per-layer "
        "min/max), achieved vs requested ratio, whether memory was really saved, and a short answer. A press that "
        "fails is recorded with a one-line error and the sweep goes on.",
        cli.Defaults(methods="vanilla", contexts="8K", max_new_tokens=32, repeats=3),
        tiny=cli.Defaults(methods="vanilla", contexts="384", max_new_tokens=4, repeats=1),
        hidden=("methods", "contexts"))
    parser.epilog += "\n" + MEMORY + press_sweep.OWN_SETTINGS
    g = parser.add_argument_group("press sweep")
    g.add_argument("--presses", default="all", help="comma-separated presses in the methods grammar without a "
                   "ratio, e.g. knorm,adakv+snapkv,dmspress+knorm[threshold=-5]; a wrapper alone runs over the scorer "
                   "--list shows; name@ratio runs just that ratio (default: all, every press of the registry)")
    g.add_argument("--ratios", default=press_sweep.DEFAULT_RATIOS,
                   help=f"compression ratios for presses that take one (default {press_sweep.DEFAULT_RATIOS})")
    g.add_argument("--context", dest="contexts", default=None,
                   help="prompt length in tokens, context + question (default 8K; tiny: 384)")
    g.add_argument("--plot", type=Path, default=None, help="PNG of KV bytes vs requested ratio (default: --out "
                   "with .png)")
    g.add_argument("--list", action="store_true", help="print the press registry (name, class, phase, memory "
                   "behaviour, needs Hub, attention) and exit")
    args = parser.parse_args(argv)
    console = report.make_console()
    if args.list:
        report.print_registry(press_sweep.registry_rows(), console)
        return 0
    if args.methods is not None:
        raise UserError("--methods belongs to benchmark.py; here choose --presses and --ratios")
    cfg = cli.resolve(args, "kvpress_api")
    from kvcompress.run import runner  # torch and transformers: only once the arguments are good
    from kvcompress.tasks.cell import Cell

    press_sweep.warn_once()
    if len(cfg.contexts) != 1:
        raise UserError("--context takes one prompt length (the table's columns are ratios)")
    ratios = press_sweep.parse_ratios(args.ratios)
    target = cfg.contexts[0]
    cfg.methods = press_sweep.sweep_methods(args.presses, ratios, target, cfg.settings.max_new_tokens)
    args.methods = None  # the run header records --presses and --ratios instead
    cell = Cell(target_tokens=target, depth=0.5, needle_kind="single", needle_seed=cfg.settings.sampling.seed,
                haystack=cfg.haystack)
    own = {m.name: m.options for m in cfg.methods if m.chain and m.compression_ratio is None}
    extra = {"presses": args.presses, "ratios": ratios, "own_settings": own}  # runner adds torch_threads
    out = runner.run(cfg, [cell], task="kvpress_api", annotate=press_sweep.annotate, header_extra=extra)
    title = (f"kvpress presses — {out.run.get('model')} ({out.run.get('weights')}), {target}-token prompt, "
             f"{cfg.settings.max_new_tokens} output tokens, {cfg.repeats} repeat(s)")
    report.print_press_grid(out.results, ratios, title, console)
    from kvcompress import plots  # matplotlib only when a plot is drawn

    plot = plots.kv_bytes_vs_ratio(out.results, args.plot or cfg.out.with_suffix(".png"), title)
    console.print(f"wrote {cfg.out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
