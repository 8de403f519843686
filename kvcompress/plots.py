"""Figures (matplotlib, Agg backend: files only, no display needed). Each function draws one figure and writes it."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kvcompress.readings import chain_of  # noqa: E402
from kvcompress.results import BenchmarkResult  # noqa: E402

MIB = 2**20
# measured memory behaviour -> colour family, line style and drawing order: mask-only presses stand out in red
_FAMILY = {"real": ("Blues", "-", "o", 2), "uneven": ("Greens", "-", "s", 2), "mask": ("Reds", "--", "x", 4),
           "none": ("Greys", "-.", "d", 3)}


def kv_bytes_vs_ratio(results: list[BenchmarkResult], path: Path, title: str) -> Path:
    """KV bytes held (left) and KV bytes attention still sees (right) against the requested ratio, one line per press.

    A press that really evicts falls along the dotted ideal (1 - ratio) x full in both panels; a mask-only press stays
    flat at the full cache on the left while it falls on the right. Colours follow the measured behaviour (blue real,
    green uneven, red mask, grey none). Presses that size themselves (no ratio) and decoding-only presses (their
    ratio acts after the prefill) are in the table, not here.
    """
    measured = [r for r in results if not r.error and r.kv_cache_bytes is not None]
    full = next((r.kv_cache_bytes_full for r in measured if r.kv_cache_bytes_full), None)
    series: dict[str, list[BenchmarkResult]] = {}
    for r in measured:
        if r.compression_ratio is not None and r.method != "vanilla" and r.phase != "decoding":
            series.setdefault(chain_of(r.method), []).append(r)
    behaviour = {name: _behaviour(records) for name, records in series.items()}
    order = sorted(series, key=lambda n: (list(_FAMILY).index(behaviour[n]), n))
    fig, (held, seen) = plt.subplots(1, 2, figsize=(15, 6.5), sharex=True, sharey=True)
    for name in order:
        records = sorted(series[name], key=lambda r: r.compression_ratio)
        family, linestyle, marker, z = _FAMILY[behaviour[name]]
        same = [n for n in order if behaviour[n] == behaviour[name]]
        color = plt.get_cmap(family)(0.45 + 0.5 * same.index(name) / max(1, len(same) - 1))
        style = dict(color=color, linestyle=linestyle, marker=marker, linewidth=1.3, markersize=5, zorder=z)
        x = [r.compression_ratio for r in records]
        label = f"{name}  [{behaviour[name]}]"
        held.plot(x, [r.kv_cache_bytes / MIB for r in records], label=label, **style)
        seen.plot(x, [r.kv_live_bytes / MIB for r in records], **style)
    ratios = sorted({r.compression_ratio for rs in series.values() for r in rs})
    for ax, what in ((held, "KV bytes held in the cache tensors (MiB)"),
                     (seen, "KV bytes attention can still see (MiB)")):
        if full:
            ax.axhline(full / MIB, color="black", linestyle=":", linewidth=1, label="uncompressed (vanilla)", zorder=1)
            if ratios:
                ax.plot([0, max(ratios)], [full / MIB, full * (1 - max(ratios)) / MIB], color="gray",
                        linestyle=":", linewidth=1, label="ideal: (1 - ratio) x uncompressed", zorder=1)
        ax.set_xlabel("requested compression ratio (fraction of context KV evicted)")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    held.set_title("memory held: mask-only presses (red, dashed) stay at full size", fontsize=10)
    seen.set_title("entries attention sees: mask-only presses evict here, without freeing bytes", fontsize=10)
    handles, labels = held.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.80, 0.5), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.80, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _behaviour(records: list[BenchmarkResult]) -> str:
    """A press's measured behaviour over its ratios: mask or none if any ratio shows it, else uneven or real."""
    seen = {r.kv_memory_measured or "real" for r in records}
    return next(b for b in ("mask", "none", "uneven", "real") if b in seen or b == "real")


