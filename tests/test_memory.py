"""KV accounting against physics: bytes read from the cache tensors must match what each press keeps."""

import pytest
import torch

from conftest import bytes_per_token


def test_vanilla_kv_bytes_are_tokens_times_bytes_per_token(tiny, tiny_prompt, run_method):
    r = run_method("vanilla")
    assert r.kv_cache_bytes == tiny_prompt.context_tokens * bytes_per_token(tiny.model)
    assert r.kv_tokens_kept == tiny_prompt.context_tokens
    assert r.kv_compression_achieved == 0.0
    # at the end the cache holds context + question + all generated tokens but the last one
    assert r.kv_cache_bytes_end == (tiny_prompt.input_tokens + r.output_tokens - 1) * bytes_per_token(tiny.model)


@pytest.mark.parametrize("press", ["knorm", "snapkv", "streaming_llm", "expected_attention"])
def test_real_presses_halve_the_bytes_at_ratio_half(tiny, tiny_prompt, run_method, press):
    r = run_method(f"{press}@0.5")
    context = tiny_prompt.context_tokens
    assert abs(r.kv_tokens_kept - context / 2) <= 1
    assert r.kv_cache_bytes == round(r.kv_tokens_kept) * bytes_per_token(tiny.model)
    assert r.kv_cache_bytes == pytest.approx(context * bytes_per_token(tiny.model) / 2, rel=0.01)
    assert r.kv_memory_saved is True
    assert r.kv_compression_achieved == pytest.approx(0.5, abs=0.01)


def test_mask_only_press_saves_no_memory(tiny, tiny_prompt, run_method):
    r = run_method("adakv+snapkv@0.5")
    full = tiny_prompt.context_tokens * bytes_per_token(tiny.model)
    assert r.kv_cache_bytes == full  # tensors keep their length
    assert r.kv_memory_saved is False
    assert abs(r.kv_tokens_kept - tiny_prompt.context_tokens / 2) <= 1  # ... though half the entries are hidden


def test_pyramidkv_keeps_uneven_lengths_per_layer(run_method, tiny_prompt):
    r = run_method("pyramidkv@0.5")
    assert r.kv_tokens_kept_min < r.kv_tokens_kept_max
    assert r.kv_memory_saved is True
    assert r.kv_tokens_kept == pytest.approx(tiny_prompt.context_tokens / 2, abs=2)


def test_decoding_press_holds_the_cache_at_its_target_size(run_method):
    r = run_method("decoding+knorm[compression_interval=4,target_size=64]", max_new_tokens=17)
    assert r.kv_tokens_end == 64
    assert r.kv_cache_bytes_end < r.kv_cache_bytes


def test_phase_peaks_see_memory_held_inside_each_phase(run_method, tiny):
    """256 MiB touched inside every forward (prefill and each decode step) must raise both phase peaks by at least half as much;
    and a peak is never below the memory resident before the run (read from /proc/self/statm)."""
    import gc
    import os

    from kvcompress.memory import _return_free_heap

    gc.collect()  # what earlier tests left for the collector (measure collects before each generation) and the
    _return_free_heap()  # freed heap pages (a phase's reset hands them back) are not resident memory of this run
    rss_before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    plain = run_method("vanilla")
    assert plain.memory_source == "process_peak_rss"
    assert plain.peak_mem_prefill_bytes >= rss_before * 0.95 and plain.peak_mem_decode_bytes >= rss_before * 0.95
    held, mib = [], 2**20
    hooks = [tiny.model.model.register_forward_pre_hook(lambda *_: held.append(torch.ones(64 * mib))),  # 256 MiB
             tiny.model.model.register_forward_hook(lambda *_: held.clear())]
    try:
        heavy = run_method("vanilla")
    finally:
        for hook in hooks:
            hook.remove()
    # half of what is held: the process's resident set moves by some tens of MiB between runs (allocator reuse),
    # while a peak that missed the held tensors would move by ~0
    assert heavy.peak_mem_prefill_bytes - plain.peak_mem_prefill_bytes > 128 * mib
    assert heavy.peak_mem_decode_bytes - plain.peak_mem_decode_bytes > 128 * mib


def test_a_pool_buffer_that_cannot_be_carved_returns_the_cached_blocks_once_and_retries(monkeypatch):
    """memory.empty_in_pool (the fast decoders' KV buffers; the CUDA path itself needs a GPU): an out-of-memory error
    in a pool empties the allocator's cache once and retries; a second one is raised; without a pool (CPU) the first
    one is raised as it is."""
    import contextlib

    from kvcompress import memory

    calls = []
    monkeypatch.setattr(memory, "in_pool", lambda pool: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    real_empty = torch.empty

    def failing(times):
        def empty(*args, **kwargs):
            calls.append("alloc")
            if calls.count("alloc") <= times:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 800.00 MiB")
            return real_empty(*args, **kwargs)
        return empty

    monkeypatch.setattr(torch, "empty", failing(1))
    out = memory.empty_in_pool(object(), (2, 3), torch.float32, torch.device("cpu"))
    assert out.shape == (2, 3) and calls == ["alloc", "empty_cache", "alloc"]
    calls.clear()
    monkeypatch.setattr(torch, "empty", failing(2))
    with pytest.raises(torch.OutOfMemoryError):
        memory.empty_in_pool(object(), (2, 3), torch.float32, torch.device("cpu"))
    assert calls == ["alloc", "empty_cache", "alloc"]
    calls.clear()
    monkeypatch.setattr(torch, "empty", failing(1))
    with pytest.raises(torch.OutOfMemoryError):
        memory.empty_in_pool(None, (2, 3), torch.float32, torch.device("cpu"))
    assert calls == ["alloc"]


def test_masks_are_read_and_cleared_on_the_attention_modules_without_walking_the_model_each_time(tiny, monkeypatch):
    """A quality chunk reads and clears kvpress's masks for each of its ~300 caches: the modules that can hold them
    (those with a layer index) are listed once per model, and a mask put on any of them is found and cleared."""
    from kvcompress.memory import clear_masks, masked_indices

    model = tiny.model
    masked_indices(model)  # lists the modules
    walks = []
    real = type(model).modules
    monkeypatch.setattr(type(model), "modules", lambda self: walks.append(1) or real(self))
    for layer in model.model.layers:
        index = torch.tensor([0])
        layer.self_attn.masked_key_indices = (index, index, index + layer.self_attn.layer_idx)
    for _ in range(5):
        found = masked_indices(model)
    assert sorted(found) == list(range(len(model.model.layers))) and found[1][2].item() == 1
    clear_masks(model)
    assert masked_indices(model) == {} and not walks
