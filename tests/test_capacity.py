"""Capacity search: the boundary found by real runs under a budget, out-of-memory runs recorded instead of fatal.

On CPU the budget is BytesBudget (weights + the batch's KV bytes read from the cache tensors): the same search code
the GPU runs under the capped allocator, with a limit the tests can compute independently from the config."""

import json

import pytest
import torch

from kvcompress.commands import capacity
from kvcompress.run.capacity import (AllocatorBudget, BytesBudget, Probe, Runner, capacity_cell, predict,
                                     search)
from kvcompress.engine import GenerationSettings
from kvcompress.engine.fast.decoder import FastDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.errors import UserError
from kvcompress.methods import parse_method
from kvcompress.tasks.cell import Cell

from conftest import bytes_per_token

NEW = 6  # --max-new-tokens of the generation whose memory must fit


def test_budget_sizes_parse_and_bad_ones_are_refused():
    assert capacity.parse_budget("80GiB") == 80 * 2**30
    assert capacity.parse_budget("141GB") == 141 * 10**9
    assert capacity.parse_budget("1.5 MiB") == 3 * 2**19
    for bad in ("80 parsecs", "-3GiB", "", "GiB"):
        with pytest.raises(UserError):
            capacity.parse_budget(bad)


@pytest.mark.parametrize("boundary", [1, 7, 13, 90, 437])
@pytest.mark.parametrize("start_error", [0.7, 0.95, 1.0, 1.08, 1.6])
def test_search_finds_the_boundary_from_a_wrong_prediction(boundary, start_error):
    runs = []

    def fits(batch):
        runs.append(batch)
        return batch <= boundary

    start = max(1, round(boundary * start_error))
    lo, hi = search(fits, start, 1024, max_runs=20)
    assert lo <= boundary < hi and hi - lo <= max(1, 0.02 * boundary)  # exact up to 50, within 2 % above
    if boundary <= 50:
        assert (lo, hi) == (boundary, boundary + 1)
    assert len(runs) == len(set(runs))  # never the same batch twice
    if start_error in (0.95, 1.0, 1.08):  # a prediction within 10 %: a few runs
        assert len(runs) <= 7


def test_search_stops_after_max_runs_with_a_bracket():
    lo, hi = search(lambda b: b <= 500, 10, 1024, max_runs=3)
    assert lo < 500 < hi or (lo <= 500 and hi > 1024)


def test_prediction_takes_the_tighter_phase():
    one = Probe(1, 0, True, {"prefill": 100, "decode": 60}, None, 0)
    two = Probe(2, 0, True, {"prefill": 110, "decode": 80}, None, 0)
    # prefill: 100 + 10 (b - 1) <= 300 -> b <= 21; decode: 60 + 20 (b - 1) <= 300 -> b <= 13
    assert predict(one, two, 300) == 13


@pytest.fixture(scope="module")
def pair(tiny):
    return tuple(Cell(target_tokens=400, needle_seed=b).build(tiny.tokenizer)[0] for b in (0, 1))


def _runner(tiny, budget_bytes):
    settings = GenerationSettings(NEW, SamplingConfig(greedy=True))
    return Runner(tiny, FastDecoder(tiny), settings, BytesBudget(budget_bytes), search_tokens=2)


def test_capacity_search_on_a_cpu_budget_finds_the_byte_boundary(tiny, pair):
    assert pair[0].input_tokens == pair[1].input_tokens == 400
    # vanilla keeps every input token; the fast engine's buffers add room for the NEW - 1 tokens still to come
    per_sequence = bytes_per_token(tiny.model) * (400 + NEW - 1)
    budget = tiny.weights_bytes + int(5.5 * per_sequence)
    runner = _runner(tiny, budget)
    assert runner.search_settings.max_new_tokens == 2 and runner.search_settings.reserve_tokens == NEW
    lo, hi, predicted, probes = capacity_cell(runner, parse_method("vanilla"), pair, 400, max_batch=64, max_runs=6)
    assert (lo, hi) == (5, 6) and predicted == 5
    failed = [p for p in probes if not p.fits]
    assert failed and all(p.batch >= 6 and "OOM" in p.error for p in failed)
    assert runner.decoder.state is None  # every probe released its buffers


def test_a_cell_that_does_not_fit_at_batch_one_is_recorded_not_fatal(tiny, pair):
    runner = _runner(tiny, tiny.weights_bytes + 1000)
    lo, hi, predicted, probes = capacity_cell(runner, parse_method("vanilla"), pair, 400, max_batch=64, max_runs=6)
    assert (lo, hi, predicted) == (0, 1, None)
    assert len(probes) == 1 and not probes[0].fits and "budget exceeded" in probes[0].error


