"""A stopwatch that is honest on both devices: CUDA events on GPU (device time, one synchronisation at the end),
perf_counter on CPU."""

from __future__ import annotations

import contextlib
import statistics
import time
from contextlib import nullcontext

import torch

_STREAMS: dict = {}


def measurement_stream(device: torch.device):
    """Run measured work on one dedicated CUDA stream per device.

    A CUDA graph cannot be captured on the default stream; measuring on the same stream the fast engine captures on
    keeps every engine's cuBLAS workspace count the same (PyTorch keeps one workspace per stream).
    """
    if device.type != "cuda":
        return nullcontext()
    if str(device) not in _STREAMS:
        _STREAMS[str(device)] = torch.cuda.Stream(device)
    stream = _STREAMS[str(device)]
    return torch.cuda.stream(stream)


def capture_graph(step, own_stream) -> torch.cuda.CUDAGraph:
    """One call of `step` captured as a CUDA graph, directly: torch.cuda.graph() would also synchronise, collect
    garbage and empty the allocator cache on entry, none of which belongs inside a timed decode. It captures on the
    current stream (measure's measurement stream, whose cuBLAS workspace it then reuses), or on `own_stream` when
    called on the default stream, where capture is not allowed. An error inside capture (an OOM) ends the capture
    before it is raised, so the stream stays usable and a capacity search goes on."""
    graph = torch.cuda.CUDAGraph()
    current = torch.cuda.current_stream()
    stream = own_stream if current == torch.cuda.default_stream() else current
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        graph.capture_begin()
        try:
            step()
        except BaseException:
            with contextlib.suppress(Exception):
                graph.capture_end()
            raise
        graph.capture_end()
    current.wait_stream(stream)
    return graph


def replayed_seconds(fn, replays: int = 50, rounds: int = 5) -> float:
    """Median seconds per call of `fn` (GPU tools: kernels, a step's parts): run once eagerly (compiles), captured
    once as a CUDA graph, replayed `replays` times per round between two events. Every call captures on one side
    stream (PyTorch keeps a cuBLAS workspace per stream that ran a GEMM)."""
    if "tools" not in _STREAMS:
        _STREAMS["tools"] = torch.cuda.Stream()
    stream = _STREAMS["tools"]
    with torch.cuda.stream(stream):
        fn()
        graph = capture_graph(fn, stream)
    torch.cuda.synchronize()  # the eager call ran on the side stream: let it finish before the first round starts
    samples = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1000 / replays)
    return statistics.median(samples)


class Stopwatch:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: dict[str, object] = {}
        self.kind = "cuda_events" if self.cuda else "wall_clock"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()  # nothing queued before the start may leak into the measurement
        self.mark("start")

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def seconds(self, a: str, b: str) -> float:
        """Seconds from mark a to mark b; synchronises once on CUDA."""
        if self.cuda:
            self.marks[b].synchronize()
            return self.marks[a].elapsed_time(self.marks[b]) / 1000.0
        return self.marks[b] - self.marks[a]
