"""Equal-memory comparison: presses sized to another method's measured KV bytes (--match-kv).

`--match-kv METHOD` reads METHOD's records (a file from an earlier run: DMS-8x's bytes are measured, not
documented, and grow with the context), takes the median `kv_cache_bytes` of its error-free records at each
context length, and adds `<press>@kv=METHOD` for every press of the run that can take a kept budget: the same
press, keeping as many bytes as METHOD held at that length (Method.for_context turns the bytes into kvpress's
ratio per prompt; the record keeps the ratio and the budget).
"""

from __future__ import annotations

from pathlib import Path

from kvcompress.errors import UserError
from kvcompress.methods import Method
from kvcompress.results import BenchmarkResult, load, median_kv_bytes


def measured_kv_bytes(records: list[BenchmarkResult], method: str, contexts: list[int]) -> dict[int, float]:
    """Median KV bytes METHOD held after its prefill, per context length asked for (every length must be there)."""
    by_length: dict[int, list[BenchmarkResult]] = {}
    for r in records:
        if r.method == method and r.error is None and r.kv_cache_bytes:
            by_length.setdefault(r.target_tokens, []).append(r)
    missing = [c for c in contexts if c not in by_length]
    if missing:
        have = ", ".join(str(c) for c in sorted(by_length)) or "none"
        raise UserError(f"--match-kv {method}: no measured record of {method} at {missing[0]} tokens (it has: "
                        f"{have}); run it first with the same --contexts and pass that file with --match-from")
    return {c: median_kv_bytes(by_length[c]) for c in contexts}


def matched_methods(methods: list[Method], other: str, source: Path, contexts: list[int]) -> list[Method]:
    """`methods` plus, for every distinct press chain that can take a budget, that chain at OTHER's KV bytes."""
    if not Path(source).exists():
        raise UserError(f"--match-kv {other}: {source} does not exist (pass the file of a run of {other} with "
                        "--match-from)")
    _, records = load(Path(source))
    budget = measured_kv_bytes(records, other, contexts)
    added, seen = [], set()
    for m in methods:
        if not m.takes_budget:
            continue
        chain = tuple(p.name for p in m.chain)
        if chain not in seen:
            seen.add(chain)
            added.append(m.matched(other, budget))
    if not added:
        raise UserError(f"--match-kv {other}: --methods holds no press that takes a kept budget (e.g. knorm@0.5)")
    return methods + added
