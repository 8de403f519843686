"""Methods as objects (methods/base.py): each family answers the protocol itself, engines are told apart by their
named capabilities (engine/decoder.py), and a new family is one parser in methods.FAMILIES."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from kvcompress import methods
from kvcompress.engine.fast.decoder import FastDecoder
from kvcompress.engine.generate import GenerationSettings, prefill_protocol
from kvcompress.engine.hf import HFDecoder
from kvcompress.methods import Method, parse_method

FIXED, STOPPING = GenerationSettings(), GenerationSettings(fixed_length=False)


@pytest.mark.parametrize("name, single, shares, child, checkpoint, impl", [
    ("vanilla", False, True, False, False, None),
    ("knorm@0.5", False, True, False, False, None),
    ("decoding+knorm[compression_interval=8,target_size=64]", False, False, False, False, None),
    ("dms-8x", True, False, False, True, "native"),
    ("dms-8x-remote", True, False, True, True, "remote"),
])
def test_each_family_says_how_it_runs(name, single, shares, child, checkpoint, impl):
    m = parse_method(name)
    assert (m.single_prefill, m.shares_prefill, m.runs_in_child, m.needs_dms_checkpoint, m.dms_impl) == \
        (single, shares, child, checkpoint, impl)
    assert prefill_protocol(m, FIXED) == ((True, "single_prefill") if single else (False, "query_agnostic"))


def test_engine_and_batch_problems_come_from_the_method_and_the_decoders_capabilities(tiny):
    fast, hf = FastDecoder(tiny), HFDecoder()
    decoding = parse_method("decoding+knorm[compression_interval=8,target_size=64]")
    assert fast.unsupported(decoding) == "a decoding-phase press rewrites the cache inside transformers' forward"
    assert fast.unsupported(parse_method("dms-8x-remote")) == "DMS-8x's remote code keeps its own paged cache"
    assert fast.unsupported(parse_method("dms-8x")) is None and fast.unsupported(parse_method("knorm@0.5")) is None
    assert all(hf.unsupported(parse_method(n)) is None for n in ("vanilla", "dms-8x", "dms-8x-remote"))
    assert hf.unsupported(decoding) is None
    assert "dms-8x-remote is not supported" in parse_method("dms-8x-remote").batch_problem(FIXED)
    assert "decoding-phase press is not supported" in decoding.batch_problem(FIXED)
    assert parse_method("dms-8x").batch_problem(FIXED) is None
    assert "end-of-sequence" in parse_method("knorm@0.5").batch_problem(STOPPING)


def test_native_dms_fills_its_own_record_fields():
    method = parse_method("dms-8x")
    method = type(method)(method.name, options=method.options, params=SimpleNamespace(decisions="d", threshold=1))
    record = SimpleNamespace(dms_impl=None, dms_layout=None, dms_decisions=None)
    method.record_fields(record, HFDecoder())
    assert vars(record) == {"dms_impl": "native", "dms_layout": "mask, no reclaim", "dms_decisions": "d"}
    assert method.batch_notes(1) == [] and len(method.batch_notes(2)) == 1
    record = SimpleNamespace(dms_impl=None)
    parse_method("dms-8x-remote").record_fields(record, HFDecoder())
    assert record.dms_impl == "remote"


def test_a_new_family_is_one_parser_in_the_registry(monkeypatch):
    @dataclass
    class Halved(Method):
        @property
        def phase(self) -> str:
            return "prefill"

    def parse(text):
        return Halved("halved", 0.5) if text == "halved" else None

    monkeypatch.setattr(methods, "FAMILIES", (parse, *methods.FAMILIES))
    m = parse_method("halved")
    assert isinstance(m, Halved) and m.shares_prefill and m.hook(None) is None
    assert [x.name for x in methods.parse_methods("halved,knorm@0.5")] == ["halved", "knorm@0.5"]
