"""RULER's own tasks on a real trained model, offline, on CPU: SmolLM2-135M-Instruct at 1K tokens (prompt + RULER's
128 generated tokens), greedy, one generation a sample (`generate_once`: quality only).

What SmolLM2-135M does on RULER at 1K (measured with tests' seeds, noise and essay haystacks): niah_single_1 4/4 and
niah_single_2 4/4 (one 7-digit number of 9e6: a context-blind guess finds it with p ~1e-7); niah_multikey_2 0/4 (the
needle haystack: every line looks like the answer). StreamingLLM at 0.875 keeps the first tokens and the last eighth:
niah_single_2 0/4 (the needle sits at one of RULER's random depths, seldom in the last eighth).
Asserted here, 5 samples (seeds 0-4) of niah_single_2: vanilla finds at least 4 (chance ~1e-7 each), and
streaming_llm@0.875 is below vanilla with the paired bootstrap's 95 % interval of the difference excluding 0 (the
exact one-sided sign test of 5 losses of 5 pairs: p = 1/32).
"""

import math

from kvcompress import stats
from kvcompress.engine.generate import GenerationSettings, HFDecoder, generate_once
from kvcompress.engine.sampling import SamplingConfig
from kvcompress.methods import parse_method
from kvcompress.tasks import contract, families

CONTEXT = 1024
SEEDS = range(5)


def _score(lm, name, seed, method):
    task = families.make(name, seed, 1, CONTEXT)
    built = contract.build_prompt(lm.tokenizer, CONTEXT, None, task)
    settings = GenerationSettings(10, SamplingConfig(greedy=True), fixed_length=False)  # a 7-digit number and a stop
    generation = generate_once(lm, parse_method(method), built.prompt, settings, HFDecoder())
    return contract.score(lm.tokenizer.decode(generation.token_ids, skip_special_tokens=True), task.questions[0])[1]


def test_niah_single_2_vanilla_finds_the_number_and_streaming_llm_at_0875_measurably_loses_it(smollm2):
    vanilla = [_score(smollm2, "niah_single_2", s, "vanilla") for s in SEEDS]
    streaming = [_score(smollm2, "niah_single_2", s, "streaming_llm@0.875") for s in SEEDS]
    assert sum(vanilla) >= 4, vanilla
    difference = stats.paired_difference(streaming, vanilla)
    assert difference.estimate < 0 and difference.excludes_zero, (vanilla, streaming, difference)
    losses = sum(s < v for s, v in zip(streaming, vanilla))
    gains = sum(s > v for s, v in zip(streaming, vanilla))
    n = losses + gains
    sign_p = sum(math.comb(n, k) for k in range(losses, n + 1)) / 2 ** n  # exact one-sided sign test
    assert sign_p < 0.05, (vanilla, streaming, sign_p)