def retrieval_heatmap(cells: dict[tuple[int, float], tuple[int, int]], path: Path, title: str,
                      scores: dict[tuple[int, float], float] | None = None
                      ) -> dict[tuple[int, float], tuple[int, int, int, int]]:
    """Depth (rows, top = start of the context) x context length (columns) for one method; colour = fraction of
    trials found (red 0 → yellow → green 1), text = found/trials; a cell with no measured trial is grey.

    `cells` maps (context tokens, depth) to (found, trials). The PNG carries the same numbers as JSON in its
    'Description' text chunk. Returns each cell's box in the PNG's pixels (left, top, right, bottom), so a reader
    (or a test) can check the colours against the records. `scores` (a task's mean RULER score per cell) sets the
    colour instead, and the text reads 'score% (found/trials)'. A depth of None (a task without a haystack) is one
    row labelled 'whole'.
    """
    depths = sorted({d for _, d in cells}, key=lambda d: -1 if d is None else d)
    labels = ["whole" if d is None else f"{d:.0%}" for d in depths]
    return _heatmap(cells, depths, labels, "needle depth", "depth", path, title, scores)


def task_heatmap(cells: dict[tuple[int, str], tuple[int, int]], tasks: list[str], path: Path, title: str,
                 scores: dict[tuple[int, str], float]) -> dict[tuple[int, str], tuple[int, int, int, int]]:
    """Task (rows, in the order of `tasks`) x context length (columns) for one method, coloured by the task's mean
    score: retrieval_heatmap's figure for tasks without a depth grid (RULER's), one figure a method instead of a
    one-row figure per task. The PNG's 'Description' holds each cell as JSON with its "task"."""
    return _heatmap(cells, tasks, tasks, "task", "task", path, title, scores)