def test_a_real_out_of_memory_error_is_caught_and_the_memory_released(tiny, pair, monkeypatch):
    """What the capped CUDA allocator raises in the middle of a run (here: inside the decode)."""
    runner = _runner(tiny, 2**40)
    real = FastDecoder.decode_batch

    def exhausted(self, lm, admitted, *args):
        if len(admitted) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, lm, admitted, *args)

    monkeypatch.setattr(FastDecoder, "decode_batch", exhausted)
    lo, hi, _, probes = capacity_cell(runner, parse_method("knorm@0.5"), pair, 400, max_batch=64, max_runs=14)
    assert (lo, hi) == (3, 4)
    assert any(p.error and "Tried to allocate" in p.error for p in probes)


def test_a_refusal_by_the_capped_allocator_says_what_it_had_allocated_and_reserved(tiny, pair, monkeypatch):
    """The cap bounds the allocator's reserved bytes while the peaks count allocated ones: a refused probe's error
    carries both, read when the allocator refused (here faked: CPU), so a batch short of its prediction shows
    whether reserved-but-unallocated blocks refused it."""
    settings = GenerationSettings(NEW, SamplingConfig(greedy=True))
    runner = Runner(tiny, FastDecoder(tiny), settings, AllocatorBudget(2**40, torch.device("cuda", 0)), 2)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 70 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 75 * 2**30 + 2**29)

    def refused(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 546.00 MiB. GPU 0 has a total capacity")

    monkeypatch.setattr("kvcompress.run.capacity.generate_batch", refused)
    probe = runner.probe(parse_method("int4"), list(pair), 400)
    assert not probe.fits and "Tried to allocate 546.00 MiB" in probe.error
    assert probe.error.endswith("[at the refusal: 70.00 GiB allocated, 75.50 GiB reserved]")
    assert BytesBudget(1).at_refusal() == ""


def test_a_probe_that_fits_the_capped_allocator_records_its_reserved_peak(tiny, pair, monkeypatch):
    """Beside the allocated peaks, the allocator's reserved peak (faked here: CPU): at the largest batch that fits,
    cap - reserved is what no further sequence could use, cap - allocated what the bytes prediction counted on."""
    settings = GenerationSettings(NEW, SamplingConfig(greedy=True))
    runner = Runner(tiny, FastDecoder(tiny), settings, AllocatorBudget(2**40, torch.device("cuda", 0)), 2)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 71 * 2**30)
    probe = runner.probe(parse_method("knorm@0.5"), list(pair), 400)
    assert probe.fits and probe.to_dict()["reserved_bytes"] == 71 * 2**30
    assert probe.to_dict()["peak_bytes"]["decode"] < 71 * 2**30  # the allocated peak, read from the run
    assert probe.line().startswith("fits: ") and probe.line().endswith(" allocated, 71.00 GiB reserved at peak")


def test_the_capacity_command_writes_records_a_table_and_a_plot(tmp_path, capsys):
    out = tmp_path / "capacity.json"
    # 256 tokens fit a few sequences; 4096 tokens do not fit even alone: that cell becomes an error record
    code = capacity.main(["--preset", "tiny", "--methods", "vanilla", "--contexts", "256,4096", "--budget", "3MiB",
                          "--max-new-tokens", "4", "--search-runs", "3", "--out", str(out)])
    assert code == 0
    records = json.loads(out.read_text())["results"]
    cells = {(r["task"], r["target_tokens"], r["batch"]): r for r in records}
    small = [r for r in records if r["task"] == "capacity" and r["target_tokens"] == 256 and r["batch"] > 1]
    assert small and small[0]["capacity_max_batch"] == small[0]["batch"] and small[0]["aggregate_decode_tokens_per_s"]
    assert small[0]["capacity_probes"] and small[0]["admission"] == "cloned"
    big = cells[("capacity", 4096, 1)]
    assert big["error"].startswith("does not fit the budget at batch 1") and big["capacity_max_batch"] == 0
    longest = [r for r in records if r["task"] == "capacity_context"]
    assert longest and 256 <= longest[0]["target_tokens"] < 4096
    assert (tmp_path / "capacity.png").stat().st_size > 0
    assert "max batch" in capsys.readouterr().out


def test_a_timed_run_that_runs_out_at_the_max_is_timed_below_it_and_says_so(tmp_path, monkeypatch):
    """The search's runs fit at the max but its timed run (warm-up, repeats, memory pass) does not: the record is timed
    at 2 % fewer sequences (at least one), keeps the search's max, and its note names both batches."""
    import kvcompress.engine as engine

    real = engine.measure
    seen = []

    def measure(lm, method, prompts, *args, **kwargs):
        batch = len(prompts) if isinstance(prompts, list) else 1
        seen.append(batch)
        if batch > 1 and len(seen) == 2:  # the first timed run above batch 1: the search's max
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 800.00 MiB")
        return real(lm, method, prompts, *args, **kwargs)

    monkeypatch.setattr(engine, "measure", measure)
    out = tmp_path / "capacity.json"
    assert capacity.main(["--preset", "tiny", "--methods", "vanilla", "--contexts", "256", "--budget", "8MiB",
                          "--max-new-tokens", "4", "--search-runs", "3", "--out", str(out)]) == 0
    records = [r for r in json.loads(out.read_text())["results"] if r["task"] == "capacity"]
    top = max(records, key=lambda r: r["batch"])
    most = top["capacity_max_batch"]
    assert most > 2 and seen[1:] == [most, most - 1]
    assert top["batch"] == most - 1 and top["error"] is None and top["aggregate_decode_tokens_per_s"]
    assert any(n.startswith(f"timed at batch {most - 1}: the timed run at batch {most} ran out of memory")
               for n in top["notes"])


