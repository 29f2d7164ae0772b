#!/usr/bin/env python3
"""Trains 1bit's default model: a small BitNet b1.58 (ternary) LM on the Brown Corpus.

Run on the GPU machine (torch, transformers, tokenizers, safetensors, numpy; no network):
    python3 tools/train/train_bitnet.py --data .train-data --out /tmp/out/model [--minutes 5]
    python3 tools/train/train_bitnet.py --data .train-data --out /tmp/out/smoke --smoke   # 1-minute self-check

--data holds train.txt and valid.txt from tools/train/prepare_corpus.mjs.  Steps, all in one run:
  1. byte-level BPE tokenizer (LLaMA-3 pre-tokenizer regex, 4096 tokens incl. 3 specials);
  2. BitNet b1.58 training (absmean ternary weights, per-token int8 absmax activations, both with
     straight-through estimators; bf16 autocast; AdamW; warm-up + cosine), stopped by --epochs or
     --minutes, whichever comes first; the snapshot with the best validation loss is kept;
  3. export of a Hugging Face folder for transformers' BitNetForCausalLM (packed uint8 ternary +
     bf16 weight_scale, "autobitlinear" offline), tokenizer files, generation_config.json, and the
     fp32 master weights (torch.save) to continue training later;
  4. parity: the folder is loaded back with BitNetForCausalLM (float32, eager attention, TF32 off)
     and compared with the training-time model; results go to <out>/reference.json.

Perplexity protocol (what `1bit ppl --ctx N` must reproduce), N = the model context:
    ids = tokenizer.encode(whole file text, no special tokens)
    chunks = ids[0:N], ids[N:2N], ...            (the last one may be shorter)
    for each chunk c: feed [bos] + c[:-1] (len(c) tokens, positions 0..len(c)-1) and score
        -log p(c[j] | bos, c[:j]) for every j (the logits at position j predict c[j])
    ppl = exp(sum of all scores / len(ids))       -- every token of the file is scored exactly once
"""
import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIALS = [BOS, EOS, EOT]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ (bos_token if loop.first else '') + message['role'] | capitalize"
    " + ': ' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)