def _heatmap(cells: dict, rows: list, labels: list[str], row_title: str, row_field: str, path: Path, title: str,
             scores: dict | None) -> dict:
    contexts = sorted({c for c, _ in cells})
    fraction = np.full((len(rows), len(contexts)), np.nan)
    for (c, d), (found, total) in cells.items():
        if total:
            value = scores[(c, d)] if scores is not None else found / total
            fraction[rows.index(d), contexts.index(c)] = value
    wide = 0.07 * max(0, max(map(len, labels)) - 5)  # room for task names ("niah_multikey_3") beside the rows
    fig, ax = plt.subplots(figsize=(2.0 + wide + 1.3 * len(contexts), 1.6 + 0.55 * len(rows)), dpi=100)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#cccccc")
    image = ax.imshow(np.ma.masked_invalid(fraction), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for (c, d), (found, total) in cells.items():
        value = (scores[(c, d)] if scores is not None else found / total) if total else 0
        dark = total and not 0.2 <= value <= 0.8  # the deep red and green ends need white text
        text = f"{found}/{total}" if scores is None else f"{value:.0%}\n({found}/{total})"
        ax.text(contexts.index(c), rows.index(d), text if total else "error", ha="center",
                va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(contexts)), [_tokens_label(c) for c in contexts])
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(row_title)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03).set_label(
        "fraction of trials found" if scores is None else "mean score (RULER)", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    height = fig.bbox.height
    boxes = {}
    for c, d in cells:
        x, y = contexts.index(c), rows.index(d)
        (x0, y0), (x1, y1) = ax.transData.transform([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)])
        boxes[(c, d)] = (round(min(x0, x1)), round(height - max(y0, y1)), round(max(x0, x1)), round(height - min(y0, y1)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [{"context_tokens": c, row_field: d, "found": f, "trials": t,
             **({"score": scores[(c, d)]} if scores is not None else {})}
            for (c, d), (f, t) in sorted(cells.items(), key=lambda kv: (kv[0][0], rows.index(kv[0][1])))]
    fig.savefig(path, dpi=fig.dpi, metadata={"Title": title, "Description": json.dumps(data)})
    plt.close(fig)
    return boxes


def accuracy_vs_kv(points: list[dict], path: Path, title: str) -> Path:
    """Pareto view of quality at equal memory: one marker per method and context length, x = median KV bytes held
    after the context (measured; every method at the same positions), y = mean score over every task and trial; a
    hollow marker at the live bytes where a cache holds more than attention sees (hf-engine DMS masks, reclaims
    nothing); the methods no other beats on both axes at that length (by held bytes) are joined by a line. `points`:
    dicts with method, target_tokens, kv_bytes, kv_live_bytes, score, n, and optionally low and high (the score's
    95 % interval, drawn as an error bar). The PNG's 'Description' text chunk holds the points as JSON."""
    contexts = sorted({p["target_tokens"] for p in points})
    methods = list(dict.fromkeys(p["method"] for p in points))
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    markers = "os^Dvp*hX"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for m_i, method in enumerate(methods):
        for p in (p for p in points if p["method"] == method):
            marker = markers[contexts.index(p["target_tokens"]) % len(markers)]
            ax.scatter(p["kv_bytes"] / MIB, p["score"], color=cmap(m_i % cmap.N), s=46, zorder=3, marker=marker)
            if p.get("low") is not None:
                ax.errorbar(p["kv_bytes"] / MIB, p["score"], yerr=[[p["score"] - p["low"]], [p["high"] - p["score"]]],
                            color=cmap(m_i % cmap.N), linewidth=1, capsize=3, zorder=2)
            live = p.get("kv_live_bytes")
            if live is not None and live != p["kv_bytes"]:  # a cache holding more than attention sees: both shown
                ax.scatter(live / MIB, p["score"], facecolors="none", edgecolors=cmap(m_i % cmap.N), s=46, zorder=3,
                           marker=marker)
                ax.plot([live / MIB, p["kv_bytes"] / MIB], [p["score"]] * 2, color=cmap(m_i % cmap.N),
                        linestyle=":", linewidth=1, zorder=2)
        ax.scatter([], [], color=cmap(m_i % cmap.N), marker="o", label=method)
    if any(p.get("kv_live_bytes") not in (None, p["kv_bytes"]) for p in points):
        ax.scatter([], [], facecolors="none", edgecolors="gray", marker="o",
                   label="hollow: live bytes, where fewer than held (dotted to held)")
    for c_i, n in enumerate(contexts):
        at = sorted((p for p in points if p["target_tokens"] == n), key=lambda p: (p["kv_bytes"], -p["score"]))
        front, best = [], -1.0
        for p in at:
            if p["score"] > best:
                front.append(p)
                best = p["score"]
        ax.plot([p["kv_bytes"] / MIB for p in front], [p["score"] for p in front], color="gray", linewidth=1,
                linestyle="-", zorder=2, marker=markers[c_i % len(markers)], markerfacecolor="none",
                label=f"frontier at {_tokens_label(n)} tokens")
    ax.set_xscale("log")
    ax.set_xlabel("median KV bytes held after the context (MiB, measured; hollow: live; log scale)")
    ax.set_ylabel("mean score over tasks and trials" + (" (bars: 95 % CI)" if any("low" in p for p in points) else ""))
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Title": title, "Description": json.dumps(points)})
    plt.close(fig)
    return path


def _tokens_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else f"{n:,}"


def aggregate_vs_batch(results: list[BenchmarkResult], path: Path, title: str) -> Path:
    """Aggregate decode tok/s against batch (log scale), one line per method and context through its timed batches;
    each line ends at the method's measured max batch, so the plot shows both how many sequences fit and what they
    deliver together."""
    timed = [r for r in results if not r.error and r.aggregate_decode_tokens_per_s and r.task != "capacity_context"]
    series: dict[tuple, list[BenchmarkResult]] = {}
    for r in timed:
        series.setdefault((r.method, r.target_tokens), []).append(r)
    contexts = sorted({c for _, c in series})
    styles = ["-", "--", "-.", ":"]
    fig, ax = plt.subplots(figsize=(9, 6))
    methods = sorted({m for m, _ in series})
    colours = plt.get_cmap("tab10")
    for (method, context), records in sorted(series.items()):
        records = sorted(records, key=lambda r: r.batch)
        ax.plot([r.batch for r in records], [r.aggregate_decode_tokens_per_s for r in records],
                styles[contexts.index(context) % len(styles)], marker="o", color=colours(methods.index(method) % 10),
                label=f"{method} @ {context:,} tok")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (sequences decoded together); each line ends at its measured max batch")
    ax.set_ylabel("aggregate decode (tok/s) = batch x 1000 / TPOT")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
