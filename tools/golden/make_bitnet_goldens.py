#!/usr/bin/env python3
"""Reference outputs of transformers' BitNetForCausalLM for 1bit's engine tests.

Run on the GPU machine (it needs torch + transformers, nothing from the network):
    python3 tools/golden/make_bitnet_goldens.py --out tests/data/bitnet

For each model below it builds a Hugging Face checkpoint folder from a deterministic generator
(described in tests/data/bitnet/README.md; the C++ tests implement the same generator, so large
checkpoints need not be committed), loads it with transformers, and records, for a few prompts of
token ids, the logits at every prompt position and a 32-token greedy continuation.

Forms:
  packed-auto  uint8 packed ternary + weight_scale, linear_class "autobitlinear" (offline)
  packed-bit   uint8 packed ternary + weight_scale, linear_class "bitlinear"
  bf16         bf16 master weights, quantized by transformers with absmean on the fly (online)
The reference runs in float64 (--dtype; float32 with TF32 off is the other choice) with eager
attention, so that it is the exact function and not one rounding of it.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(z):
    """splitmix64 finaliser on a numpy uint64 array (wrapping arithmetic)."""
    z = z.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stream(seed, index, n):
    """n 64-bit values for tensor `index` of a model made with `seed`."""
    with np.errstate(over="ignore"):
        base = mix(np.array([(seed * GOLDEN + index + 1) & M64], dtype=np.uint64))[0]
        i = np.arange(1, n + 1, dtype=np.uint64)
        return mix(base + i * np.uint64(GOLDEN))


def uniform(v):
    """[0, 1) as float32, exactly (v >> 40) / 2^24."""
    return ((v >> np.uint64(40)).astype(np.float64) / float(1 << 24)).astype(np.float32)


def to_bf16(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)


def expected_tensors(c):
    """Canonical (GGUF-style) names in 1bit's order, HF names, shapes, ternary flag."""
    h, f = c["hidden_size"], c["intermediate_size"]
    hd = c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = [("token_embd.weight", "model.embed_tokens.weight", (c["vocab_size"], h), False)]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out += [
            (f"blk.{l}.attn_norm.weight", p + "input_layernorm.weight", (h,), False),
            (f"blk.{l}.attn_q.weight", p + "self_attn.q_proj.weight", (q, h), True),
            (f"blk.{l}.attn_k.weight", p + "self_attn.k_proj.weight", (kv, h), True),
            (f"blk.{l}.attn_v.weight", p + "self_attn.v_proj.weight", (kv, h), True),
            (f"blk.{l}.attn_sub_norm.weight", p + "self_attn.attn_sub_norm.weight", (q,), False),
            (f"blk.{l}.attn_output.weight", p + "self_attn.o_proj.weight", (h, q), True),
            (f"blk.{l}.ffn_norm.weight", p + "post_attention_layernorm.weight", (h,), False),
            (f"blk.{l}.ffn_gate.weight", p + "mlp.gate_proj.weight", (f, h), True),
            (f"blk.{l}.ffn_up.weight", p + "mlp.up_proj.weight", (f, h), True),
            (f"blk.{l}.ffn_sub_norm.weight", p + "mlp.ffn_sub_norm.weight", (f,), False),
            (f"blk.{l}.ffn_down.weight", p + "mlp.down_proj.weight", (h, f), True),
        ]
    out.append(("output_norm.weight", "model.norm.weight", (h,), False))
    if not c["tie_word_embeddings"]:
        out.append(("output.weight", "lm_head.weight", (c["vocab_size"], h), False))
    return out


def pack_hf(codes):
    """int8 codes [out, in] -> uint8 [ceil(out/4), in]; bits 2i..2i+1 of row r hold W[i*R + r] + 1."""
    out, cin = codes.shape
    r = (out + 3) // 4
    padded = np.ones((4 * r, cin), dtype=np.uint8)  # rows past `out` (never read) hold weight 0
    padded[:out] = (codes + 1).astype(np.uint8)
    packed = np.zeros((r, cin), dtype=np.uint8)
    for i in range(4):
        packed |= padded[i * r:(i + 1) * r] << np.uint8(2 * i)
    return packed


def build_weights(c, seed, form):
    """HF-named tensors for one model (torch tensors), following the documented generator."""
    tensors = {}
    for k, (name, hf, shape, ternary) in enumerate(expected_tensors(c)):
        n = int(np.prod(shape))
        v = stream(seed, k, n)
        u = uniform(v).reshape(shape)
        if not ternary:
            if name.endswith("norm.weight"):
                tensors[hf] = to_bf16(0.5 + u)
            else:  # embedding / untied head
                tensors[hf] = to_bf16(u * 2.0 - 1.0)
            continue
        if form == "bf16":
            tensors[hf] = to_bf16((u * 2.0 - 1.0) * 0.05)
        else:
            codes = ((v >> np.uint64(32)) % np.uint64(3)).astype(np.int8).reshape(shape) - 1
            tensors[hf] = torch.from_numpy(pack_hf(codes))
            # ~1/sqrt(fan-in) keeps activations O(1) at any width (a well-conditioned reference).
            scale = np.float32(0.75 + 0.125 * (k % 7)) / np.sqrt(np.float32(shape[1]))
            tensors[hf[: -len("weight")] + "weight_scale"] = torch.tensor([float(np.float32(scale))]).to(torch.bfloat16)
    return tensors


