"""Presses that rerotate keys: the question starts where kvpress's own pipeline starts it (the compressed length)."""

import contextlib

import pytest
from kvpress import KeyRerotationPress, KVPressTextGenerationPipeline, StreamingLLMPress

from kvcompress.engine import GenerationSettings
from kvcompress.engine.generate import HFDecoder, Prompt, generate_once, generate_questions
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.methods import parse_method
from kvcompress.tasks import contract, families, niah


@pytest.fixture(scope="module")
def prompt(tiny):
    return niah.build_prompt(tiny.tokenizer, 600, 0.9, niah.make_needle("single", 0)).prompt


def kvpress_answers(tiny, context_ids, questions, press, n_new: int) -> list[list[int]]:
    """kvpress's pipeline, fed the same token ids: its own prefill, compression, question positions and decoding;
    the token ids of each question's answer (several questions share one compression there too)."""
    pipe = KVPressTextGenerationPipeline(model=tiny.model, tokenizer=tiny.tokenizer)
    seen = []
    original = tiny.tokenizer.decode
    tiny.tokenizer.decode = lambda ids, **kw: seen.append([int(i) for i in ids]) or original(ids, **kw)
    try:
        pipe._forward({"context_ids": context_ids, "questions_ids": list(questions)}, max_new_tokens=n_new,
                      press=press)
    finally:
        tiny.tokenizer.decode = original
    return seen[-len(questions):]


def kvpress_answer(tiny, prompt, press, n_new: int) -> list[int]:
    return kvpress_answers(tiny, prompt.context_ids, [prompt.question_ids], press, n_new)[0]


@pytest.mark.parametrize("method, press", [
    ("key_rerotation+streaming_llm@0.5", lambda: KeyRerotationPress(StreamingLLMPress(compression_ratio=0.5))),
    ("streaming_llm@0.5", lambda: StreamingLLMPress(compression_ratio=0.5)),
])
def test_greedy_answer_equals_kvpress_pipeline(tiny, prompt, method, press):
    n_new = 16
    settings = GenerationSettings(n_new, SamplingConfig(greedy=True), fixed_length=True)
    ours = generate_once(tiny, parse_method(method), prompt, settings, HFDecoder()).token_ids
    theirs = kvpress_answer(tiny, prompt, press(), n_new)
    assert len(ours) == len(theirs) == n_new  # a prefix check would pass an answer cut short on either side
    assert ours == theirs


@contextlib.contextmanager
def fed_positions(model):
    """The positions of every forward through the LM head, one list per question: the question's own positions,
    then those of each decoded token (the prefill runs without the head and is not seen)."""
    questions = []

    def hook(module, args, kwargs):
        ids, positions = kwargs["input_ids"], kwargs["position_ids"]
        if ids.shape[1] > 1:
            questions.append([])
        questions[-1].extend(positions[0].tolist())

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield questions
    finally:
        handle.remove()


@pytest.mark.parametrize("method, press", [
    ("key_rerotation+streaming_llm@0.5", lambda: KeyRerotationPress(StreamingLLMPress(compression_ratio=0.5))),
    ("streaming_llm@0.5", lambda: StreamingLLMPress(compression_ratio=0.5)),
])
def test_each_of_several_questions_is_fed_where_kvpress_and_the_single_question_path_feed_it(tiny, method, press):
    """--questions K: after a rerotating press every question follows the compressed cache, as in kvpress's
    multi-question pipeline and in generate_once (it was fed after the uncompressed context)."""
    built = contract.build_prompt(tiny.tokenizer, 600, 0.5, families.make("vt", 2, 3))
    context, questions, n_new = built.prompt.context_ids, built.question_ids, 4
    settings = GenerationSettings(n_new, SamplingConfig(greedy=True), fixed_length=True)
    with fed_positions(tiny.model) as ours:
        shared = generate_questions(tiny, parse_method(method), context, questions, settings)
    with fed_positions(tiny.model) as theirs:
        answers = kvpress_answers(tiny, context, questions, press(), n_new)
    alone = []
    for question in questions:
        with fed_positions(tiny.model) as fed:
            generate_once(tiny, parse_method(method), Prompt(context, question), settings, HFDecoder())
        alone += fed
    assert len(ours) == len(theirs) == len(alone) == len(questions)
    for mine, reference, single, answer, kv_answer in zip(ours, theirs, alone, shared.answers, answers):
        assert mine == single
        assert mine[:len(reference)] == reference  # kvpress stops at end-of-sequence
        assert answer.token_ids[:len(kv_answer)] == kv_answer
