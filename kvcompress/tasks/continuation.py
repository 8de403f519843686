"""Teacher-forced continuations for the fidelity measurement (engine/fidelity.py): plain text from a haystack source,
a context of `context` tokens and the `continuation` tokens that follow it in the text. No chat template and no
question: the model continues the text and its next-token distributions are compared with vanilla's.

Prompt i starts `stride` x i tokens into the source's token stream (the Paul Graham essays, or the noise filler),
so the prompts are different passages of one deterministic text.
"""

from __future__ import annotations

from kvcompress.prompt import token_ids
from kvcompress.tasks.haystack import haystack_text

STRIDE = 4096  # tokens between two prompts' starts


def continuation_prompts(tokenizer, source: str, context: int, continuation: int, count: int):
    """[(context ids (1, context), continuation ids (1, continuation))] x count."""
    need = STRIDE * (count - 1) + context + continuation
    text = haystack_text(source, 6 * need)  # > 4 characters a token in English prose: enough, cut below
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:need]
    out = []
    for i in range(count):
        start = STRIDE * i
        out.append((token_ids(ids[start:start + context]), token_ids(ids[start + context:start + context + continuation])))
    return out
