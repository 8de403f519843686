"""DMS-8x's sharp edges, offline: the tiny DMS fixture (kvcompress/tiny_dms.py) is a local folder loaded through the
real trust_remote_code path, with a paged cache whose live counts are known from its eviction rule."""

import json
import math

import pytest
import torch
import transformers

import test_dms_inference
from kvcompress.models import dms, tiny_dms
from kvcompress.run import isolated, runner
from kvcompress import models
from kvcompress.models.tiny import tiny_config
from kvcompress.engine import GenerationSettings, generate_once, measure
from kvcompress.engine.generate import HFDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.errors import UserError
from kvcompress.methods import parse_method
from kvcompress.tasks import prompts
from kvcompress.tasks.cell import Cell

CPU = torch.device("cpu")
SPEC = tiny_dms.FixtureSpec()  # window 64; kv head 0 keeps 1 in 2 older tokens, head 1 keeps 1 in 4


def load(folder, **kw):
    return dms.load(models.MODELS["tiny-dms"], device=CPU, dtype=torch.float32, revision=None, folder=folder,
                    weights="random", **kw)


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dms")


@pytest.fixture(scope="session")
def dms_lm(fixture_dir):
    return load(tiny_dms.write_folder(fixture_dir / "tiny-dms-evicting", SPEC))


def single_prefill(max_new_tokens=8, greedy=True, seed=0):
    return GenerationSettings(max_new_tokens, SamplingConfig(greedy=greedy, seed=seed), query_aware=True)


def test_loads_through_remote_code_with_pad_token_fixed(dms_lm, fixture_dir):
    config = json.loads((fixture_dir / "tiny-dms-evicting" / "config.json").read_text())
    assert "pad_token_id" not in config and "dms_window_size" in config  # as DMS-8x's config.json
    model = dms_lm.model
    assert type(model).__module__.startswith("transformers_modules.")  # the folder's code, not transformers'
    assert type(model).__name__ == "Qwen3ForCausalLM"  # same class name as vanilla: only the config tells them apart
    assert model.config.pad_token_id == dms_lm.tokenizer.pad_token_id is not None
    assert any("pad_token_id" in note for note in dms_lm.notes)
    assert dms_lm.spec.is_dms and dms_lm.weights == "random"


def test_tiny_dms_carries_the_tiny_qwen3_weights(tiny):
    """`--dms-model tiny-dms` (built once, cached) differs from the tiny vanilla model only in its attention cache."""
    lm = models.load(models.MODELS["tiny-dms"], device=CPU)
    theirs = lm.model.state_dict()
    for name, weight in tiny.model.state_dict().items():
        assert torch.equal(weight, theirs[name]), name


def test_dms_is_detected_by_config_not_by_name(dms_lm, fixture_dir):
    folder = fixture_dir / "tiny-dms-evicting"
    assert dms.config_is_dms(str(folder))
    lm = models.load(models.resolve_spec(str(folder)), device=CPU)  # a plain folder name: routed by its config
    assert lm.spec.is_dms and type(lm.model).__module__.startswith("transformers_modules.")
    vanilla = fixture_dir / "vanilla"
    tokenizer = models.load(models.MODELS["tiny"], device=CPU).tokenizer
    # the tiny Qwen3 without DMS's config fields (the tiny preset's model carries them for native dms-8x)
    tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, dms_fields=None).save_pretrained(vanilla)
    assert not dms.config_is_dms(str(vanilla))
    with pytest.raises(UserError, match="is not a DMS checkpoint"):
        load(vanilla)


def test_missing_flash_attn_is_one_line_with_the_install_command(fixture_dir, without_flash_attn):
    folder = tiny_dms.write_folder(fixture_dir / "tiny-dms-flash", tiny_dms.FixtureSpec(import_flash_attn=True))
    with pytest.raises(UserError) as caught:
        load(folder)
    message = str(caught.value)
    assert "flash-attn, which is not installed" in message and "uv sync --extra flash" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="uv sync --extra flash"):  # the official checkpoint: checked up front
        dms.load(models.MODELS["dms-8x"], device=CPU, dtype=torch.bfloat16, revision=models.DMS_8X_REVISION)


def test_wrong_transformers_version_is_one_line(fixture_dir, dms_lm, monkeypatch):
    monkeypatch.setattr(transformers, "__version__", "5.0.0")
    with pytest.raises(UserError, match=r"needs transformers==4\.57\.3 \(found 5\.0\.0\)"):
        load(fixture_dir / "tiny-dms-evicting")


