"""benchmark.py fidelity: how closely each method's next-token distributions follow vanilla's on the same model and
text, teacher-forced over a continuation (engine/fidelity.py): KL, top-1 agreement, perplexity change, beside the KV
bytes the method holds. It needs no task and works on any model (SmolLM2 on CPU included); eviction, quantization
and their compositions are measured the same way.

    uv run python benchmark.py fidelity --model smollm2 --methods vanilla,fp8,int4,int2,knorm@0.5 --contexts 2K
"""

from __future__ import annotations

import argparse

from kvcompress import cli
from kvcompress.errors import UserError

DEFAULT_METHODS = "vanilla,fp8,int4,int2,knorm@0.5,knorm@0.75,snapkv@0.5,knorm@0.5+fp8,snapkv@0.875+int4"
DESCRIPTION = ("For each method x context x prompt: the context (a passage of --haystack, plain text) prefilled "
               "under the method, then the next --continuation tokens of the text fed one by one through "
               "transformers' forward (hf engine); each next-token distribution is compared with vanilla's on the "
               "same model: mean and max KL(vanilla || method), top-1 agreement, perplexity of the true tokens. "
               "Records carry fidelity_* fields beside the KV bytes after the prefill.")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("benchmark.py fidelity", DESCRIPTION,
                        cli.Defaults(methods=DEFAULT_METHODS, contexts="2K,8K", max_new_tokens=2, repeats=1),
                        tiny=cli.Defaults(methods="vanilla,fp8,int4[group=16,window=32],int2,knorm@0.5,knorm@0.5+fp8",
                                          contexts="256", max_new_tokens=2, repeats=1),
                        hidden=("batch", "admission", "max_new_tokens", "repeats", "engine", "query_aware",
                                "temperature", "top_k", "top_p", "greedy"))
    parser.set_defaults(haystack="paul_graham")
    g = parser.add_argument_group("fidelity")
    g.add_argument("--continuation", type=int, default=64, help="tokens of the text after the context, teacher-"
                   "forced; the last T - 1 are predicted and scored (default 64)")
    g.add_argument("--prompts", type=int, default=4, help="passages per context, 4096 tokens apart in the text "
                   "(default 4)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.continuation < 2 or args.prompts < 1:
        raise UserError("--continuation must be at least 2 tokens and --prompts at least 1")
    args.engine = "hf"  # teacher forcing runs transformers' forward
    cfg = cli.resolve(args, "fidelity")
    from kvcompress import report  # torch and transformers: only once the arguments are good
    from kvcompress.run.fidelity import run_fidelity

    out = run_fidelity(cfg, args.continuation, args.prompts)
    report.print_fidelity(out.results, f"fidelity to vanilla — {out.run.get('model')} ({out.run.get('weights')}), "
                          f"{args.continuation} teacher-forced tokens, {args.prompts} prompt(s), {cfg.haystack}")
    return 0
