"""The fast engine computes what the hf engine computes: same tokens, same KV accounting; its Triton kernels match
their torch twins (run through Triton's interpreter on CPU); unsupported methods fall back to hf, recorded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvcompress.engine import GenerationSettings, generate_once
from kvcompress.engine.fast.decoder import FastDecoder, _DecodeState
from kvcompress.engine.generate import HFDecoder
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.memory import masked_indices
from kvcompress.methods import parse_method
from kvcompress.run.runner import pick_decoder

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["vanilla", "knorm@0.5", "adakv+snapkv@0.5", "pyramidkv@0.5"]  # plain, real shrink, mask-only, uneven


@pytest.fixture(scope="module")
def fast(tiny):
    return FastDecoder(tiny)


def _generate(tiny, prompt, method, decoder, n=32, greedy=True, seed=0, temperature=1.0):
    settings = GenerationSettings(n, SamplingConfig(temperature=temperature, top_p=0.95, greedy=greedy, seed=seed))
    return generate_once(tiny, parse_method(method), prompt, settings, decoder)


@pytest.mark.parametrize("method", METHODS)
def test_greedy_tokens_match_the_hf_engine_for_32_steps(tiny, tiny_prompt, fast, method):
    hf = _generate(tiny, tiny_prompt, method, HFDecoder())
    fa = _generate(tiny, tiny_prompt, method, fast)
    assert len(set(hf.token_ids)) >= 2  # not a constant stream (the sampled test below is the sensitive one)
    assert fa.token_ids == hf.token_ids
    assert fa.kv_end.bytes == hf.kv_end.bytes
    assert fa.kv_end.live_bytes == hf.kv_end.live_bytes
    assert fa.kv_end.tokens_per_layer == hf.kv_end.tokens_per_layer


def test_fast_records_say_fast(run_method, fast):
    assert run_method("knorm@0.5", max_new_tokens=4, decoder=fast).engine == "fast"


@pytest.mark.parametrize("method", ["vanilla", "adakv+snapkv@0.5"])
def test_sampled_tokens_match_with_the_same_seed(tiny, tiny_prompt, fast, method):
    """Sampling reads the whole distribution, so equal tokens over 24 steps mean equal logits, step after step."""
    # the tiny model is sharply peaked: a high temperature makes every step's choice depend on many logits
    hf = _generate(tiny, tiny_prompt, method, HFDecoder(), n=24, greedy=False, seed=7, temperature=8.0)
    fa = _generate(tiny, tiny_prompt, method, fast, n=24, greedy=False, seed=7, temperature=8.0)
    assert len(set(hf.token_ids)) > 5
    assert fa.token_ids == hf.token_ids


def test_the_validity_mask_replaces_kvpress_indices_before_decoding(tiny, tiny_prompt, fast, monkeypatch):
    """kvpress's index tensors (24 bytes per hidden entry) must be gone once the fast engine's mask (1 byte per
    entry) exists, or a mask-only press would hold both and peak above the hf engine in the decode phase."""
    seen = []
    real_run = _DecodeState.run

    def run(state, eos, n, mark=None):
        seen.append((masked_indices(tiny.model), [v.clone() for v in state.valid]))
        return real_run(state, eos, n, mark)

    monkeypatch.setattr(_DecodeState, "run", run)
    _generate(tiny, tiny_prompt, "adakv+snapkv@0.5", fast, n=4)
    indices, valid = seen[0]
    assert indices == {}
    hidden = sum(int((v[:, :, :tiny_prompt.input_tokens] == 0).sum()) for v in valid)
    assert hidden > 0  # the mask still hides what the press hid (token equality with hf is tested above)


def test_buffers_are_reused_across_repeats_and_released_after(run_method, fast):
    run_method("knorm@0.5", max_new_tokens=6, repeats=2, decoder=fast)
    assert fast.state is None  # measure() releases them before its memory pass and after it


@pytest.mark.parametrize("method, reason", [
    ("decoding+knorm[compression_interval=4,target_size=64]", "decoding-phase press"),
    ("dms-8x-remote", "paged cache"),
])
def test_unsupported_methods_fall_back_to_hf_with_the_reason(tiny, fast, method, reason):
    decoder, note = pick_decoder({"hf": HFDecoder(), "fast": fast}, parse_method(method), tiny)
    assert decoder.name == "hf" and reason in note


def _interpreted(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1", KVCOMPRESS_FORCE_TRITON="1")
    return subprocess.run([sys.executable, str(ROOT / "tests" / "kernel_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_triton_kernels_match_their_references_under_the_interpreter():
    proc = _interpreted()
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "all kernels match" in proc.stdout


def test_the_attention_sweep_launches_every_variant_it_times_like_the_torch_twin():
    """tools/attention_sweep.py --smoke: each launch the GPU sweep times (plain, fp8 with and without folded scales,
    ragged, int4 / int2 blocks and splits), once under the interpreter, against the engine's torch twins."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "attention_sweep.py"), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "largest difference from the torch twin" in proc.stdout