PROMPTS = [
    "The jury said that",
    "It was a cold morning, and",
    "The United States",
    "She looked at him and said, \"",
    "In the first place,",
]
SAMPLE_PROMPTS = ["The", "It was late in the afternoon when", "The purpose of this study is"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------
def train_tokenizer(docs, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    try:
        bpe = models.BPE(ignore_merges=True)
    except TypeError:
        bpe = models.BPE()
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])
    # Make sure ignore_merges is on where this tokenizers version knows it (training may rebuild
    # the model object): patch the serialised form and reload.
    js = json.loads(tok.to_str())
    if "ignore_merges" in js.get("model", {}):
        if not js["model"]["ignore_merges"]:
            js["model"]["ignore_merges"] = True
            tok = Tokenizer.from_str(json.dumps(js))
        ignore = True
    else:
        ignore = False
    return tok, ignore


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def save_tokenizer_files(tok, out, n_ctx):
    tok.save(os.path.join(out, "tokenizer.json"))
    tcfg = {
        "bos_token": BOS,
        "eos_token": EOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": n_ctx,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump(tcfg, fh, indent=2)


def check_chat_template(tok, out):
    msgs = [{"role": "system", "content": "You are a helpful assistant. "},
            {"role": "user", "content": " Hello!"}]
    expected = f"{BOS}System: You are a helpful assistant.{EOT}User: Hello!{EOT}Assistant: "
    res = {"messages": msgs, "add_generation_prompt": True, "expected": expected}
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        got = env.from_string(CHAT_TEMPLATE).render(messages=msgs, add_generation_prompt=True,
                                                    bos_token=BOS, eos_token=EOS)
        res["jinja2"] = got
        res["jinja2_ok"] = got == expected
    except Exception as e:  # noqa: BLE001
        res["jinja2_error"] = repr(e)
    try:
        from transformers import AutoTokenizer
        t = AutoTokenizer.from_pretrained(out)
        got = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        res["transformers"] = got
        res["transformers_ok"] = got == expected
        res["transformers_plain_ids"] = t("Hello world")["input_ids"]
    except Exception as e:  # noqa: BLE001
        res["transformers_error"] = repr(e)
    res["expected_ids"] = tok.encode(expected, add_special_tokens=False).ids
    return res


# ----------------------------------------------------------------------------------------------
# Model (module names follow transformers' BitNetForCausalLM so the state dict maps 1:1)
# ----------------------------------------------------------------------------------------------
def ternary(w):
    """absmean ternary quantisation of a weight tensor: (codes in {-1,0,1} as float, scale=mean|W|)."""
    w = w.float()
    scale = w.abs().mean().clamp(min=1e-5)
    codes = (w / scale).round().clamp(-1, 1)
    return codes, scale


def act_quant(x):
    """per-token int8 absmax fake quantisation (float32 math)."""
    xf = x.float()
    s = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (xf * s).round().clamp(-128, 127) / s


class BitLinear(nn.Module):
    def __init__(self, fin, fout):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fout, fin))
        nn.init.normal_(self.weight, std=0.02)
        self.bf16_scale = False  # True: round the scale to bf16 as the export does

    def forward(self, x):
        w = self.weight
        codes, scale = ternary(w)
        if self.bf16_scale:
            scale = scale.to(torch.bfloat16).float()
        wq = w + (codes * scale - w).detach()
        xq = x + (act_quant(x).to(x.dtype) - x).detach()
        return F.linear(xq, wq)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dt)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.hkv, self.d = c["heads"], c["kv_heads"], c["head_dim"]
        hid = c["hidden"]
        self.q_proj = BitLinear(hid, self.h * self.d)
        self.k_proj = BitLinear(hid, self.hkv * self.d)
        self.v_proj = BitLinear(hid, self.hkv * self.d)
        self.o_proj = BitLinear(self.h * self.d, hid)
        self.attn_sub_norm = RMSNorm(hid, c["eps"])  # transformers sizes it by hidden (== H*D)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.hkv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.hkv, self.d).transpose(1, 2)
        cos, sin = cos[:t], sin[:t]
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(v.dtype)
        rep = self.h // self.hkv
        if rep > 1:  # query head i uses kv head i // rep (transformers' repeat_kv)
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(b, t, self.h * self.d)
        return self.o_proj(self.attn_sub_norm(a))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = BitLinear(c["hidden"], c["inter"])
        self.up_proj = BitLinear(c["hidden"], c["inter"])
        self.down_proj = BitLinear(c["inter"], c["hidden"])
        self.ffn_sub_norm = RMSNorm(c["inter"], c["eps"])

    def forward(self, x):
        return self.down_proj(self.ffn_sub_norm(F.relu(self.gate_proj(x)).square() * self.up_proj(x)))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden"], c["eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden"], c["eps"])
        self.mlp = MLP(c)
        self.drop = nn.Dropout(c["dropout"])

    def forward(self, x, cos, sin):
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin))
        x = x + self.drop(self.mlp(self.post_attention_layernorm(x)))
        return x


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["hidden"], c["eps"])


class BitNetLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = dict(c)
        self.model = Inner(c)
        self.drop = nn.Dropout(c["dropout"])
        d = c["head_dim"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        pos = torch.arange(c["ctx"], dtype=torch.float32)
        freqs = torch.outer(pos, inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, ids):
        x = self.drop(self.model.embed_tokens(ids))
        for layer in self.model.layers:
            x = layer(x, self.cos, self.sin)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)  # tied LM head, not quantised


