"""The decode engine's interface: what engine.generate and engine.batch ask of the hf engine (engine/hf.py) and of
the fast engine (engine/fast/decoder.py).

A generation asks the method for the cache its prefill writes into (the method asks the decoder: `new_cache` for a
plain cache, `new_dms_cache` for native DMS's), hands each prefilled sequence of a batch to `admit`, then decodes one
sequence (`decode`) or the admitted batch (`decode_batch`); `release` drops whatever the decoder keeps between
generations (buffers, captured graphs). What an engine can do is said by named capabilities, read by the methods
(methods/base.py's `engine_problem`) and the runners, never probed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from transformers import DynamicCache


class Decoder(ABC):
    name: ClassVar[str]  # the records' engine
    dms_layout: ClassVar[str]  # how this engine lays out native DMS's cache (the records' dms_layout)
    # decodes through the model's own forward, so whatever hooks it (a decoding press, a remote code's own cache)
    # runs at every step
    runs_model_forward: ClassVar[bool]
    # sizes its buffers for the whole generation at the first step (settings.reserve_tokens), so a few decode steps
    # reach the memory peak of the whole generation
    sizes_buffers_up_front: ClassVar[bool]
    # how it holds a quantized KV cache (methods/quantized.py; the records' kv_quant_storage), None: it cannot
    quantized_kv: ClassVar[str | None] = None
    quantized_formats: ClassVar[tuple[str, ...]] = ()  # the formats it can hold
    quantized_dms_formats: ClassVar[tuple[str, ...]] = ()  # those it can hold in native DMS's cache
    quantized_masked_formats: ClassVar[tuple[str, ...]] = ()  # those it can hold under a mask-only press
    problem: str | None = None  # why this engine cannot decode the loaded model at all

    def unsupported(self, method, lm=None) -> str | None:
        """Why this engine cannot decode `method` on its model (one line), or None."""
        return method.engine_problem(self) or self.problem

    def new_cache(self, lm, n_new: int):
        """A plain cache for a prefill (the presses compress it in place)."""
        return DynamicCache()

    @abstractmethod
    def new_dms_cache(self, params, lm, n_new: int, batch_room: int | None = None):
        """Native DMS's cache for a prefill under `params` (methods.dms.DMSParams), rows for `n_new` output tokens;
        `batch_room`: one sequence of a batch being admitted, with staging room for that many sequences."""

    @abstractmethod
    def admit(self, cache, copy: bool = False, expected: int = 1):
        """One prefilled sequence of a batch (engine.batch): the cache to decode it from (copy: an independent copy,
        a cloned row; expected: how many sequences still to come a staging area opened now makes room for)."""

    @abstractmethod
    def decode(self, lm, cache, token, next_position, uniforms, settings, out_tokens, eos):
        """Decode one sequence after its first token: (tokens generated, the final cache)."""

    @abstractmethod
    def decode_batch(self, lm, admitted, uniforms, settings, out_tokens, mark=lambda *a: None, eos=frozenset(),
                     forced=None):
        """Decode engine.batch's admitted sequences together: out_tokens (steps, batch), row 0 already sampled (or
        forced). `mark("admitted")` once the batch's cache is built; `mark("steady", steps)` before the steps timed
        as the steady state; `eos` (quality runs): stop once every row has emitted one of these tokens; `forced`
        (steps, batch; quality runs): where >= 0, the token fed at that step instead of the sampled one (a row's
        forced tokens come first and never end it). Returns (steps, the batch's final cache)."""

    def release(self) -> None:
        """Drop the buffers and graphs kept between generations (before a memory measurement, between cells)."""


def answer_starts(forced, batch: int) -> list[int]:
    """Per row, the first step whose token is the row's own (after its forced tokens; 0 without any)."""
    return (forced >= 0).sum(0).tolist() if forced is not None else [0] * batch


def ended_rows(tokens: list[int], eos, step: int, answer_from: list[int]) -> set[int]:
    """The rows whose token at `step` ends them: an end-of-sequence token of their own (a forced one never does)."""
    return {b for b, t in enumerate(tokens) if t in eos and step >= answer_from[b]}
