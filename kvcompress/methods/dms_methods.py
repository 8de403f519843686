"""DMS-8x as methods: `dms-8x[evict=<fraction>]`, DMS's rule run natively (methods/dms.py: the rule, its attention
patch and the hf engine's cache; engine/fast/dms.py: the fast engine's compact cache), and `dms-8x-remote`, the
checkpoint's own remote code in a process of its own (run/isolated.py).

methods/dms.py imports torch: it is imported here only when a model runs, so that parsing stays light.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import ClassVar

from kvcompress.errors import UserError
from kvcompress.methods.base import Method
from kvcompress.methods.grammar import parse_options

NAME = "dms-8x"
REMOTE_NAME = "dms-8x-remote"


@dataclass
class _DMS(Method):
    single_prefill: ClassVar[bool] = True  # DMS-8x allows one prefill per cache: context and question together
    needs_dms_checkpoint: ClassVar[bool] = True

    @property
    def phase(self) -> str:
        return "prefill+decoding"

    @property
    def expected_memory(self) -> str:
        return "real"

    def problem(self, lm) -> str | None:
        return None  # runs on the DMS checkpoint, or on the main model where it adds no weights

    def record_fields(self, record, decoder) -> None:
        record.dms_impl = self.dms_impl


@dataclass
class NativeDMS(_DMS):
    params: object = None  # the cell's methods.dms.DMSParams (calibrated thresholds), set by `prepare`
    dms_impl: ClassVar[str] = "native"

    def params_for(self, model):
        """The prepared parameters, else the checkpoint's own decisions (from its config)."""
        from kvcompress.methods import dms

        return self.params or dms.DMSParams.from_config(model.config)

    def hook(self, model):
        """DMS's attention patch: it makes the decisions and evicts, in every prefill and decode step."""
        from kvcompress.methods import dms

        return dms.DMSPatch(self.params_for(model))

    def prepare(self, lm, prompt) -> NativeDMS:
        """The checkpoint's decisions, or thresholds calibrated on this prompt (random weights always;
        `dms-8x[evict=X]` on any weights). One calibration prefill, before warm-up: nothing of it is timed."""
        import torch

        from kvcompress.methods import dms

        params = dms.DMSParams.from_config(lm.model.config)
        target = self.options.get("evict")
        if target is None and lm.weights == "random":
            target = params.default_evict
        if target is not None:
            ids = torch.cat([prompt.context_ids, prompt.question_ids], dim=1).to(lm.device)
            params = dms.calibrate(lm.model, ids, params, target)
        return replace(self, params=params)

    def new_cache(self, decoder, lm, n_new: int, batch_room: int | None = None):
        return decoder.new_dms_cache(self.params_for(lm.model), lm, n_new, batch_room)

    def problem(self, lm) -> str | None:
        if getattr(lm.model.config, "dms_window_size", None) is None:
            return f"{lm.name} has no DMS config fields (dms_window_size): native dms-8x cannot run on it"
        return None

    def record_fields(self, record, decoder) -> None:
        super().record_fields(record, decoder)
        record.dms_layout = decoder.dms_layout
        record.dms_decisions = self.params.decisions

    def batch_notes(self, batch: int) -> list[str]:
        if batch > 1 and self.params.threshold is not None:
            return ["DMS thresholds calibrated once, on sequence 0's prompt, shared by the batch"]
        return []


@dataclass
class RemoteDMS(_DMS):
    runs_in_child: ClassVar[bool] = True
    dms_impl: ClassVar[str] = "remote"

    def new_cache(self, decoder, lm, n_new: int, batch_room: int | None = None):
        return None  # its remote code swaps any cache it is given for its own paged one

    def engine_problem(self, decoder) -> str | None:
        if not decoder.runs_model_forward:
            return "DMS-8x's remote code keeps its own paged cache"
        return None

    def batch_problem(self, settings) -> str | None:
        return "batched decode of dms-8x-remote is not supported (its child process decodes batch 1); dms-8x batches"


def parse(text: str) -> Method | None:
    match = re.fullmatch(r"(?P<name>dms-8x-remote|dms-8x|dms)(?:\[(?P<options>.*)\])?", text.lower())
    if not match:
        base_name = re.split(r"[@\[]", text, maxsplit=1)[0]
        if base_name.lower() in ("dms", NAME, REMOTE_NAME):
            raise UserError(f"{base_name} takes no ratio (its decisions set its compression): write {base_name!r}, "
                            f"or dms-8x[evict=0.5] for a calibrated fraction (in {text!r})")
        return None
    remote = match["name"] == REMOTE_NAME
    options = parse_options(match["options"] or "", text)
    unknown = sorted(set(options) - ({"evict"} if not remote else set()))
    if unknown:
        accepted = "none (the checkpoint's code decides)" if remote else "evict=<fraction in (0, 1)>"
        raise UserError(f"{match['name']} has no option {unknown[0]!r} in {text!r}; it takes: {accepted}")
    if "evict" in options:
        evict = options["evict"]
        if not isinstance(evict, (int, float)) or isinstance(evict, bool) or not 0.0 < evict < 1.0:
            raise UserError(f"evict in {text!r} must be a fraction in (0, 1) of the tokens outside the window")
        options["evict"] = float(evict)
    if remote:
        return RemoteDMS(REMOTE_NAME, options=options)
    return NativeDMS(NAME + (f"[evict={options['evict']:g}]" if options else ""), options=options)


def as_remote(methods: list[Method]) -> list[Method]:
    """--dms-impl remote: native DMS replaced by the checkpoint's own code."""
    if any(isinstance(m, NativeDMS) and m.options for m in methods):
        raise UserError("--dms-impl remote runs the checkpoint's own decisions: drop dms-8x's [evict=...]")
    return [RemoteDMS(REMOTE_NAME) if isinstance(m, NativeDMS) else m for m in methods]
