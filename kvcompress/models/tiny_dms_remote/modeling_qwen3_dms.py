"""Model of kvcompress's tiny DMS fixture (written for kvcompress; this is not NVIDIA's code).

A Qwen3 whose attention keeps its K/V in a paged DMS cache (dms_cache.py) and evicts by a fixed rule, so tests can
predict every live count. It mirrors what the benchmark relies on in DMS-8x's remote code: the class names of
transformers' Qwen3, the weight names of Qwen3 (a vanilla Qwen3 state dict loads as is), a forward that replaces
any cache it is given by its own DMSCache, one prefill per cache, and decoding one token at a time.
With nothing evicted (a window longer than the sequence, or keep_every 1) it computes what vanilla Qwen3 computes.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding, apply_rotary_pos_emb

from .configuration_qwen3_dms import Qwen3Config
from .dms_cache import DMSCache


class Qwen3Attention(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.window = config.dms_window_size
        if len(config.tiny_dms_keep_every) != self.num_kv_heads:
            raise ValueError(f"tiny_dms_keep_every needs one entry per kv head ({self.num_kv_heads})")
        self.register_buffer("keep_every", torch.tensor(config.tiny_dms_keep_every), persistent=False)
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def marked_for_eviction(self, token_index: torch.Tensor) -> torch.Tensor:
        """(seq,) token indices -> (kv heads, seq) bool: head h keeps one token in keep_every[h]."""
        return token_index[None, :] % self.keep_every[:, None] != 0

    def forward(self, hidden_states, position_embeddings, cache: DMSCache):
        batch, seq, _ = hidden_states.shape
        shape = (batch, seq, -1, self.head_dim)
        q = self.q_norm(self.q_proj(hidden_states).view(shape)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(shape)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        first = cache.get_seq_length(self.layer_idx)
        token_index = torch.arange(first, first + seq, device=hidden_states.device)
        marked = self.marked_for_eviction(token_index).expand(batch, -1, -1)
        group = self.num_heads // self.num_kv_heads
        if seq > 1:
            # prefill: attention under the DMS mask (causal; a marked key is seen only while in the window), then
            # the cache keeps the survivors
            visible = token_index[None, :] <= token_index[:, None]
            in_window = token_index[None, :] > token_index[:, None] - self.window
            mask = visible[None] & (in_window[None] | ~marked[0][:, None, :])  # (kv heads, seq, seq)
            out = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                                 attn_mask=mask.repeat_interleave(group, 0)[None])
            cache.update(k, v, self.layer_idx, {"eviction_info": marked})
        else:
            # decode: write the new entry (maybe into an evicted slot), then attend to the live entries of each head
            cache.update(k, v, self.layer_idx, {"eviction_info": marked})
            keys, values, valid = cache.layers[self.layer_idx].live_entries()  # (batch x kv heads, L, head_dim)
            q_pages = q.reshape(batch * self.num_kv_heads, group, 1, self.head_dim)
            out = F.scaled_dot_product_attention(q_pages, keys[:, None], values[:, None],
                                                 attn_mask=valid[:, None, None, :])
            out = out.reshape(batch, self.num_heads, 1, self.head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.self_attn = Qwen3Attention(config, layer_idx)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, cache):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), position_embeddings, cache)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Qwen3PreTrainedModel(PreTrainedModel):
    config_class = Qwen3Config
    base_model_prefix = "model"
    _no_split_modules = ["Qwen3DecoderLayer"]
    _supports_sdpa = True


class Qwen3Model(Qwen3PreTrainedModel):
    def __init__(self, config: Qwen3Config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, cache_position=None, **kwargs):
        if not isinstance(past_key_values, DMSCache):  # as DMS-8x: any other cache is replaced by its own
            c = self.config
            past_key_values = DMSCache(c.dms_window_size, c.dms_block_size, c.dms_initial_tokens,
                                       c.max_position_embeddings)
        hidden_states = self.embed_tokens(input_ids)
        first = past_key_values.get_seq_length()
        cache_position = torch.arange(first, first + input_ids.shape[1], device=input_ids.device)
        if position_ids is None:
            position_ids = cache_position[None]
        # DMS-8x builds transformers' causal mask with these arguments and applies only what it gets: the benchmark
        # calls it unpadded at batch 1, where transformers returns no mask. The fixture checks that this holds.
        mask = create_causal_mask(config=self.config, input_embeds=hidden_states, attention_mask=attention_mask,
                                  cache_position=cache_position, past_key_values=past_key_values,
                                  position_ids=position_ids)
        if mask is not None:
            raise NotImplementedError("the tiny DMS fixture runs unpadded prompts at batch 1 "
                                      "(transformers built an attention mask)")
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, past_key_values)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), past_key_values=past_key_values)


class Qwen3ForCausalLM(Qwen3PreTrainedModel, GenerationMixin):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: Qwen3Config):
        super().__init__(config)
        self.model = Qwen3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, cache_position=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values)
        logits = self.lm_head(out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state)
        return CausalLMOutputWithPast(logits=logits, past_key_values=out.past_key_values)
