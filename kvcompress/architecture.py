"""A model's architecture in numbers, from its transformers config: what the run header stores and the checks read."""

from __future__ import annotations


def architecture_of(config) -> dict:
    """What the physics checks need from a transformers config; the runner stores it in the run header."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers, hidden, inter = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads, config.num_key_value_heads
    per_layer = hidden * (q * head_dim) * 2 + hidden * (kv * head_dim) * 2 + 3 * hidden * inter
    return {"layers": layers, "hidden": hidden, "heads": q, "kv_heads": kv, "head_dim": head_dim,
            "intermediate": inter, "vocab": config.vocab_size,
            "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
            "layer_params": layers * per_layer}
