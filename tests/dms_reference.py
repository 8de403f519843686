"""An independent reference for native DMS, written for the tests: the DMS inference rule applied by brute force.

Nothing here imports kvcompress's DMS code. A Qwen3 forward is written out from the model's weights (fp32, the
whole sequence recomputed at every step, full L x L masks built with plain loops), and the rule is restated from
the reference implementations (westers/kvcompress dms_local, NVIDIA Model-Optimizer experimental/dms):
- decision at position p: last channel of the first query head of each GQA group, after q_norm, before RoPE,
  * alpha_scale - alpha_offset; evict when > 0 (or > a given per-(layer, head) threshold);
- that channel is zeroed before and after RoPE;
- the decision at position p marks token p - 1;
- query q sees key k iff k <= q and not (k is marked and q - k > window).
Used by tests/test_dms_native.py (hf engine) and tests/test_fast_dms.py (fast engine).
"""

from __future__ import annotations

import torch


def prompt_ids(prompt) -> torch.Tensor:
    """Context and question as the one sequence DMS prefills."""
    return torch.cat([prompt.context_ids, prompt.question_ids], 1)


def batch_prompts(tokenizer, lengths=(120, 116, 123)):
    """DMS-sized prompts (the tiny window is 16) of different lengths, one per needle seed 0, 1, 2: the rows of a
    batch sit at different positions. Each is the end of a 400-token needle prompt, its last 20 tokens the question."""
    from kvcompress.engine.generate import Prompt
    from kvcompress.tasks.cell import Cell

    built = Cell(target_tokens=400, needle_seed=0).build_batch(tokenizer, len(lengths))[0]
    out = []
    for prompt, length in zip(built, lengths):
        ids = prompt_ids(prompt)[:, -length:]
        out.append(Prompt(ids[:, :-20], ids[:, -20:]))
    return out


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def tie_break_reference(positions: torch.Tensor) -> torch.Tensor:
    """Restated from the calibrated-threshold definition (fixed per-position offset below 1e-3)."""
    return (torch.frac(positions.to(torch.float64) * 0.6180339887498949) * 1e-3).to(torch.float32)


class BruteForceDMS:
    """`forward(ids)` -> (logits of the last position, live[layer][head] = positions the last query sees)."""

    def __init__(self, model, window: int, alpha_scale: float, alpha_offset: float, thresholds=None):
        self.model = model
        self.config = model.config
        self.window, self.alpha_scale, self.alpha_offset = window, alpha_scale, alpha_offset
        self.thresholds = thresholds  # None (logit > 0) or (layers, kv heads)

    def _p(self, t):
        return t.detach().to(torch.float32)

    def mask(self, marked: list[bool]) -> torch.Tensor:
        """(L, L) bool, built key by key (a plain loop; each column is one key's visibility to every query)."""
        n = len(marked)
        queries = torch.arange(n)
        m = torch.zeros(n, n, dtype=torch.bool)
        for k in range(n):
            age = queries - k
            m[:, k] = (age >= 0) & ~((age > self.window) & marked[k])
        return m

    @torch.no_grad()
    def forward(self, ids: list[int]):
        c, model = self.config, self.model
        n = len(ids)
        hq, hkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        group = hq // hkv
        x = self._p(model.model.embed_tokens.weight)[torch.tensor(ids)]  # (L, hidden)
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        angles = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq[None]
        emb = torch.cat([angles, angles], dim=-1)
        cos, sin = emb.cos().float(), emb.sin().float()
        live = []
        for li, layer in enumerate(model.model.layers):
            a = layer.self_attn
            h = _rms(x, self._p(layer.input_layernorm.weight), c.rms_norm_eps)
            q = (h @ self._p(a.q_proj.weight).T).view(n, hq, d)
            k = (h @ self._p(a.k_proj.weight).T).view(n, hkv, d)
            v = (h @ self._p(a.v_proj.weight).T).view(n, hkv, d)
            q = _rms(q, self._p(a.q_norm.weight), c.rms_norm_eps)
            k = _rms(k, self._p(a.k_norm.weight), c.rms_norm_eps)
            out = torch.zeros(n, hq, d)
            layer_live = []
            for g in range(hkv):
                logits = q[:, g * group, d - 1] * self.alpha_scale - self.alpha_offset  # (L,)
                if self.thresholds is None:
                    decision = [bool(logits[p] > 0) for p in range(n)]
                else:
                    shifted = logits + tie_break_reference(torch.arange(n))
                    decision = [bool(shifted[p] > self.thresholds[li][g]) for p in range(n)]
                marked = [decision[t + 1] if t + 1 < n else False for t in range(n)]
                m = self.mask(marked)
                layer_live.append([k_ for k_ in range(n) if m[n - 1, k_]])
                kk = _rotate(k[:, g], cos, sin)
                for j in range(group):
                    head = g * group + j
                    qh = q[:, head].clone()
                    if j == 0:  # the decision carrier: its channel is zeroed before and after RoPE
                        qh[:, d - 1] = 0
                    qh = _rotate(qh, cos, sin)
                    if j == 0:
                        qh[:, d - 1] = 0
                    scores = (qh @ kk.T) * a.scaling
                    scores = scores.masked_fill(~m, float("-inf"))
                    out[:, head] = torch.softmax(scores, dim=-1) @ v[:, g]
            live.append(layer_live)
            x = x + out.reshape(n, hq * d) @ self._p(a.o_proj.weight).T
            h = _rms(x, self._p(layer.post_attention_layernorm.weight), c.rms_norm_eps)
            mlp = layer.mlp
            gate = h @ self._p(mlp.gate_proj.weight).T
            x = x + (torch.nn.functional.silu(gate) * (h @ self._p(mlp.up_proj.weight).T)) @ self._p(
                mlp.down_proj.weight).T
        x = _rms(x, self._p(model.model.norm.weight), c.rms_norm_eps)
        logits = x[-1] @ self._p(model.lm_head.weight).T
        return logits, live

    def greedy(self, ids: list[int], steps: int):
        """Greedy tokens (the first from the prompt) and the live positions after the prompt and after each token fed."""
        ids = list(ids)
        tokens, lives = [], []
        for _ in range(steps):
            logits, live = self.forward(ids)
            lives.append(live)
            token = int(torch.argmax(logits))
            tokens.append(token)
            ids.append(token)
        return tokens, lives