def test_a_kept_budget_is_searched_at_the_ratio_it_gives(tmp_path):
    """knorm@64tok keeps 64 tokens of every context: its cells run at 1 - 64 / context tokens (not knorm's default
    ratio 0, which would measure vanilla under the budget's name), and the record says which budget."""
    out = tmp_path / "capacity.json"
    assert capacity.main(["--preset", "tiny", "--methods", "vanilla,knorm@64tok", "--contexts", "256", "--budget",
                          "3MiB", "--max-new-tokens", "4", "--search-runs", "3", "--out", str(out)]) == 0
    records = json.loads(out.read_text())["results"]
    budgeted = [r for r in records if r["task"] == "capacity" and r["method"] == "knorm@64tok"]
    vanilla = [r for r in records if r["task"] == "capacity" and r["method"] == "vanilla"]
    assert budgeted and all(r["kv_budget"] and r["compression_ratio"] > 0 for r in budgeted)
    assert all(abs(r["kv_tokens_kept"] - 64) <= 1 for r in budgeted if r["batch"] == 1)
    assert max(r["capacity_max_batch"] for r in budgeted) > max(r["capacity_max_batch"] for r in vanilla)


def test_with_pretrained_weights_dms_runs_on_the_dms_checkpoint(tiny, tmp_path, monkeypatch):
    """As runner.run: pretrained weights share no model with native DMS, so dms-8x runs on --dms-model (loaded after
    the other methods), and the run header names it (not on the main model's weights under dms-8x's name)."""
    import dataclasses

    from kvcompress import models

    pretrained = dataclasses.replace(tiny, weights="pretrained")  # as Qwen3-8B from the Hub
    monkeypatch.setattr(models, "load", lambda *a, **k: pretrained)
    out = tmp_path / "capacity.json"
    assert capacity.main(["--preset", "tiny", "--methods", "vanilla,dms-8x", "--dms-model", "tiny-dms", "--contexts",
                          "256", "--budget", "3MiB", "--max-new-tokens", "4", "--search-runs", "2", "--max-batch", "4",
                          "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["run"]["model"] == "tiny" and data["run"]["dms_model"] == "tiny-dms"
    for r in data["results"]:
        assert r["error"] is None, r["error"]
        assert r["model"] == ("tiny-dms" if r["method"] == "dms-8x" else "tiny"), (r["method"], r["model"])
    assert {r["task"] for r in data["results"] if r["method"] == "dms-8x"} == {"capacity", "capacity_context"}


@pytest.mark.parametrize("room, at_limit", [(1500, False), (4000, True)])
def test_the_longest_context_note_names_the_position_limit_only_when_reached(tmp_path, monkeypatch, room, at_limit):
    """A 2048-position model: the longest context is searched in 64-token steps up to 2048 - 4 new tokens, i.e.
    1984. A budget of `room` KV tokens stops it below that (1500) or lets it reach it (4000): only then does the
    note say the position limit was the bound."""
    import dataclasses

    from kvcompress import models
    from kvcompress.models import tiny as tiny_module

    monkeypatch.setattr(tiny_module, "MAX_POSITIONS", 2048)
    monkeypatch.setitem(models.MODELS, "tiny", dataclasses.replace(models.MODELS["tiny"], max_positions=2048))
    model = models.load(models.MODELS["tiny"], device=torch.device("cpu"))
    assert model.max_positions == 2048
    budget = model.weights_bytes + room * bytes_per_token(model.model)
    out = tmp_path / "capacity.json"
    assert capacity.main(["--preset", "tiny", "--methods", "vanilla", "--contexts", "256", "--budget", str(budget),
                          "--max-new-tokens", "4", "--search-runs", "8", "--max-batch", "2", "--out", str(out)]) == 0
    [longest] = [r for r in json.loads(out.read_text())["results"] if r["task"] == "capacity_context"]
    top = (2048 - 4) // 64 * 64
    assert (longest["target_tokens"] == top) if at_limit else (1024 <= longest["target_tokens"] < top)
    assert any("position limit" in n for n in longest["notes"]) == at_limit, longest["notes"]
