"""Methods: what is compared. `vanilla`, `dms-8x`, or a kvpress press written as text.

Grammar (shared by every script):
    vanilla
    dms-8x[evict=<fraction>]              DMS's rule run natively (methods/dms.py); evict overrides the calibration
    dms-8x-remote                         the checkpoint's own remote code, in a process of its own (isolated.py)
    <press>@<ratio>                       knorm@0.5
    <wrapper>+...+<scorer>@<ratio>        adakv+expected_attention@0.5
    <press>[@<ratio>][<arg>=<value>,...]  decoding+knorm[compression_interval=8,target_size=64]
`ratio` is kvpress's compression_ratio: the fraction of the context's KV entries to evict, in [0, 1).
A budget instead of a ratio keeps that much of every prompt's context (equal memory across methods):
    <press>@<N>tok                        knorm@2048tok   (tokens kept per layer and head)
    <press>@<N>KiB|MiB|GiB                knorm@64MiB     (KV bytes kept, at the model's bytes per token)
The budget becomes kvpress's ratio per prompt, 1 - kept / context tokens (0 when the context is shorter);
`Method.for_context` does it and the record holds both (compression_ratio, kv_budget).

A KV format can follow any of them (methods/quantized.py; formats in quant_spec.py):
    fp8 | int4 | int2                     a quantized cache alone: fp8, int4[group=32,window=128]
    <method>+fp8|int4|int2[...]           evict, then store what is kept quantized: knorm@0.5+fp8, dms-8x+fp8

Each family is one module: a `Method` subclass (methods/base.py's protocol) and a parser that returns its method,
None when the text is not its own, or raises the grammar's one-line error. FAMILIES tries them in order; the press
chain comes last, as it claims whatever is left.
"""

from __future__ import annotations

from contextlib import nullcontext

from kvcompress.errors import UserError
from kvcompress.methods import dms_methods, press_chain, quantized, vanilla
from kvcompress.methods.base import Method
from kvcompress.methods.dms_methods import NAME as DMS_NAME, REMOTE_NAME as DMS_REMOTE_NAME
from kvcompress.methods.grammar import split_top_level
from kvcompress.methods.press_chain import budget_capable, kv_bytes_per_token, takes_ratio

__all__ = ["DMS_NAME", "DMS_REMOTE_NAME", "FAMILIES", "Method", "as_remote_dms", "budget_capable",
           "kv_bytes_per_token", "parse_method", "parse_methods", "press_context", "split_top_level", "takes_ratio"]



def _quantized(text: str) -> Method | None:
    return quantized.parse(text, parse_method)  # the format's inner method is any other family


FAMILIES = (_quantized, vanilla.parse, dms_methods.parse, press_chain.parse)
as_remote_dms = dms_methods.as_remote


def parse_method(text: str) -> Method:
    text = text.strip()
    for family in FAMILIES:
        method = family(text)
        if method is not None:
            return method
    raise AssertionError(f"the press chain parses or refuses every text ({text!r})")


def parse_methods(text: str) -> list[Method]:
    methods = [parse_method(part) for part in split_top_level(text)]
    if not methods:
        raise UserError("--methods is empty")
    names = [m.name for m in methods]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:  # both would measure the same cell, and one record would replace the other
        raise UserError(f"--methods names {twice} twice")
    return methods


def press_context(press, model):
    return press(model) if press is not None else nullcontext()
