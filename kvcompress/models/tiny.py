"""A tiny Qwen3 and a byte-level tokenizer, both built in code: the offline model every test and preset can run.

The weights are random, so its answers are noise; it exists to exercise every code path (presses, engines,
accounting, reports) on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config

MAX_POSITIONS = 8192
# DMS's config fields with a window small enough that prompts of a few hundred tokens evict in prefill and decode:
# the tiny Qwen3 runs native dms-8x (methods/dms.py) through the same path as Qwen3-8B.
DMS_FIELDS = {"dms_window_size": 16, "dms_alpha_scale": 100.0, "dms_initial_alpha_offset": 5.0, "dms_cr": 8}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# ChatML, as Qwen3 renders a plain user turn; with enable_thinking=False an empty think block is pre-filled.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (256 byte tokens + ChatML specials): every string encodes, "\\n" is one token."""
    byte_to_char = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: i for i, char in enumerate(sorted(byte_to_char))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
        model_max_length=1 << 20,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(vocab_size: int, eos_token_id: int, pad_token_id: int, num_layers: int = 2,
                dms_fields: dict | None = DMS_FIELDS) -> Qwen3Config:
    return Qwen3Config(
        **(dms_fields or {}),
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        # 64, not 16: kvpress's mask-only presses need a key that every query of the question (Q x group vectors)
        # scores negatively, and such a half-space rarely exists when the queries outnumber 2 x head_dim.
        head_dim=64,
        num_hidden_layers=num_layers,
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        # Wide random weights give peaked, input-sensitive logits, so engine-equivalence tests compare
        # meaningful greedy tokens (at the default 0.02 every position predicts the same byte).
        initializer_range=1.0,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    """kvpress's KVzip reloads the tokenizer from `config.name_or_path`, so the tiny one must exist on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder
