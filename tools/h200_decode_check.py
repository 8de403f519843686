"""GPU check of the fast decode engine on the Qwen3-8B architecture (random bf16 weights). One call does:

1. calibration: device-to-device copy bandwidth (the roofline's denominator);
2. kernels vs their torch references at Qwen3-8B shapes, bf16;
3. engines vs each other: teacher-forced logits of the fast step against transformers' forward, 32 steps;
4. per-step breakdown at each context: the full captured step, and graphs of its parts (weight GEMVs, attention,
   the small fused ops, sampling), each against its byte count.

    python tools/h200_decode_check.py --contexts 8192,32768
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvcompress import models  # noqa: E402
from kvcompress.engine.fast import kernels  # noqa: E402
from kvcompress.engine.fast.decoder import FastDecoder, _DecodeState  # noqa: E402
from kvcompress.engine.sampling import SamplingConfig, sample  # noqa: E402
from kvcompress.engine.timing import replayed_seconds  # noqa: E402
from transformers import DynamicCache  # noqa: E402

DEV = torch.device("cuda")


def copy_bandwidth() -> float:
    src = torch.empty(2**30, dtype=torch.float32, device=DEV)  # 4 GiB
    dst = torch.empty_like(src)
    for _ in range(200):  # about a second of copies first: an idle GPU starts at low clocks
        dst.copy_(src)
    t = replayed_seconds(lambda: dst.copy_(src), replays=20)
    return 2 * src.nbytes / t  # bytes read + written


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check_kernels(cfg) -> None:
    torch.manual_seed(1)
    H, Hq, Hkv, D, I = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size
    bf = torch.bfloat16
    r, d, w = torch.randn(1, H, device=DEV, dtype=bf), torch.randn(1, H, device=DEV, dtype=bf), torch.randn(H, device=DEV, dtype=bf)
    a = kernels.add_rmsnorm(r.clone(), d, w, 1e-6, torch.empty_like(r))
    ref = kernels._rmsnorm_reference((r.float() + d.float()).to(bf).float(), w.float(), 1e-6)
    print(f"kernel add_rmsnorm          rel err vs fp32 reference {rel(a, ref):.2e}")
    S, n = 8192, 8000
    keys, values = torch.randn(1, Hkv, S, D, device=DEV, dtype=bf), torch.randn(1, Hkv, S, D, device=DEV, dtype=bf)
    q = torch.randn(1, Hq, D, device=DEV, dtype=bf)
    splits = kernels.attention_splits(Hkv, S, DEV)
    out = kernels.decode_attention(q, keys, values, torch.tensor([n], device=DEV), None, D ** -0.5,
                                   torch.empty_like(q), splits, kernels.attention_workspace(1, Hq, D, splits, DEV))
    ref = F.scaled_dot_product_attention(q.float().view(1, Hkv, Hq // Hkv, D), keys[:, :, :n].float(),
                                         values[:, :, :n].float(), scale=D ** -0.5).reshape(1, Hq, D)
    print(f"kernel decode_attention     rel err vs fp32 reference {rel(out, ref):.2e} (splits {splits})")
    gu = torch.randn(1, 2 * I, device=DEV, dtype=bf)
    out = kernels.silu_mul(gu, torch.empty(1, I, device=DEV, dtype=bf))
    ref = F.silu(gu[:, :I].float()) * gu[:, I:].float()
    print(f"kernel silu_mul             rel err vs fp32 reference {rel(out, ref):.2e}")


@torch.inference_mode()
def check_logits(lm, context: int = 4096, steps: int = 32) -> None:
    """Teacher-forced logits, 32 steps: the fast engine (bf16) and transformers (bf16), each against transformers
    in fp32 on the same weights. Agreement 'within bf16 tolerance' means the fast engine is no further from the
    fp32 answer than transformers' own bf16 forward is."""
    import copy

    model, cfg = lm.model, lm.model.config
    reference = copy.deepcopy(model).float()
    torch.manual_seed(2)
    ids = torch.randint(0, cfg.vocab_size, (1, context), device=DEV)
    caches = {"bf16": DynamicCache(), "fp32": DynamicCache()}
    logits = model(ids, past_key_values=caches["bf16"], use_cache=True, logits_to_keep=1).logits[:, -1]
    reference(ids, past_key_values=caches["fp32"], use_cache=True, logits_to_keep=1)
    twin = DynamicCache()
    for i, layer in enumerate(caches["bf16"].layers):
        twin.update(layer.keys.clone(), layer.values.clone(), i)
    decoder = FastDecoder(lm)
    signature = (tuple([context] * cfg.num_hidden_layers), False, steps + 1, SamplingConfig(greedy=True), 1)
    state = _DecodeState(decoder, twin, signature, SamplingConfig(greedy=True))
    token = logits.argmax(-1)
    state.load([twin], [{}], [list(signature[0])], token, [context], torch.zeros(steps + 1, 1, device=DEV),
               torch.zeros(steps + 1, 1, dtype=torch.long, device=DEV))
    err_hf, err_fast, err_pair, agree = [], [], [], 0
    position = torch.tensor([[context]], device=DEV)
    for _ in range(steps):
        hf = model(token.view(1, 1), past_key_values=caches["bf16"], position_ids=position).logits[:, -1].float()
        exact = reference(token.view(1, 1), past_key_values=caches["fp32"], position_ids=position).logits[:, -1]
        state.token.copy_(token)
        state.step()
        fast = state.logits.float()
        err_hf.append(rel(hf, exact))
        err_fast.append(rel(fast, exact))
        err_pair.append(rel(fast, hf))
        agree += int(fast.argmax(-1) == hf.argmax(-1))
        token = hf.argmax(-1)
        position += 1
    del reference
    med = statistics.median
    print(f"engines, {steps} teacher-forced steps at {context} tokens, logits rel err (median / max):\n"
          f"  transformers bf16 vs fp32 {med(err_hf):.2e} / {max(err_hf):.2e}\n"
          f"  fast bf16         vs fp32 {med(err_fast):.2e} / {max(err_fast):.2e}\n"
          f"  fast vs transformers (bf16) {med(err_pair):.2e} / {max(err_pair):.2e}; argmax agrees {agree}/{steps}")