def export_rounded_copy(model):
    """Copy whose embedding/norm weights and weight scales are rounded to bf16 like the export."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "proj" not in name:
                p.copy_(p.to(torch.bfloat16).float())
    for mod in m.modules():
        if isinstance(mod, BitLinear):
            mod.bf16_scale = True
    return m


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------
def pack_hf(codes):
    """int8 codes [out, in] -> uint8 [ceil(out/4), in]; bits 2i..2i+1 of row r hold W[i*R + r] + 1."""
    out, cin = codes.shape
    r = (out + 3) // 4
    padded = torch.ones((4 * r, cin), dtype=torch.uint8)  # padding rows hold weight 0
    padded[:out] = (codes + 1).to(torch.uint8)
    packed = torch.zeros((r, cin), dtype=torch.uint8)
    for i in range(4):
        packed |= padded[i * r:(i + 1) * r] << (2 * i)
    return packed


def unpack_hf(packed, out):
    r = packed.shape[0]
    rows = [((packed >> (2 * i)) & 3).to(torch.int8) - 1 for i in range(4)]
    return torch.cat(rows, 0)[:out]


def hf_config(c, bos_id, eos_id):
    return {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": c["hidden"],
        "intermediate_size": c["inter"],
        "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"],
        "num_key_value_heads": c["kv_heads"],
        "head_dim": c["head_dim"],
        "vocab_size": c["vocab"],
        "max_position_embeddings": c["ctx"],
        "rope_theta": float(c["rope_theta"]),
        "rms_norm_eps": c["eps"],
        "tie_word_embeddings": True,
        "hidden_act": "relu2",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"},
    }


def export(model, out, bos_id, eos_ids):
    from safetensors.torch import save_file
    c = model.c
    tensors = {}
    codes_of = {}
    n_ternary = n_bf16 = 0
    for name, p in model.named_parameters():
        p = p.detach().float()  # quantised on the training device, exactly as in training
        if name.endswith("proj.weight"):
            codes, scale = ternary(p)
            codes, scale = codes.to(torch.int8).cpu(), scale.cpu()
            packed = pack_hf(codes)
            assert torch.equal(unpack_hf(packed, codes.shape[0]), codes), name
            tensors[name] = packed.contiguous()
            tensors[name[: -len("weight")] + "weight_scale"] = scale.reshape(1).to(torch.bfloat16)
            codes_of[name] = codes
            n_ternary += codes.numel()
        else:
            tensors[name] = p.cpu().to(torch.bfloat16).contiguous()
            n_bf16 += p.numel()
    expect = {"model.embed_tokens.weight", "model.norm.weight"}
    for l in range(c["layers"]):
        pre = f"model.layers.{l}."
        for s in ["input_layernorm.weight", "post_attention_layernorm.weight",
                  "self_attn.attn_sub_norm.weight", "mlp.ffn_sub_norm.weight"]:
            expect.add(pre + s)
        for s in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]:
            expect.add(pre + s + ".weight")
            expect.add(pre + s + ".weight_scale")
    missing, extra = expect - set(tensors), set(tensors) - expect
    if missing or extra:
        raise RuntimeError(f"export names: missing {sorted(missing)} extra {sorted(extra)}")
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = hf_config(c, bos_id, eos_ids[0])
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_ids, "do_sample": True, "temperature": 0.8,
           "top_p": 0.95, "max_length": c["ctx"]}
    with open(os.path.join(out, "generation_config.json"), "w") as fh:
        json.dump(gen, fh, indent=2)
    return cfg, codes_of, n_ternary, n_bf16


# ----------------------------------------------------------------------------------------------
# Evaluation helpers
# ----------------------------------------------------------------------------------------------
def window_nll(logits_fn, ids, bos_id, n_ctx, dev, batch=8):
    """The documented protocol; returns (sum nll, n tokens, [per-window (tokens, nll)])."""
    chunks = [ids[i:i + n_ctx] for i in range(0, len(ids), n_ctx)]
    per = []
    i = 0
    while i < len(chunks):
        g = [chunks[i]]
        while (i + len(g) < len(chunks) and len(g) < batch
               and len(chunks[i + len(g)]) == len(chunks[i])):
            g.append(chunks[i + len(g)])
        tgt = torch.tensor(g, dtype=torch.long, device=dev)
        inp = torch.cat([torch.full((len(g), 1), bos_id, dtype=torch.long, device=dev), tgt[:, :-1]], 1)
        with torch.no_grad():
            logits = logits_fn(inp).float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                  reduction="none").view(len(g), -1).double().sum(1)
        per += [(len(ch), float(x)) for ch, x in zip(g, nll.tolist())]
        i += len(g)
    total = sum(x for _, x in per)
    return total, len(ids), per


def greedy(logits_fn, prompt_ids, n, dev):
    ids = list(prompt_ids)
    first_logits = None
    with torch.no_grad():
        for _ in range(n):
            logits = logits_fn(torch.tensor([ids], dtype=torch.long, device=dev))[0, -1].float()
            if first_logits is None:
                first_logits = logits.cpu()
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt_ids):], first_logits


def sample(logits_fn, prompt_ids, n, temp, seed, dev, n_ctx):
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            ctx = ids[-n_ctx:]
            logits = logits_fn(torch.tensor([ctx], dtype=torch.long, device=dev))[0, -1].float()
            probs = torch.softmax(logits / temp, dim=-1)
            ids.append(int(torch.multinomial(probs, 1, generator=g)))
    return ids[len(prompt_ids):]


def ids_sha256(ids):
    import numpy as np
    return hashlib.sha256(np.asarray(ids, dtype="<i4").tobytes()).hexdigest()


def file_size(p):
    return os.path.getsize(p) if os.path.exists(p) else 0


# ----------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with train.txt and valid.txt")
    ap.add_argument("--out", required=True, help="Hugging Face output folder (replaced)")
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget for the training loop")
    ap.add_argument("--epochs", type=float, default=12.0, help="passes over the training tokens")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 20 steps: a self-check of the pipeline")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=1280)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--batch", type=int, default=32, help="sequences per step (of --ctx tokens)")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=0, help="0: about 20 evaluations per run")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--excerpt", default=os.path.join(REPO, "tests/data/default_model/valid_excerpt.txt"))
    ap.add_argument("--ckpt", default="", help="fp32 master checkpoint path (default <out>/master_fp32.pt; "
                    "about 113 MB for the default model)")
    a = ap.parse_args()

    if a.smoke:
        a.hidden, a.inter, a.layers, a.heads, a.kv_heads, a.head_dim = 64, 256, 2, 4, 2, 16
        a.vocab, a.ctx, a.batch, a.warmup = 512, 64, 8, 5
    if a.heads * a.head_dim != a.hidden:
        sys.exit("heads * head_dim must equal hidden (transformers' attn_sub_norm has size hidden)")
    if a.heads % a.kv_heads:
        sys.exit("heads must be a multiple of kv-heads")

    t_start = time.time()
    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    import transformers
    import tokenizers
    log(f"torch {torch.__version__} transformers {transformers.__version__} tokenizers "
        f"{tokenizers.__version__} device {dev}"
        + (f" ({torch.cuda.get_device_name(0)})" if dev == "cuda" else ""))

    with open(os.path.join(a.data, "train.txt"), encoding="utf-8") as fh:
        train_text = fh.read()
    with open(os.path.join(a.data, "valid.txt"), encoding="utf-8") as fh:
        valid_text = fh.read()
    if a.smoke:
        train_text = train_text[:300_000]
        valid_text = valid_text[:20_000]
    docs = [d + "\n\n" for d in train_text.split("\n\n") if d.strip()]
    log(f"data: train {len(train_text)} chars in {len(docs)} documents, valid {len(valid_text)} chars")

    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)

    # 1. tokenizer -------------------------------------------------------------------------------
    t = time.time()
    tok, ignore_merges = train_tokenizer(docs, a.vocab)
    bos_id, eos_id, eot_id = (tok.token_to_id(s) for s in SPECIALS)
    nv = tok.get_vocab_size()
    log(f"tokenizer: {nv} tokens (bos {bos_id}, eos {eos_id}, eot {eot_id}), ignore_merges "
        f"{ignore_merges}, {time.time() - t:.1f}s")
    if nv > a.vocab:
        sys.exit(f"tokenizer has {nv} tokens > --vocab {a.vocab}")
    save_tokenizer_files(tok, a.out, a.ctx)
    t = time.time()
    train_ids = encode(tok, train_text)
    valid_ids = encode(tok, valid_text)
    rt = tok.decode(valid_ids, skip_special_tokens=False) == valid_text
    log(f"encoded: train {len(train_ids)} tokens ({len(train_text) / len(train_ids):.2f} chars/token), "
        f"valid {len(valid_ids)} tokens, round-trip {'ok' if rt else 'MISMATCH'}, {time.time() - t:.1f}s")

    # 2. training --------------------------------------------------------------------------------
    c = dict(vocab=a.vocab, hidden=a.hidden, inter=a.inter, layers=a.layers, heads=a.heads,
             kv_heads=a.kv_heads, head_dim=a.head_dim, ctx=a.ctx, rope_theta=a.rope_theta,
             eps=1e-5, dropout=a.dropout)
    model = BitNetLM(c).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {c}, {n_params / 1e6:.2f}M parameters")

    data = torch.tensor(train_ids, dtype=torch.long, device=dev)
    tokens_per_step = a.batch * a.ctx
    total_steps = 20 if a.smoke else max(1, int(math.ceil(a.epochs * len(train_ids) / tokens_per_step)))
    warmup = max(1, min(a.warmup, total_steps // 10))
    eval_every = a.eval_every or max(10, total_steps // 20)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() == 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=(dev == "cuda"))
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator()
    gen.manual_seed(a.seed)
    use_amp = dev == "cuda"
    ar = torch.arange(a.ctx, device=dev)

    def lr_at(step):
        if step < warmup:
            return a.lr * (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return a.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))

    def fwd(ids):
        with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=use_amp):
            return model(ids)

    def val_loss():
        model.eval()
        tot, n, _ = window_nll(fwd, valid_ids, bos_id, a.ctx, dev, batch=16)
        model.train()
        return tot / n

    log(f"training: {total_steps} steps planned ({a.epochs if not a.smoke else '-'} epochs of "
        f"{len(train_ids)} tokens, {tokens_per_step} tokens/step), warm-up {warmup}, "
        f"eval every {eval_every}, budget {a.minutes} min")
    budget = a.minutes * 60.0
    t0 = time.time()
    t_cal = None
    best = (float("inf"), 0, None)
    history = []
    step = 0
    loss_ema = None
    model.train()
    while step < total_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(train_ids) - a.ctx, (a.batch,), generator=gen).to(dev)
        tgt = data[starts[:, None] + ar]
        inp = torch.cat([torch.full((a.batch, 1), bos_id, dtype=torch.long, device=dev), tgt[:, :-1]], 1)
        logits = fwd(inp)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step == 10 and dev == "cuda":
            torch.cuda.synchronize()
            t_cal = time.time()
        if step == 40 and t_cal is not None and not a.smoke:
            torch.cuda.synchronize()
            per_step = (time.time() - t_cal) / 30 * 1.15  # + evaluation overhead
            fit = step + int((budget - (time.time() - t0)) / per_step)
            log(f"  {per_step * 1000:.1f} ms/step measured; {fit} steps fit the budget")
            if fit < total_steps:
                total_steps = max(step + 1, fit)
                eval_every = a.eval_every or max(10, total_steps // 20)
                log(f"  shortening the schedule to {total_steps} steps")
        if step % max(1, min(50, total_steps // 25)) == 0 or step == total_steps:
            lv = loss.item()
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            el = time.time() - t0
            log(f"step {step:5d}/{total_steps} loss {lv:.4f} (ema {loss_ema:.4f}) lr {lr_at(step - 1):.2e} "
                f"{step * tokens_per_step / max(el, 1e-9):,.0f} tok/s {el:.0f}s")
        if step % eval_every == 0 or step == total_steps:
            vl = val_loss()
            history.append({"step": step, "train_loss": round(loss.item(), 5), "val_loss": round(vl, 5)})
            mark = ""
            if vl < best[0]:
                best = (vl, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
                mark = " *"
            log(f"  val loss {vl:.4f} ppl {math.exp(vl):.2f} at step {step}{mark}")
        if time.time() - t0 > budget:
            log(f"time budget reached at step {step}")
            if not history or history[-1]["step"] != step:
                vl = val_loss()
                history.append({"step": step, "train_loss": round(loss.item(), 5), "val_loss": round(vl, 5)})
                if vl < best[0]:
                    best = (vl, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
            break
    train_secs = time.time() - t0
    final_step = step
    if best[2] is not None:
        model.load_state_dict(best[2])
    log(f"training done: {final_step} steps in {train_secs:.0f}s; keeping step {best[1]} "
        f"(val loss {best[0]:.4f}, ppl {math.exp(best[0]):.2f})")
    model.eval()

    # 3. export ----------------------------------------------------------------------------------
    cfg, codes_of, n_ternary, n_bf16 = export(model, a.out, bos_id, [eos_id, eot_id])
    ckpt = a.ckpt or os.path.join(a.out, "master_fp32.pt")
    torch.save({"config": c, "step": best[1], "state_dict": {k: v.float().cpu() for k, v in model.state_dict().items()},
                "args": vars(a), "note": "fp32 master weights of tools/train/train_bitnet.py BitNetLM"}, ckpt)
    h1b_est = n_ternary // 4 + 2 * n_bf16 + 4 * 7 * a.layers
    log(f"exported {a.out}: {n_ternary} ternary weights, {n_bf16} bf16 values; "
        f"model.safetensors {file_size(os.path.join(a.out, 'model.safetensors'))} B, "
        f"tokenizer.json {file_size(os.path.join(a.out, 'tokenizer.json'))} B, "
        f"checkpoint {ckpt} {file_size(ckpt)} B; .h1b estimate (2-bit + bf16) {h1b_est} B "
        f"({h1b_est / 2**20:.2f} MiB)")

    # 4. parity ----------------------------------------------------------------------------------
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = {
        "created_by": "tools/train/train_bitnet.py" + (" --smoke" if a.smoke else ""),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "dtype": "float32, eager attention, TF32 off",
        "config": cfg,
        "special_ids": {"bos": bos_id, "eos": eos_id, "eot": eot_id},
        "tokenizer_ignore_merges": ignore_merges,
        "ppl_protocol": ("ids = encode(file text, no specials); chunks of N = ctx tokens (last may be "
                         "shorter); each chunk c is fed as [bos] + c[:-1] and every c[j] is scored from the "
                         "logits at position j; ppl = exp(sum nll / len(ids))"),
        "ctx": a.ctx,
        "train": {"steps_run": final_step, "kept_step": best[1], "seconds": round(train_secs, 1),
                  "tokens_per_step": tokens_per_step, "train_tokens": len(train_ids),
                  "history": history, "args": vars(a), "parameters": n_params,
                  "ternary_weights": n_ternary, "bf16_values": n_bf16, "h1b_bytes_estimate": h1b_est},
    }
    failed = False
    try:
        own = model.float()
        own_r = export_rounded_copy(own)

        def own_fn(ids):
            return own(ids)

        def own_r_fn(ids):
            return own_r(ids)

        from transformers import BitNetForCausalLM
        hf = BitNetForCausalLM.from_pretrained(a.out, dtype=torch.float32, attn_implementation="eager")
        hf.to(dev).eval()

        def hf_fn(ids):
            return hf(input_ids=ids).logits

        # the loaded codes and scales are the exported ones
        chk = {}
        try:
            name = "model.layers.0.self_attn.q_proj.weight"
            mod = hf.get_submodule(name[: -len(".weight")])
            chk["q0_codes_equal"] = bool(torch.equal(mod.weight.detach().float().cpu(), codes_of[name].float()))
            chk["q0_weight_scale"] = float(mod.weight_scale.detach().float().cpu().reshape(-1)[0])
            chk["q0_scale_exported"] = float(ternary(own.model.layers[0].self_attn.q_proj.weight)[1]
                                             .to(torch.bfloat16).float())
        except Exception as e:  # noqa: BLE001
            chk["error"] = repr(e)
        ref["load_check"] = chk
        log(f"load check: {chk}")

        def ppl_block(ids, label):
            res = {"tokens": len(ids), "ids_sha256": ids_sha256(ids), "windows": 0}
            for tag, fn in [("hf", hf_fn), ("own_fp32_master", own_fn), ("own_export_rounded", own_r_fn)]:
                t1 = time.time()
                tot, n, per = window_nll(fn, ids, bos_id, a.ctx, dev)
                res["windows"] = len(per)
                res[f"nll_sum_{tag}"] = round(tot, 4)
                res[f"ppl_{tag}"] = round(math.exp(tot / n), 5)
                if tag == "hf":
                    res["window_mean_nll_hf"] = [round(x / k, 6) for k, x in per]
                log(f"  {label} ppl[{tag}] = {math.exp(tot / n):.4f} ({n} tokens, {len(per)} windows, "
                    f"{time.time() - t1:.1f}s)")
            rel = abs(res["ppl_hf"] - res["ppl_own_export_rounded"]) / res["ppl_hf"]
            res["rel_diff_hf_vs_own_rounded"] = rel
            if rel > 2e-3:
                log(f"  WARNING: {label}: transformers and the training model differ by {rel:.2e} (relative)")
            return res

        log(f"validation perplexity (ctx {a.ctx}):")
        ref["valid"] = {"file": "valid.txt", "bytes": len(valid_text.encode("utf-8"))}
        ref["valid"].update(ppl_block(valid_ids, "valid.txt"))
        if a.excerpt and os.path.exists(a.excerpt):
            with open(a.excerpt, encoding="utf-8") as fh:
                ex_text = fh.read()
            ex_ids = encode(tok, ex_text)
            ref["valid_excerpt"] = {"file": "tests/data/default_model/valid_excerpt.txt",
                                    "bytes": len(ex_text.encode("utf-8")), "ids": ex_ids}
            ref["valid_excerpt"].update(ppl_block(ex_ids, "valid_excerpt.txt"))
        else:
            log(f"  (no excerpt at {a.excerpt})")

        log("greedy continuations (32 tokens, no EOS stop):")
        ref["greedy"] = []
        agree_all = True
        for pi, p in enumerate(PROMPTS):
            pids = [bos_id] + encode(tok, p)
            g_hf, l_hf = greedy(hf_fn, pids, 32, dev)
            g_own, l_own = greedy(own_r_fn, pids, 32, dev)
            top = torch.topk(l_hf, 10)
            item = {"prompt": p, "prompt_ids": pids, "greedy_ids": g_hf,
                    "text": tok.decode(g_hf, skip_special_tokens=False),
                    "own_greedy_ids": g_own, "agree": g_hf == g_own,
                    "max_abs_logit_diff_first_step": float((l_hf - l_own).abs().max()),
                    "top10_first_step": [[int(i), round(float(v), 5)] for v, i in zip(top.values, top.indices)]}
            if pi == 0:
                item["logits_first_step"] = [round(float(v), 5) for v in l_hf]
            agree_all &= item["agree"]
            ref["greedy"].append(item)
            log(f"  {p!r} -> {item['text']!r}  (own model {'agrees' if item['agree'] else 'DIFFERS'}, "
                f"max |dlogit| {item['max_abs_logit_diff_first_step']:.2e})")
        ref["greedy_all_agree"] = agree_all

        log("samples (temperature 0.8, 64 tokens, transformers model):")
        ref["samples"] = []
        for si, p in enumerate(SAMPLE_PROMPTS):
            pids = [bos_id] + encode(tok, p)
            s = sample(hf_fn, pids, 24 if a.smoke else 64, 0.8, 1000 + si, dev, a.ctx)
            text = p + tok.decode(s, skip_special_tokens=False)
            ref["samples"].append({"prompt": p, "seed": 1000 + si, "temperature": 0.8, "ids": s, "text": text})
            log(f"  [{si}] {text!r}")
    except Exception:  # noqa: BLE001
        failed = True
        ref["parity_error"] = traceback.format_exc()
        log("PARITY FAILED:\n" + ref["parity_error"])

    try:
        ref["chat_template"] = check_chat_template(tok, a.out)
        log(f"chat template: jinja2_ok={ref['chat_template'].get('jinja2_ok')} "
            f"transformers_ok={ref['chat_template'].get('transformers_ok')} "
            f"{ref['chat_template'].get('jinja2_error', '')}{ref['chat_template'].get('transformers_error', '')}")
    except Exception:  # noqa: BLE001
        ref["chat_template_error"] = traceback.format_exc()
        log(ref["chat_template_error"])

    with open(os.path.join(a.out, "reference.json"), "w") as fh:
        json.dump(ref, fh, indent=1)
    log("files:")
    for f in sorted(os.listdir(a.out)):
        log(f"  {f:28s} {file_size(os.path.join(a.out, f)):>12,d} B")
    if "valid" in ref:
        v = ref["valid"]
        log(f"SUMMARY: valid ppl (ctx {a.ctx}) transformers {v['ppl_hf']:.3f}, training model "
            f"{v['ppl_own_fp32_master']:.3f} (export-rounded {v['ppl_own_export_rounded']:.3f}); "
            f"greedy agree {ref.get('greedy_all_agree')}; total {time.time() - t_start:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
