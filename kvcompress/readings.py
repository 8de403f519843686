"""What records say once read together or classified: a press's chain and table group, the memory behaviour its
measured bytes show, the answer-length change against vanilla, records (or summaries) by method. Pure functions of
BenchmarkResult, below the report, the plots and the commands that all read them."""

from __future__ import annotations

import re

from kvcompress.results import BenchmarkResult


def chain_of(method_name: str) -> str:
    """'adakv+snapkv@0.5[x=1]' -> 'adakv+snapkv': the group a record belongs to in the table and the plot."""
    return re.split(r"[@\[]", method_name, maxsplit=1)[0]


def group_of(r: BenchmarkResult) -> str:
    """The chain, plus the options of a self-sizing press (its variants are different rows, not ratios)."""
    chain = chain_of(r.method)
    if r.compression_ratio is None and "[" in r.method:
        return chain + r.method[r.method.index("["):]
    return chain


def by_method(items: list) -> dict[str, list]:
    """Records, or summaries of cells (tasks/niah_grid.py), grouped by their method, in first-seen order."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(item.method, []).append(item)
    return groups


def positions_end(r: BenchmarkResult) -> int:
    """Sequence positions the cache has seen at the end: the prompt and every output token but the last."""
    return r.input_tokens + r.output_tokens - 1


def measured_memory(r: BenchmarkResult) -> str | None:
    """real | uneven | mask | none, from the bytes measured in the cache's tensors (not from the registry).

    mask: the tensors hold entries attention no longer sees. real: they hold fewer bytes than the same cache
    uncompressed (uneven: and layers differ in length). none: neither. Decoding-phase presses act after the prefill,
    so for them the cache at the end of decoding is judged.
    """
    if r.error or r.kv_cache_bytes is None:
        return None
    if r.phase == "decoding":
        if r.kv_live_bytes_end is not None and r.kv_live_bytes_end < r.kv_cache_bytes_end:
            return "mask"
        return "real" if r.kv_tokens_end < positions_end(r) else "none"
    if r.kv_live_bytes < r.kv_cache_bytes:
        return "mask"
    if r.kv_cache_bytes < r.kv_cache_bytes_full:
        return "uneven" if r.kv_tokens_kept_min != r.kv_tokens_kept_max else "real"
    return "none"


def answer_length_change(records: list[BenchmarkResult]) -> dict[str, tuple[float, int] | None]:
    """method -> (mean answer tokens minus vanilla's on the same prompt and question, pairs), None without pairs."""
    def key(r):
        return (r.task_family, r.target_tokens, r.depth, r.prompt_id)

    vanilla = {key(r): r.answer_tokens for r in records
               if r.method == "vanilla" and r.error is None and r.answer_tokens is not None}
    out: dict[str, tuple[float, int] | None] = {}
    for method in dict.fromkeys(r.method for r in records):
        diffs = [r.answer_tokens - vanilla[key(r)] for r in records if r.method == method and r.error is None
                 and r.answer_tokens is not None and key(r) in vanilla]
        out[method] = (sum(diffs) / len(diffs), len(diffs)) if diffs and method != "vanilla" else None
    return out