def test_official_checkpoint_needs_cuda_and_bf16(monkeypatch):
    monkeypatch.setattr(dms, "check_environment", lambda require_flash=True: None)  # as if flash-attn were there
    spec = models.MODELS["dms-8x"]
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        dms.load(spec, device=CPU, dtype=torch.bfloat16, revision=models.DMS_8X_REVISION)
    with pytest.raises(UserError, match="bfloat16; --dtype float32 is not supported"):
        dms.load(spec, device=torch.device("cuda"), dtype=torch.float32, revision=models.DMS_8X_REVISION)


def test_an_unknown_dms_model_fails_before_anything_runs(capsys, tmp_path):
    import benchmark

    assert benchmark.main(["--preset", "tiny", "--dms-model", "no-such-dms", "--out", str(tmp_path / "o.json")]) == 2
    assert "unknown model 'no-such-dms'" in capsys.readouterr().err


def test_without_eviction_it_generates_what_vanilla_generates(tiny, tiny_prompt, fixture_dir):
    """Same weights, nothing evicted (window longer than the run): the paged cache must be exactly attention."""
    lm = load(tiny_dms.write_folder(fixture_dir / "tiny-dms-keep-all", tiny_dms.FixtureSpec(window=4096)))
    for greedy in (True, False):
        settings = single_prefill(16, greedy=greedy, seed=3)
        want = generate_once(tiny, parse_method("vanilla"), tiny_prompt, settings, HFDecoder()).token_ids
        got = generate_once(lm, parse_method("dms-8x-remote"), tiny_prompt, settings, HFDecoder()).token_ids
        assert got == want