@torch.inference_mode()
def breakdown(lm, context: int, bandwidth: float, batch: int = 1) -> None:
    """`batch` sequences of `context` tokens each (one cache copied into every row)."""
    model, cfg = lm.model, lm.model.config
    decoder = FastDecoder(lm)
    cache = DynamicCache()
    kv = [torch.randn(1, cfg.num_key_value_heads, context, cfg.head_dim, device=DEV, dtype=torch.bfloat16)
          for _ in range(2)]
    for i in range(cfg.num_hidden_layers):
        cache.update(kv[0], kv[1], i)
    signature = (tuple([context] * cfg.num_hidden_layers), False, 130, SamplingConfig(), batch)
    state = _DecodeState(decoder, cache, signature, SamplingConfig())
    state.load([cache] * batch, [{}] * batch, [list(signature[0])] * batch, torch.ones(batch, dtype=torch.long,
               device=DEV), [context] * batch, torch.rand(130, batch, device=DEV),
               torch.zeros(130, batch, dtype=torch.long, device=DEV))
    del cache, kv

    def restore():
        state.lengths.fill_(context)
        state.position.fill_(context)
        state.step_index.fill_(1)

    x = torch.randn(batch, cfg.hidden_size, device=DEV, dtype=torch.bfloat16)
    act = torch.randn(batch, cfg.intermediate_size, device=DEV, dtype=torch.bfloat16)
    layers = decoder.layers

    def gemvs():
        for w in layers:
            F.linear(x, w.qkv_weight)
            w.o_proj(x)
            F.linear(x, w.gate_up_weight)
            w.down_proj(act)
        model.lm_head(x)

    def attention():
        live = state.lengths + 1
        for i, w in enumerate(layers):
            kernels.qk_norm_rope_store(state._qkv_probe, w.q_norm.weight,
                                       w.k_norm.weight, 1e-6, state._cos, state._sin, state.keys[i], state.values[i],
                                       None, state.lengths[i: i + 1], state.q)
            kernels.decode_attention(state.q, state.keys[i], state.values[i], live[i: i + 1], None, w.scale,
                                     state.attn_out, state.splits[i])

    state._qkv_probe = torch.randn(batch, (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim,
                                   device=DEV, dtype=torch.bfloat16)
    state._cos = torch.ones(batch, cfg.head_dim, device=DEV, dtype=torch.bfloat16)
    state._sin = torch.zeros(batch, cfg.head_dim, device=DEV, dtype=torch.bfloat16)

    def small_ops():
        for w in layers:
            kernels.add_rmsnorm(state.residual, x, w.input_norm.weight, 1e-6, state.normed)
            kernels.add_rmsnorm(state.residual, x, w.post_norm.weight, 1e-6, state.normed)
            kernels.silu_mul(state._gu_probe, state.mlp_act)

    state._gu_probe = torch.randn(batch, 2 * cfg.intermediate_size, device=DEV, dtype=torch.bfloat16)
    logits = torch.randn(batch, cfg.vocab_size, device=DEV, dtype=torch.bfloat16)

    def sampling():
        sample(logits, state.uniforms[:1], SamplingConfig())

    def full():
        state.step()
        restore()

    weight_bytes = models.weights_bytes(model) - model.model.embed_tokens.weight.nbytes
    kv_bytes = sum(k.nbytes + v.nbytes for k, v in zip(state.keys, state.values)) * (context + 1) / state.keys[0].shape[2]
    parts = {"full step": (full, weight_bytes + kv_bytes), "weight GEMVs": (gemvs, weight_bytes),
             "attention (+rope/store)": (attention, kv_bytes), "norms + silu": (small_ops, 0),
             "sampling": (sampling, 0)}
    ideal = (weight_bytes + kv_bytes) / bandwidth
    print(f"\ncontext {context} x batch {batch}: bytes/step {(weight_bytes + kv_bytes) / 1e9:.2f} GB (weights read by a step + KV) -> "
          f"{4.3e12 / (weight_bytes + kv_bytes) * batch:.1f} tok/s at 4.3 TB/s, {batch / ideal:.1f} at the measured "
          f"copy rate")
    for name, (fn, nbytes) in parts.items():
        t = replayed_seconds(fn)
        bw = f"{nbytes / t / 1e12:.2f} TB/s" if nbytes else ""
        print(f"  {name:24s} {t * 1e3:7.3f} ms  {bw}")
        if name == "full step":
            print(f"  {'':24s} = {batch / t:.1f} tok/s, {ideal / t * 100:.0f} % of the measured-copy roofline, "
                  f"{(weight_bytes + kv_bytes) / 4.3e12 / t * 100:.0f} % of the 4.3 TB/s one")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="8192,32768")
    parser.add_argument("--batch", default="1", help="contexts x batches for the breakdown, e.g. 1,8")
    parser.add_argument("--breakdown-only", action="store_true", help="skip the kernel and logits checks")
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)")
    lm = models.load(models.MODELS["qwen3-8b"], device=DEV, random_weights=True)
    if not args.breakdown_only:
        check_kernels(lm.model.config)
        check_logits(lm)
    for context in (int(c) for c in args.contexts.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            breakdown(lm, context, bandwidth, batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
