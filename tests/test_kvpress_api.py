"""test_kvpress_api.py on the tiny Qwen3: every kvpress press at ratio 0.5 is measured or fails in one line, memory
behaviour read from measured bytes matches the registry, and DecodingPress holds the cache at its target size."""

import importlib.util
from pathlib import Path

import pytest
import torch
from rich.console import Console

from kvcompress import models, report, results
from kvcompress.engine import GenerationSettings, measure
from kvcompress.engine.generate import HFDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.methods import parse_method
from kvcompress.methods import presses as registry

from conftest import one_line_error

ROOT = Path(__file__).resolve().parents[1]
CONTEXT, NEW_TOKENS = 320, 3  # prompt tokens (context ~190 + question ~130 with the byte tokenizer), output tokens


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads, and on a shared CPU their spin-waits cost 10-100x (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def script():
    """The top-level script (its file name clashes with this test module's, so load it by path)."""
    spec = importlib.util.spec_from_file_location("kvpress_api_script", ROOT / "test_kvpress_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The real command: every press of the registry at ratio 0.5, offline, on the tiny model."""
    out = tmp_path_factory.mktemp("kvpress_api") / "sweep.json"
    argv = ["--preset", "tiny", "--ratios", "0.5", "--context", str(CONTEXT), "--max-new-tokens", str(NEW_TOKENS),
            "--out", str(out)]
    assert script().main(argv) == 0
    run, records = results.load(out)
    return run, {r.method: r for r in records}, out


def layer_token_bytes(model) -> int:
    """K and V bytes of one token in one layer, from the config (independent of the accounting under test)."""
    c = model.config
    return 2 * c.num_key_value_heads * c.head_dim * model.dtype.itemsize


def test_registry_covers_every_class_kvpress_exports():
    assert {p.class_name for p in registry.PRESSES.values()} == set(registry.exported_press_classes())


def test_every_press_at_half_is_measured_with_bytes_matching_kept_tokens_or_fails_in_one_line(sweep, tiny):
    run, records, _ = sweep
    expected = {name: parse_method(name) for name in records}
    # every press of the registry ran as the outermost press of a method (dmspress over two scorers), and vanilla
    outermost = [m.chain[0].name for m in expected.values() if m.chain]
    assert set(outermost) == set(registry.PRESSES) and "vanilla" in records and len(records) == len(outermost) + 1
    assert all(m.compression_ratio in (None, 0.5) for m in expected.values() if m.chain)
    per_token, layers = layer_token_bytes(tiny.model), tiny.model.config.num_hidden_layers
    failed = set()
    for name, r in records.items():
        method = expected[name]
        if r.error:
            assert "\n" not in r.error and 0 < len(r.error) < 400, name
            if method.needs_hub:
                assert "needs the Hugging Face Hub" in r.error and "offline, skipped" in r.error, name
            failed.add(method.chain[0].name)
            continue
        full = r.context_tokens * per_token * layers
        assert r.kv_cache_bytes_full == full, name
        if r.kv_memory_measured == "mask" or r.phase == "decoding" or r.kv_memory_measured == "none":
            assert r.kv_cache_bytes == full, name  # tensors keep every position
        else:  # the tensors hold exactly the kept tokens, layer by layer
            assert r.kv_cache_bytes == round(r.kv_tokens_kept * layers) * per_token, name
        assert r.kv_live_bytes == round(r.kv_tokens_kept * layers * per_token), name
        assert r.kv_cache_bytes_end >= r.kv_live_bytes_end, name
        assert r.ttft_s > 0 and r.decode_tokens_per_s > 0 and r.answer is not None, name
    # Nothing failed but what cannot run offline on SDPA: Hub downloads, eager-only, and Finch's tokenizer surgery.
    hub = {p.name for p in registry.PRESSES.values() if p.needs_hub}
    assert failed <= hub | {"observed_attention", "finch"}
    assert run["presses"] == "all" and run["ratios"] == [0.5]


def measured_class(r, full_bytes: int) -> str:
    """Memory behaviour from bytes alone: fewer bytes than the full cache = real; full bytes but fewer live = mask."""
    if r.kv_cache_bytes < full_bytes:
        return "uneven" if r.kv_tokens_kept_min != r.kv_tokens_kept_max else "real"
    return "mask" if r.kv_live_bytes < r.kv_cache_bytes else "none"


@pytest.mark.parametrize("name, kept_exactly", [
    ("knorm@0.5", True), ("snapkv@0.5", True), ("streaming_llm@0.5", True), ("tova@0.5", True),
    ("keydiff@0.5", True), ("critical+snapkv@0.5", True), ("pyramidkv@0.5", False), ("think@0.5", False),
    ("adakv+expected_attention@0.5", True), ("critical_adakv+snapkv@0.5", True), ("kvzip@0.5", False),
    ("dmspress+random[threshold=0.5]", False),
])
def test_memory_behaviour_from_measured_bytes_matches_the_registry(sweep, tiny, name, kept_exactly):
    _, records, _ = sweep
    r = records[name]
    assert r.error is None, r.error
    full = r.context_tokens * layer_token_bytes(tiny.model) * tiny.model.config.num_hidden_layers
    behaviour = measured_class(r, full)
    assert behaviour == parse_method(name).expected_memory == r.kv_memory_measured
    assert r.kv_memory_saved is (behaviour in ("real", "uneven"))
    if kept_exactly:  # requested vs achieved: kvpress keeps max(1, int(n * (1 - ratio))) entries per head
        assert r.kv_tokens_kept == max(1, int(r.context_tokens * 0.5))
    if behaviour == "mask":
        assert r.kv_tokens_kept < r.context_tokens  # entries are hidden...
        assert r.kv_cache_bytes == full  # ...but not freed


# Self-sizing presses whose eviction depends on the model's attention: SimLayerKV evicts only in layers whose
# attention sits on the first and recent tokens (lazy layers), which the tiny model's random weights need not have.
# Every other self-sizing press is set to evict at any length (press_sweep.OWN_SETTINGS).
MAY_FIND_NOTHING = {"simlayerkv"}


def test_every_measured_press_behaves_as_documented(sweep):
    _, records, _ = sweep
    for name, r in records.items():
        if r.error or r.method == "vanilla":
            continue
        if r.kv_memory_measured == r.expected_memory:
            continue
        outer = parse_method(name).chain[0].name
        assert r.kv_memory_measured == "none" and outer in MAY_FIND_NOTHING, (name, r.kv_memory_measured)
        assert r.kv_tokens_kept == r.context_tokens, name  # "none" means nothing was evicted...
        assert any("evicted nothing" in note for note in r.notes), name  # ...and the record says so


def traced_lengths(tiny, prompt, method_text, max_new_tokens):
    """Cache length of every layer after each decode step of the last generation measure() ran."""
    lengths = []
    decoder = HFDecoder(trace=lambda step, cache: lengths.append({layer.keys.shape[-2] for layer in cache.layers}))
    settings = GenerationSettings(max_new_tokens, SamplingConfig(greedy=True))
    record = measure(tiny, parse_method(method_text), prompt, settings, decoder, repeats=1, warmup=False)
    steps = max_new_tokens - 1
    assert lengths and len(lengths) % steps == 0  # every generation traced every step
    return lengths[-steps:], record


def test_decoding_press_keeps_the_cache_at_its_target_size_during_decoding(tiny, tiny_prompt):
    steps, record = traced_lengths(tiny, tiny_prompt, "decoding+knorm[compression_interval=1,target_size=64]", 9)
    assert tiny_prompt.input_tokens > 64
    assert steps == [{64}] * 8  # every layer, after every decode step
    assert record.kv_tokens_end == 64
    assert record.kv_cache_bytes_end == 64 * layer_token_bytes(tiny.model) * tiny.model.config.num_hidden_layers


def test_decoding_press_prunes_every_interval_and_grows_in_between(tiny, tiny_prompt):
    # The question (131 tokens >= target_size) already triggers a compression; then one token per step is added
    # and every 3rd decode step prunes back to 64: 65, 66, 64, 65, 66, 64, ...
    steps, record = traced_lengths(tiny, tiny_prompt, "decoding+knorm[compression_interval=3,target_size=64]", 10)
    assert steps == [{64 + step % 3} for step in range(1, 10)]
    assert record.kv_tokens_end == 64 + 9 % 3


def test_observed_attention_runs_with_eager_attention(tiny_prompt):
    eager = models.load(models.MODELS["tiny"], device=torch.device("cpu"), attn_implementation="eager")
    settings = GenerationSettings(3, SamplingConfig(greedy=True))
    r = measure(eager, parse_method("observed_attention@0.5"), tiny_prompt, settings, HFDecoder(), repeats=1,
                warmup=False)
    assert r.kv_tokens_kept == int(tiny_prompt.context_tokens * 0.5) and r.kv_memory_saved is True


def test_list_prints_the_registry(capsys):
    assert script().main(["--list"]) == 0
    out = capsys.readouterr().out
    for info in registry.PRESSES.values():
        assert info.name in out and info.class_name in out
    assert "needs Hub" in out and "nvidia/KVzap" in out and "NOT nvidia's DMS-8x" in out


@pytest.mark.parametrize("argv, message", [
    (["--presses", "nosuchpress"], "unknown press 'nosuchpress'"),
    (["--ratios", "0.5,1.5"], "must be in (0, 1)"),
    (["--presses", "dmspress+knorm"], "dmspress needs threshold"),
    (["--presses", "decoding+knorm[target_sise=8]"], "has no option 'target_sise'"),
    (["--presses", "dms-8x"], "not a kvpress press"),
    (["--context", "256,512"], "one prompt length"),
    (["--methods", "knorm@0.5"], "--presses"),
])
def test_bad_sweep_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert script().main(["--preset", "tiny", "--out", str(tmp_path / "o.json")] + argv) == 2
    assert message in one_line_error(capsys)


def test_table_and_plot_show_which_presses_save_memory(sweep):
    _, records, out = sweep
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    console = Console(record=True, width=200)
    report.print_press_grid(list(records.values()), [0.5], "t", console)
    text = console.export_text()

    def block(group: str) -> str:  # the table rows of one press, up to the next section line
        start = text.index(f"│ {group[:30]}")  # long names fold after 34 characters
        return text[start:text.index("├", start)]

    assert "measured mask" in block("adakv+expected_attention") and "no (mask)" in block("adakv+expected_attention")
    assert "measured real" in block("knorm") and "yes" in block("knorm")
    assert "achieved (end)" in block("decoding+knorm[compression_interval=1,target_size=160]")  # judged at the end
    assert "needs the Hugging Face Hub" in text[text.index("not measured"):]