def test_pool_holds_exactly_the_surviving_tokens(tiny, dms_lm, tiny_prompt):
    """Teacher-forced: after a prefill and decode steps (with slot reuse), each head's live entries in the pool are
    layer 0's keys of exactly the positions the eviction rule keeps; vanilla's cache gives the reference keys."""
    ids = torch.cat([tiny_prompt.context_ids, tiny_prompt.question_ids], 1)[:, :150]
    prefill, steps = 130, 20
    with torch.inference_mode():
        cache = dms_lm.model(input_ids=ids[:, :prefill], use_cache=True).past_key_values
        for t in range(prefill, prefill + steps):
            dms_lm.model(input_ids=ids[:, t:t + 1], past_key_values=cache, position_ids=torch.tensor([[t]]))
        reference = tiny.model(input_ids=ids, use_cache=True).past_key_values.layers[0].keys[0]  # (heads, 150, D)
    layer = cache.layers[0]
    n = prefill + steps
    assert layer.cumulative_length == n
    assert layer.cache_seq_lengths.tolist() == tiny_dms_expected(n)
    for head, keep in enumerate(SPEC.keep_every):
        length = int(layer.cache_seq_lengths[head])
        slots = torch.arange(length)
        blocks = layer.block_table[head, slots // SPEC.block_size].long()
        live = layer.key_blocks[blocks, slots % SPEC.block_size, 0]  # (length, D), in slot order
        distance = torch.cdist(live, reference[head], compute_mode="donot_use_mm_for_euclid_dist")  # live x positions
        assert distance.min(dim=1).values.max() < 1e-4
        held = sorted(distance.argmin(dim=1).tolist())
        assert held == [p for p in range(n) if p >= n - SPEC.window or p % keep == 0]


def tiny_dms_expected(n: int) -> list[int]:
    return tiny_dms.expected_live_tokens(n, SPEC)


def test_kv_accounting_reads_the_paged_cache(tiny, dms_lm, tiny_prompt, run_method):
    new = 9
    r = measure(dms_lm, parse_method("dms-8x-remote"), tiny_prompt, single_prefill(new), HFDecoder(), repeats=1,
                warmup=False)
    vanilla = run_method("vanilla", query_aware=True, max_new_tokens=new)
    n = tiny_prompt.input_tokens
    layers, head_dim = tiny.model.config.num_hidden_layers, tiny.model.config.head_dim
    entry = 2 * head_dim * 4  # K and V of one token of one head, float32
    live = tiny_dms_expected(n)
    assert r.kv_tokens_per_head == [live] * layers
    assert r.kv_tokens_per_head_end == [tiny_dms_expected(n + new - 1)] * layers  # the last token is never fed
    assert r.kv_tokens_kept == sum(live) / len(live)
    assert r.kv_compression_achieved == pytest.approx(1 - sum(live) / len(live) / n)
    assert r.kv_live_bytes == layers * sum(live) * entry
    # the pool: pages of 16 tokens per head, from an initial 128 tokens per head, grown x1.5 until they fit
    pages = sum(math.ceil(x / SPEC.block_size) for x in live)
    blocks = 2 * SPEC.initial_tokens // SPEC.block_size
    while blocks < pages:
        blocks = math.ceil(blocks * 1.5)
    assert r.kv_cache_bytes == layers * blocks * SPEC.block_size * entry
    # "nothing evicted" is what vanilla really holds at the same positions, measured from its own cache
    assert r.kv_cache_bytes_full == vanilla.kv_cache_bytes == n * layers * len(live) * entry
    assert r.kv_cache_bytes < vanilla.kv_cache_bytes and r.kv_memory_saved is True


def test_a_short_prompt_saves_no_memory_because_the_pool_is_preallocated(dms_lm):
    prompt = Cell(None, text="Hello there.", prompt_id="short").build(dms_lm.tokenizer)[0]
    r = measure(dms_lm, parse_method("dms-8x-remote"), prompt, single_prefill(4), HFDecoder(), repeats=1, warmup=False)
    assert prompt.input_tokens < SPEC.window  # nothing can be evicted yet
    assert r.kv_tokens_kept == prompt.input_tokens and r.kv_live_bytes == r.kv_cache_bytes_full
    assert r.kv_cache_bytes > r.kv_cache_bytes_full and r.kv_memory_saved is False


def test_a_dms_model_refuses_other_methods(dms_lm):
    reason = parse_method("vanilla").problem(dms_lm)
    assert reason and "dms-8x" in reason


def test_kvpress_in_the_dms_process_voids_its_records(dms_lm, tmp_path):
    """The child's guard, run in this process on purpose after importing kvpress."""
    import kvpress  # noqa: F401

    cfg = _cfg(tmp_path)
    cell = Cell(None, text="Hi.", prompt_id="hi")
    job = isolated.job_for(cfg, [parse_method("dms-8x-remote")], [cell], "dms_inference")
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert isolated._child(str(tmp_path / "job.json"), str(tmp_path / "out.json")) == 0
    [record] = json.loads((tmp_path / "out.json").read_text())
    assert record["error"] == isolated.KVPRESS_IMPORTED and record["process"] == "isolated"


def test_the_dms_child_measures_on_the_threads_the_parent_gives_the_preset(tmp_path, monkeypatch):
    """runner.tiny_threads runs the tiny preset on one intra-op thread; the child process sees only its job, so the
    job carries that count (on CI's busy 2 cores the child on two threads was ~7x slower)."""
    cfg = _cfg(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with runner.tiny_threads(cfg):
            job = isolated.job_for(cfg, [parse_method("dms-8x-remote")], [], "dms_inference")
        assert torch.get_num_threads() == 2
        seen = []

        def load(*args, **kwargs):  # the child's first step after setting up: stop there
            seen.append(torch.get_num_threads())
            raise UserError("stopped by the test")

        monkeypatch.setattr(isolated.models, "load", load)
        assert isolated.measure_job(json.loads(json.dumps(job)), lambda record: None) == 2
        assert seen == [1]
    finally:
        torch.set_num_threads(before)


def test_resume_skips_measured_dms_cells_without_starting_a_process(tmp_path):
    cfg = _cfg(tmp_path)
    cell = Cell(300, prompt_id="needle-300")
    # the identity of the record a child measures for this cell, written out field by field (not by the code under
    # test): the model and weights the fixture names itself by, the cell, the engine, the output budget
    from kvcompress.results import IDENTITY_FIELDS
    from kvcompress.tasks import niah

    measured = {"task": "benchmark", "model": "tiny-dms", "weights": "random", "method": "dms-8x-remote",
                "target_tokens": 300, "depth": 0.5, "needle": niah.make_needle("single", 0, 4).label,
                "prompt_id": "needle-300", "engine": "hf", "max_new_tokens": 3, "run_mode": None, "batch": 1}
    done = {tuple(measured[name] for name in IDENTITY_FIELDS)}
    assert isolated.run_in_child(cfg, [parse_method("dms-8x-remote")], [cell], "benchmark", done=done) == []


def test_prompts_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('# mine\n{"prompt": "Why is the sky blue?", "id": "sky", "thinking": true}\n\nA plain line.\n')
    cells = prompts.load_cells(path)
    assert [(c.prompt_id, c.text, c.thinking) for c in cells] == [("sky", "Why is the sky blue?", True),
                                                                  ("prompt-2", "A plain line.", False)]
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(UserError, match=r"p\.jsonl:2: not valid JSON"):
        prompts.load_cells(path)


def test_script_runs_vanilla_and_dms_side_by_side(tmp_path, capsys):
    """test_dms_inference.py --preset tiny: tiny vanilla and native dms-8x here, the tiny DMS fixture's remote code
    (dms-8x-remote) in its own process."""
    out = tmp_path / "dms.json"
    assert test_dms_inference.main(["--preset", "tiny", "--contexts", "256", "--max-new-tokens", "4",
                                    "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "live ratio" in printed and "needle-256" in printed and "reasoning" in printed
    data = json.loads(out.read_text())
    records = {(r["prompt_id"], r["method"]): r for r in data["results"]}
    methods = ("vanilla", "dms-8x", "dms-8x-remote")
    assert set(records) == {(p, m) for p in ("chat", "needle-256", "reasoning") for m in methods}
    for (prompt, method), r in records.items():
        assert r["error"] is None, r["error"]  # the DMS child would record an error had kvpress been imported
        assert r["process"] == ("isolated" if method == "dms-8x-remote" else "main")
        assert r["sampling"] == records[(prompt, "vanilla")]["sampling"] and r["seed"] == 0
        assert r["input_tokens"] == records[(prompt, "vanilla")]["input_tokens"]
    assert "native vs remote DMS" in printed  # the agreement line, per prompt
    native = records[("needle-256", "dms-8x")]
    assert native["dms_impl"] == "native" and native["dms_decisions"].startswith("calibrated to evict 0.875")
    assert native["model"] == "tiny" and native["kv_live_bytes"] < native["kv_cache_bytes"]
    needle = records[("needle-256", "dms-8x-remote")]
    assert needle["dms_impl"] == "remote" and needle["dms_decisions"] is None
    assert needle["model"] == "tiny-dms" and needle["kv_tokens_per_head"] == [tiny_dms_expected(256)] * 2
    # a measured record has the identity the parent gives a failed one, so --resume replaces failures
    cfg = _cfg(tmp_path)
    job = isolated.job_for(cfg, [parse_method("dms-8x-remote")], [], "dms_inference")
    job["settings"]["max_new_tokens"] = 4
    cell = Cell(256, depth=0.5, prompt_id="needle-256")
    assert isolated.identity(job, cell, "dms-8x-remote") == _identity(needle)
    assert test_dms_inference.main(["--preset", "tiny", "--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def _identity(record: dict) -> tuple:
    from kvcompress.results import BenchmarkResult

    return BenchmarkResult.from_dict(record).identity()


def _cfg(tmp_path):
    from kvcompress import cli

    args = cli.parser("t", "t").parse_args(["--preset", "tiny", "--dms-model", "tiny-dms", "--repeats", "1",
                                            "--max-new-tokens", "3", "--out", str(tmp_path / "o.json")])
    return cli.resolve(args, "t")


def test_a_refused_remote_batch_names_the_model_the_child_runs(tmp_path):
    """dms-8x-remote decodes batch 1 in its child; the batch-2 refusal carries that record's model and weights (the
    DMS checkpoint, here tiny-dms with random weights), not the main model's."""
    from kvcompress import cli

    args = cli.parser("t", "t").parse_args(["--preset", "tiny", "--methods", "dms-8x-remote", "--dms-model",
                                            "tiny-dms", "--batch", "1,2", "--repeats", "1", "--max-new-tokens", "3",
                                            "--out", str(tmp_path / "o.json")])
    out = runner.run(cli.resolve(args, "t"), [Cell(256, prompt_id="p")], task="t")
    by_batch = {r.batch: r for r in out.results}
    assert by_batch[1].error is None and (by_batch[1].model, by_batch[1].weights) == ("tiny-dms", "random")
    assert "child process decodes batch 1" in by_batch[2].error
    assert (by_batch[2].model, by_batch[2].weights) == ("tiny-dms", "random")