def test_the_whole_triton_step_matches_the_hf_engine_under_the_interpreter():
    proc = _interpreted("engine")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.count("engine ") == 4 and "batch knorm@0.5 x2" in proc.stdout and "batch fp8 x2" in proc.stdout
    assert "engine knorm@0.5+int4[group=4,window=4]" in proc.stdout and "batch int2[group=4,window=3] x2" in proc.stdout


def test_a_failing_cell_releases_the_buffers(tiny, tiny_prompt, fast, monkeypatch):
    """A method that fails after the fast engine allocated must not leave buffers behind for the next cell."""
    import importlib

    measure_module = importlib.import_module("kvcompress.engine.measure")  # the module, not the function it exports

    real, calls = measure_module.generate_once, []

    def fail_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(measure_module, "generate_once", fail_on_second_call)
    settings = GenerationSettings(6, SamplingConfig(greedy=True))
    with pytest.raises(RuntimeError, match="boom"):
        measure_module.measure(tiny, parse_method("knorm@0.5"), tiny_prompt, settings, fast, repeats=2)
    assert fast.state is None


@pytest.mark.parametrize("admission", ["each", "cloned"])
def test_a_batch_waits_in_per_layer_slabs_that_are_dropped_as_each_layer_moves(tiny, fast, admission, monkeypatch):
    """Staging (FastDecoder.admit): per layer, one slab for every sequence but the last and one for the last (so the
    last prefill's peak holds only the other caches), exactly their K and V bytes; layer i's slabs are gone once it
    sits in the batch buffers, before layer i + 1 is moved."""
    from kvcompress.engine.batch import generate_batch
    from kvcompress.tasks.cell import Cell

    prompts = Cell(target_tokens=300, needle_seed=0).build_batch(tiny.tokenizer, 4)[0]
    seen = []
    real = FastDecoder.layer_moved

    def moved(self, layer):
        slabs = self.staging.slabs
        seen.append((layer, [s[0].numel() for s in slabs[layer]], [s[1] for s in slabs[layer]],
                     sum(bool(slabs[j]) for j in range(len(slabs)))))
        real(self, layer)

    real_decode = FastDecoder.decode_batch
    held = []

    def decode_batch(self, lm, admitted, *args, **kwargs):  # the admitted caches are views of the slabs, not copies
        slabs = [{s[0].untyped_storage().data_ptr() for s in layer} for layer in self.staging.slabs]
        held.extend(layer.keys.untyped_storage().data_ptr() in slabs[i] and
                    layer.values.untyped_storage().data_ptr() in slabs[i]
                    for a in admitted for i, layer in enumerate(a.cache.layers))
        return real_decode(self, lm, admitted, *args, **kwargs)

    monkeypatch.setattr(FastDecoder, "layer_moved", moved)
    monkeypatch.setattr(FastDecoder, "decode_batch", decode_batch)
    out = generate_batch(tiny, parse_method("vanilla"), prompts, GenerationSettings(4, SamplingConfig(greedy=True)),
                         fast, admission=admission)
    layers = tiny.model.config.num_hidden_layers
    assert [layer for layer, *_ in seen] == list(range(layers))
    per_token = tiny.model.config.num_key_value_heads * tiny.model.config.head_dim * 2  # K and V, elements
    lengths = [p.input_tokens for p in prompts]
    if admission == "cloned":
        lengths = [lengths[0]] * 3 + [lengths[3]]
    for layer, sizes, used, still_staged in seen:
        assert sizes == [per_token * lengths[0] * 3, per_token * lengths[3]] and used == sizes
        assert still_staged == layers - layer  # this layer and the ones after it; the ones before are dropped
    assert all(not s for s in fast.staging.slabs) and out.batch == 4
    assert len(held) == 4 * layers and all(held)


def test_weights_bytes_are_walked_once_and_stay_true_after_the_fast_engine_fuses_them(monkeypatch):
    """Every record carries the weights' bytes: walking Qwen3-8B's 399 parameters for each one cost ~6 s of host
    time in a RULER 4K run (4,950 records). The model is walked once; the figure equals the parameters' own bytes
    before and after the fast engine re-points q/k/v and gate/up at views of its fused matrices."""
    import torch

    from kvcompress import models
    from kvcompress.models import loaded

    walks, walk = [], loaded.weights_bytes
    monkeypatch.setattr(loaded, "weights_bytes", lambda model: walks.append(1) or walk(model))
    lm = models.load(models.MODELS["tiny"], device=torch.device("cpu"))
    own = sum(p.numel() * p.element_size() for p in lm.model.parameters())  # each Parameter object once
    assert [lm.weights_bytes for _ in range(3)] == [own] * 3 and len(walks) == 1
    FastDecoder(lm)  # fuses the layers' projections
    assert lm.weights_bytes == walk(lm.model) == own