def hf_config(c, form):
    cfg = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "vocab_size": c["vocab_size"],
        "max_position_embeddings": c["max_position_embeddings"],
        "rope_theta": c["rope_theta"],
        "rms_norm_eps": c["rms_norm_eps"],
        "tie_word_embeddings": c["tie_word_embeddings"],
        "hidden_act": "relu2",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
    }
    if form == "packed-auto":
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                      "quantization_mode": "offline"}
    elif form == "packed-bit":
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "bitlinear",
                                      "quantization_mode": "offline"}
    elif form == "bf16":
        cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                      "quantization_mode": "online"}
    return cfg


MODELS = {
    # name: (config, seed, forms, commit_checkpoint)
    "tiny": (dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=256,
                  rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
             7, ["packed-auto", "packed-bit", "bf16"], True),
    "2b4t-2layer": (dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=2,
                         num_attention_heads=20, num_key_value_heads=5, head_dim=128, vocab_size=512,
                         max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
                    11, ["packed-auto", "bf16"], False),
}

# Prompts of token ids. For each, the golden keeps the logits at every prompt position, the greedy
# continuation, and the teacher-forced logits of every continuation step with the top-1/top-2 margin.
# A float32 implementation differs from this float64 reference by an int8 activation code here and
# there (a value within rounding noise of a .5 boundary); where a step's margin is smaller than such
# a difference, greedy decoding may legitimately branch. The C++ test uses the margins to tell those
# steps apart (tests/unit/engine/golden_test.cc).
CANDIDATE_PROMPTS = [
    [1, 17, 42, 99, 3, 250, 7, 8],
    [1, 200, 201, 202, 5, 5, 5, 60, 61, 62, 63, 120],
    [1],
    [1, 33, 34, 35, 36],
    [1, 100, 90, 80, 70, 60, 50],
    [1, 9, 19, 29, 39, 49, 59, 69, 79, 89],
    [1, 150],
    [1, 250, 251, 252, 253, 254, 255, 3],
    [1, 11, 22, 33, 44, 55, 66, 77, 88, 99, 110, 121, 132, 143],
    [1, 2, 3, 4, 5, 6, 7],
    [1, 64, 128, 192],
    [1, 77, 77, 77, 77],
]
N_PROMPTS = 3


def run_model(folder, prompts, n_gen, dev, dtype):
    from transformers import BitNetForCausalLM
    model = BitNetForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    model.to(dev).eval()
    out, tried = [], 0
    with torch.no_grad():
        for p in prompts:
            if len(out) == N_PROMPTS:
                break
            tried += 1
            ids = torch.tensor([p], device=dev)
            gen = model.generate(ids, max_new_tokens=n_gen, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, min_new_tokens=n_gen)
            cont = gen[0, len(p):].tolist()
            # Teacher-forced logits over prompt + continuation: rows len(p)-1 .. chose each token.
            full = model(gen[:, :-1]).logits[0].double().cpu().numpy()
            steps = full[len(p) - 1:]
            top2 = np.sort(steps, axis=1)[:, -2:]
            margins = top2[:, 1] - top2[:, 0]
            assert (steps.argmax(axis=1) == np.array(cont)).all(), "generate() and forward() disagree"
            out.append({"prompt": p,
                        "logits": [[round(float(x), 6) for x in row] for row in full[:len(p)]],
                        "greedy": cont,
                        "greedy_logits": [[round(float(x), 6) for x in row] for row in steps],
                        "greedy_margins": [float(m) for m in margins]})
    if len(out) < N_PROMPTS:
        raise SystemExit(f"{folder}: only {len(out)} unambiguous prompts among {tried}")
    return model, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/bitnet")
    ap.add_argument("--scratch", default="/tmp/bitnet-golden")
    ap.add_argument("--only", default="")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    import transformers
    from safetensors.torch import save_file
    print(f"torch {torch.__version__} transformers {transformers.__version__} device {dev}")
    os.makedirs(a.out, exist_ok=True)
    for name, (c, seed, forms, commit) in MODELS.items():
        if a.only and name != a.only:
            continue
        for form in forms:
            tag = f"{name}-{form}"
            folder = os.path.join(a.scratch, tag)
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            cfg = hf_config(c, form)
            with open(os.path.join(folder, "config.json"), "w") as fh:
                json.dump(cfg, fh, indent=2)
            save_file(build_weights(c, seed, form), os.path.join(folder, "model.safetensors"),
                      metadata={"format": "pt"})
            model, results = run_model(folder, CANDIDATE_PROMPTS, 32, dev, getattr(torch, a.dtype))
            golden = {"model": name, "form": form, "seed": seed, "config": cfg,
                      "generator": "splitmix64 v1 (tests/data/bitnet/README.md)",
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
                      "dtype": a.dtype, "results": results}
            if form == "bf16" and name == "tiny":
                # The ternary codes transformers derives from the bf16 weights (absmean, online),
                # so the C++ loader can be checked code for code.
                codes = {}
                for mname, mod in model.named_modules():
                    w = getattr(mod, "weight", None)
                    if w is None or w.dim() != 2 or "embed" in mname or "lm_head" in mname:
                        continue
                    wf = w.detach()
                    s = 1.0 / wf.abs().mean().clamp(min=1e-5)
                    q = (wf * s).round().clamp(-1, 1).to(torch.int8).cpu().numpy()
                    codes[mname] = {"scale": float(1.0 / s), "codes": q.flatten().tolist()}
                golden["absmean_codes_torch_formula"] = codes
            with open(os.path.join(a.out, f"{tag}.golden.json"), "w") as fh:
                json.dump(golden, fh)
            if commit:
                dst = os.path.join(a.out, tag)
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(folder, dst)
            print(f"{tag}: {len(results)} prompts, greedy[0][:8]={results[0]['greedy'][:8]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
