"""A DMS checkpoint in a local folder (here the tiny DMS fixture, whose config carries DMS's fields): it runs natively
(transformers' Qwen3, no remote code) as --model or as --dms-model, with its own tokenizer when it has one, and
never loads a model no method runs on."""

import shutil

import pytest
import torch

import benchmark
from kvcompress import models, results
from kvcompress.errors import UserError
from kvcompress.models import dms, loaded, tiny_dms

CPU = torch.device("cpu")
NATIVE_NOTE = "loaded with transformers' Qwen3ForCausalLM (no remote code)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def dms_folder(tmp_path_factory):
    return tiny_dms.write_folder(tmp_path_factory.mktemp("local") / "my-dms")


def _never(*args, **kwargs):
    raise AssertionError("Qwen3-8B's tokenizer asked for: the folder has its own")


def test_a_local_dms_folder_is_a_dms_checkpoint_loaded_natively_with_its_own_tokenizer(dms_folder, monkeypatch):
    spec = models.resolve_spec(str(dms_folder))
    assert spec.is_dms  # read from its config.json, as the remote loader detects it
    monkeypatch.setattr(loaded, "qwen3_tokenizer", _never)  # nor the Hub's retries for it
    lm = models.load_dms_native(spec, device=CPU)
    assert type(lm.model).__module__.startswith("transformers.models.qwen3") and NATIVE_NOTE in lm.notes
    assert lm.tokenizer_source == str(dms_folder) and len(lm.tokenizer) <= lm.model.config.vocab_size
    assert lm.model.config.pad_token_id == lm.tokenizer.pad_token_id


@pytest.fixture
def bare_folder(dms_folder, tmp_path, qwen3_tokenizer):
    """The folder without its tokenizer: Qwen3-8B's is used, which has more tokens than this model's vocabulary."""
    return shutil.copytree(dms_folder, tmp_path / "no-tokenizer",
                           ignore=lambda folder, names: [n for n in names if n in TOKENIZER_FILES])


def test_a_local_dms_folder_without_a_tokenizer_that_fits_is_refused_in_one_line(bare_folder):
    with pytest.raises(UserError, match="ships none.*more than the model's vocab_size") as caught:
        models.load_dms_native(models.resolve_spec(str(bare_folder)), device=CPU)
    assert "\n" not in str(caught.value)


def test_the_remote_loader_reads_a_folder_without_a_tokenizer_as_one_that_ships_none(bare_folder):
    """AutoTokenizer raises ImportError on such a folder (no protobuf for a tokenizer it guesses from the config):
    Qwen3-8B's is used instead, as for a repository without one, and it does not fit: one line."""
    with pytest.raises(UserError, match="ships none.*more than the model's vocab_size"):
        dms.load(models.resolve_spec(str(bare_folder)), device=CPU, dtype=torch.float32, revision=None)


@pytest.mark.parametrize("flag", ["--model", "--dms-model"])
def test_a_local_dms_folder_runs_native_dms_as_model_or_dms_model(dms_folder, tmp_path, monkeypatch, flag):
    loads = []
    real_load = models.load
    monkeypatch.setattr(models, "load", lambda spec, **kw: loads.append(spec.name) or real_load(spec, **kw))
    out = tmp_path / "o.json"
    # --preset tiny: its own model would serve native DMS (random weights), but a named checkpoint is what runs
    assert benchmark.main(["--preset", "tiny", "--methods", "dms-8x", flag, str(dms_folder), "--contexts", "256",
                           "--repeats", "1", "--max-new-tokens", "3", "--out", str(out)]) == 0
    run, [record] = results.load(out)
    assert record.error is None and record.model == str(dms_folder) and record.dms_impl == "native"
    assert NATIVE_NOTE in run.get("dms_notes", run["notes"])
    assert loads == []  # every method runs on the checkpoint: the tiny model is never loaded


def test_qwen3s_tokenizer_goes_offline_at_once_where_the_hub_is_unreachable(monkeypatch, qwen3_tokenizer):
    """A folder without a tokenizer takes Qwen3-8B's: where the Hub cannot be reached, cached files only, at once
    (a download would retry for about 30 s before the npm copy is used)."""
    offline = []
    monkeypatch.setattr(loaded, "hub_available", lambda: False)
    monkeypatch.setattr(loaded, "go_offline", lambda: offline.append(True))
    tokenizer, _ = loaded.qwen3_tokenizer()
    assert offline == [True] and len(tokenizer) == len(qwen3_tokenizer)
