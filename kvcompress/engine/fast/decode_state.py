"""What the fast engine's two decode states share: fast.py's `_DecodeState` (per-layer padded buffers) and
fast_dms.py's `_DMSDecodeState` (DMS's compact cache). Both hold the static inputs and scratch tensors of one decode
step, run the same step around their own store and attention kernels, and drive it the same way: eagerly on CPU, on
CUDA one eager step, then a captured graph replayed. Below both modules (fast.py imports fast_dms.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvcompress.engine.decoder import answer_starts, ended_rows
from kvcompress.engine.fast import kernels
from kvcompress.engine.sampling import sample
from kvcompress.engine.timing import capture_graph


class DecodeState:
    """A subclass implements `_step_context()` (once per step, after RoPE) and `_attend(i, w, qkv, cos, sin,
    context)` (layer i's store into its cache and attention into `attn_out`); `_advance()` moves its own counters
    after each token."""

    def __init__(self, decoder, signature, sampling, batch: int, n_new: int, dim: int, dtype, device,
                 forced: bool = False):
        """Allocated after the subclass's own tensors (its __init__ calls this last): n_new rows of uniforms and
        outputs, each (step, sequence); `forced`: a graph that feeds given tokens where they are set (quality runs:
        each row's question, engine/quality.py), a separate graph from the timed one."""
        config = decoder.model.config
        self.decoder, self.signature, self.sampling = decoder, signature, sampling
        self.token = torch.zeros(batch, dtype=torch.long, device=device)
        self.position = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        self.uniforms = torch.zeros(n_new, batch, dtype=torch.float32, device=device)  # (step, sequence)
        self.out = torch.zeros(n_new, batch, dtype=torch.long, device=device)
        self.forced = torch.full((n_new, batch), -1, dtype=torch.long, device=device) if forced else None
        self.answer_from = [0] * batch  # per row: the first step whose token is its own (an end-of-sequence counts)
        self.residual = torch.zeros(batch, config.hidden_size, device=device, dtype=dtype)
        self.normed = torch.zeros_like(self.residual)
        self.q = torch.zeros(batch, config.num_attention_heads, dim, device=device, dtype=dtype)
        self.attn_out = torch.zeros_like(self.q)
        self.mlp_act = torch.zeros(batch, config.intermediate_size, device=device, dtype=dtype)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.cuda = device.type == "cuda"

    def load_inputs(self, token, positions: list[int], uniforms, out_tokens, forced=None) -> None:
        """token (batch,), each sequence's next position, uniforms, out_tokens and forced (steps, batch; -1 where
        sampled): steps may be below the buffers' n_new rows."""
        self.token.copy_(token.view(-1))
        self.position.copy_(torch.tensor(positions, dtype=torch.long).view(-1, 1))
        self.step_index.fill_(1)
        self.uniforms[:uniforms.shape[0]].copy_(uniforms)
        self.out[:out_tokens.shape[0]].copy_(out_tokens)
        if self.forced is not None:
            self.forced.fill_(-1)
            self.forced[:forced.shape[0]].copy_(forced)
            self.answer_from = answer_starts(forced, self.token.shape[0])

    def free(self) -> None:
        self.graph = self.logits = None

    def run(self, eos: set[int], n: int, mark=None) -> int:
        """Decode steps 1..n-1 (n may be below the buffers' reserve: a capacity search holds a whole generation's
        memory and decodes a few steps of it). `mark("fed")`, if given, after the forced steps run at once (none
        without `forced`); `mark("steady", steps)` before the steps after the first single one (which runs eagerly
        and captures the graph on CUDA)."""
        done: set[int] = set()  # rows that emitted an end-of-sequence token (the first token included)
        if self._finished(eos, done, 0):
            return 1
        first = 1 + self._feed_forced(n)  # quality runs: the steps forced in every row, in one forward
        if first > 1 and mark is not None:
            mark("fed")
        if not self.cuda:
            for step in range(first, n):
                if step == first + 1 and mark is not None:
                    mark("steady", n - step)
                self.step()
                if self._finished(eos, done, step):
                    return step + 1
            return n
        if self.graph is None:
            self.step()  # eager once: compiles the Triton kernels and initialises cuBLAS before capture
            if self._finished(eos, done, first):
                return first + 1
            self._capture()
            first += 1
        if mark is not None and n > first:
            mark("steady", n - first)
        for step in range(first, n):
            self.graph.replay()
            if self._finished(eos, done, step):
                return step + 1
        return n

    def _feed_forced(self, n: int) -> int:
        """Steps 1..e run at once where every row's token is forced (fast/forced_prefill.py); e, or 0 where this
        state runs every step one at a time."""
        return 0

    def _finished(self, eos: set[int], done: set[int], step: int) -> bool:
        """Every row has emitted an end-of-sequence token (`done` collects the rows; `step`: the token's index, a
        row's forced tokens never count). Quality runs only: timing runs pass no `eos` and never synchronise here; a
        row that finished early keeps decoding until all have, and its caller cuts it at its first end-of-sequence
        token."""
        if not eos:
            return False
        done.update(ended_rows(self.token.tolist(), eos, step, self.answer_from))
        return len(done) == self.token.shape[0]

    def _capture(self) -> None:
        # on the measurement stream (timing.py); capture records without executing, so the static inputs stay put
        self.graph = capture_graph(self.step, self.decoder.stream)

    def step(self) -> None:
        """One token: embed, every layer, LM head, sample; all inputs and outputs are static tensors."""
        model = self.decoder.model
        h = self.residual
        h.copy_(model.model.embed_tokens(self.token))
        cos, sin = model.model.rotary_emb(h[:, None, :], self.position)
        cos, sin = cos[:, 0], sin[:, 0]
        context = self._step_context()
        delta = None
        for i, w in enumerate(self.decoder.layers):
            x = kernels.add_rmsnorm(h, delta, w.input_norm.weight, w.input_norm.variance_epsilon, self.normed)
            qkv = F.linear(x, w.qkv_weight, w.qkv_bias)
            self._attend(i, w, qkv, cos, sin, context)
            attn = w.o_proj(self.attn_out.view(h.shape[0], -1))
            x = kernels.add_rmsnorm(h, attn, w.post_norm.weight, w.post_norm.variance_epsilon, self.normed)
            kernels.silu_mul(F.linear(x, w.gate_up_weight), self.mlp_act)
            delta = w.down_proj(self.mlp_act)
        norm = model.model.norm
        x = kernels.add_rmsnorm(h, delta, norm.weight, norm.variance_epsilon, self.normed)
        logits = model.lm_head(x)
        self.logits = logits  # kept for engine checks (tools/h200_decode_check.py); inside a graph it is updated in place
        token = sample(logits, self.uniforms.index_select(0, self.step_index), self.sampling).view(-1)
        if self.forced is not None:  # a row's given token where one is set, its sampled one after
            given = self.forced.index_select(0, self.step_index).view(-1)
            token = torch.where(given >= 0, given, token)
        self.out.index_copy_(0, self.step_index, token.view(1, -1))
        self.token.copy_(token)
        self._advance()
        self.position.add_(1)
        self.step_index.add_(1)

    def _step_context(self):
        return None

    def _attend(self, i: int, w, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, context) -> None:
        raise NotImplementedError

    def _advance(self) -> None:
        pass


def qk_norms(w) -> tuple:
    """A layer's q/k head norms as the store kernels take them: q weight, k weight (None without), epsilon."""
    return (w.q_norm.weight if w.q_norm is not None else None, w.k_norm.weight if w.k_norm is not None else None,
            w.q_norm.variance_epsilon if w.q_norm is not None else 0.0)
