"""What every method is: a small protocol each family implements (methods/vanilla.py, press_chain.py,
dms_methods.py), so nothing outside methods/ asks which family a method belongs to.

A method says how it hooks the model (`hook`), what it prepares for a prompt before anything is timed (`prepare`),
why it cannot run on a loaded model (`problem`), on an engine (`engine_problem`, from the decoder's named
capabilities, engine/decoder.py) or in a batch (`batch_problem`), which cache its prefill writes into (`new_cache`),
whether several questions can share its prefill (`shares_prefill`), whether other methods can
(`joins_shared_prefill`), where it runs (`runs_in_child`, `needs_dms_checkpoint`) and the record fields only it
knows (`record_fields`). A new family is one module with a
subclass and a parser, plus its entry in methods/__init__.py's FAMILIES.

This module stays free of torch, transformers and kvpress: the grammar is parsed before any of them is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class Method:
    name: str  # canonical text, e.g. "knorm@0.5"
    compression_ratio: float | None = None
    options: dict = field(default_factory=dict)
    chain: list = field(default_factory=list)  # the kvpress presses it builds, outermost first (press chains only)

    # -- where and how it runs ---------------------------------------------------------------------------------------
    single_prefill: ClassVar[bool] = False  # context and question prefilled together, always (DMS: one per cache)
    runs_in_child: ClassVar[bool] = False  # measured in a process of its own (run/isolated.py)
    needs_dms_checkpoint: ClassVar[bool] = False  # runs on the DMS checkpoint (--dms-model) on pretrained weights
    dms_impl: ClassVar[str | None] = None  # records' dms_impl: "native" | "remote" (DMS only)

    @property
    def phase(self) -> str:
        """When it compresses: "none", "prefill", "decoding" or "prefill+decoding"."""
        return "none"

    @property
    def expected_memory(self) -> str:
        """Its documented memory behaviour: real | uneven | mask | none."""
        return "none"

    @property
    def compresses_during_decoding(self) -> bool:
        return "decoding" in self.phase

    @property
    def shares_prefill(self) -> bool:
        """Whether several questions can be answered from one prefill of the context: it compresses (if at all)
        after a plain prefill and leaves the shared part alone while decoding."""
        return not self.single_prefill and not self.compresses_during_decoding

    @property
    def joins_shared_prefill(self) -> bool:
        """Whether one plain prefill of a context can serve it together with other methods (quality runs,
        engine/shared_prefill.py): it compresses each layer from that layer's inputs alone, after the layer's
        attention, so its own prefill would compute nothing else. Off unless a family says so."""
        return False

    def shared_prefill_cache(self, cache, model):
        """The cache it answers from once a shared prefill has left `cache` (what its press kept, in the model's
        dtype): that cache, unless the method stores its entries in a format of its own (methods/quantized.py)."""
        return cache

    @property
    def takes_budget(self) -> bool:
        """Whether a kept budget can size it (equal memory across methods, --match-kv)."""
        return False

    @property
    def budget_label(self) -> str | None:
        return None

    def for_context(self, context_tokens: int, model=None, target_tokens: int | None = None) -> Method:
        """This method at the ratio its budget gives for a context of `context_tokens` (itself without a budget)."""
        return self

    def press_label(self, model=None) -> str | None:
        """The kvpress object it runs, as records show it (None: not a kvpress press)."""
        return None

    # -- hooks into a run ----------------------------------------------------------------------------------------------
    def hook(self, model):
        """A fresh hook for one generation, a context manager `hook(model)` (a press, DMS's attention patch), or None.
        Decoding presses keep state between calls: never reuse one."""
        return None

    def prepare(self, lm, prompt) -> Method:
        """This method ready for `prompt` (e.g. DMS's thresholds calibrated on it); nothing of it is timed."""
        return self

    def new_cache(self, decoder, lm, n_new: int, batch_room: int | None = None):
        """The cache its prefill writes into, from `decoder` (engine/decoder.py). `batch_room`: the cache is one
        sequence of a batch being admitted, with room staged for that many sequences."""
        return decoder.new_cache(lm, n_new)

    # -- why it cannot run (one line, or None) -------------------------------------------------------------------------
    def problem(self, lm) -> str | None:
        """Why it cannot run on this loaded model."""
        if lm.spec.is_dms:
            # its forward swaps any cache it is given for its own paged one: another method would measure nothing
            return "a DMS checkpoint runs only as method dms-8x: pass it with --dms-model, not --model"
        return None

    def engine_problem(self, decoder) -> str | None:
        """Why `decoder` cannot decode it (the runner then measures it with the hf engine)."""
        return None

    def batch_problem(self, settings) -> str | None:
        """Why it cannot be decoded in a batch."""
        if not settings.fixed_length:
            return "batched decode times fixed-length generations; end-of-sequence stopping is batch 1 only"
        return None

    # -- what its records say ------------------------------------------------------------------------------------------
    def record_fields(self, record, decoder) -> None:
        """Fields of a measured record that only this method knows (`decoder`: the engine that measured it)."""

    def batch_notes(self, batch: int) -> list[str]:
        """Notes a measured record of `batch` sequences carries about how this method ran them."""
        return []

