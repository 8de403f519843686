"""Presses that rerotate keys: the question starts where kvpress's own pipeline starts it (the compressed length)."""

import pytest
import torch
from kvpress import KeyRerotationPress, KVPressTextGenerationPipeline, StreamingLLMPress

from kvcompress.engine import GenerationSettings
from kvcompress.engine.generate import HFDecoder, generate_once
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.methods import parse_method
from kvcompress.tasks import niah


@pytest.fixture(scope="module")
def prompt(tiny):
    return niah.build_prompt(tiny.tokenizer, 600, 0.9, niah.make_needle("single", 0)).prompt


def kvpress_answer(tiny, prompt, press, n_new: int) -> list[int]:
    """kvpress's pipeline, fed the same token ids: its own prefill, compression, question positions and decoding."""
    pipe = KVPressTextGenerationPipeline(model=tiny.model, tokenizer=tiny.tokenizer)
    seen = []
    original = tiny.tokenizer.decode
    tiny.tokenizer.decode = lambda ids, **kw: seen.append([int(i) for i in ids]) or original(ids, **kw)
    try:
        pipe._forward({"context_ids": prompt.context_ids, "questions_ids": [prompt.question_ids]},
                      max_new_tokens=n_new, press=press)
    finally:
        tiny.tokenizer.decode = original
    return seen[-1]


@pytest.mark.parametrize("method, press", [
    ("key_rerotation+streaming_llm@0.5", lambda: KeyRerotationPress(StreamingLLMPress(compression_ratio=0.5))),
    ("streaming_llm@0.5", lambda: StreamingLLMPress(compression_ratio=0.5)),
])
def test_greedy_answer_equals_kvpress_pipeline(tiny, prompt, method, press):
    n_new = 16
    settings = GenerationSettings(n_new, SamplingConfig(greedy=True), fixed_length=True)
    ours = generate_once(tiny, parse_method(method), prompt, settings, HFDecoder()).token_ids
    theirs = kvpress_answer(tiny, prompt, press(), n_new)
    assert ours[:len(theirs)] == theirs
