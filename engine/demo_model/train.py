#!/usr/bin/env python3
"""Trains the embedded demo model: a small stick-breaking LM (the `small` preset's shapes: 4 layers,
d = 256, 4 heads of 64, swiglu 768, rmsnorm, tied embeddings, R1) on this repository's own text
(corpus.py), and writes it in the HF layout sbserve loads (config.json + model.safetensors in bf16).

The model math is DESIGN.md section 2 written out in PyTorch: no position embedding; stick-breaking
attention in log space (z = q.k / sqrt(d), log A_ij = logsigmoid(z_ij) - sum_{j<k<i} softplus(z_ik),
j < i only), R1 remainder o_i += rem_i * v_i; c_attn rows interleaved per head (q_h | k_h | v_h).

usage (on a GPU machine with PyTorch):
  train.py --data DIR --template-config config.json --out MODEL_DIR [--seconds 240] [--steps 4000]
DIR holds train.bin and heldout.bin (little-endian int32 ids from `sbmodel encode`) and tokenizer.json.
Prints the held-out loss as it goes and keeps the best weights; also writes ref_ids.txt and
ref_logits.npy (the bf16-rounded model's float32 logits on a fixed prompt) for a cross-check
against `sbmodel logits` on the CPU backend.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F


class Config:
    def __init__(self, c):
        self.V, self.D, self.L, self.H = c["vocab_size"], c["n_embd"], c["n_layer"], c["n_head"]
        self.I, self.eps = c["n_inner"], c["layer_norm_epsilon"]
        self.d = self.D // self.H
        self.scale = c["attention_multiplier"] or 1.0 / math.sqrt(self.d)


def rmsnorm(x, w, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def stick_breaking(q, k, v, scale):
    """q, k, v: [B, H, T, d] -> o [B, H, T, d] with the R1 remainder."""
    T = q.shape[2]
    z = (q.float() @ k.float().transpose(-1, -2)) * scale  # [B, H, T(i), T(j)]
    strict = torch.ones(T, T, dtype=torch.bool, device=q.device).tril(-1)  # j < i
    neg_sp = torch.where(strict, -F.softplus(z), torch.zeros_like(z))  # log(1 - beta), 0 off-mask
    # suffix[i, j] = sum_{k >= j} log(1 - beta_ik) over the masked row; the weight of j excludes itself.
    suffix = torch.flip(torch.cumsum(torch.flip(neg_sp, [-1]), -1), [-1])
    log_a = F.logsigmoid(z) + suffix - neg_sp
    a = torch.where(strict, torch.exp(log_a), torch.zeros_like(z))
    rem = torch.exp(suffix[..., 0:1])  # prod over all j < i of (1 - beta_ij); 1 at i = 0
    o = a @ v.float() + rem * v.float()
    return o.to(q.dtype)


class Model(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        D, I, L = cfg.D, cfg.I, cfg.L
        p = torch.nn.Parameter
        self.wte = p(torch.randn(cfg.V, D) * 0.02)
        self.ln_1 = torch.nn.ParameterList([p(torch.ones(D)) for _ in range(L)])
        self.ln_2 = torch.nn.ParameterList([p(torch.ones(D)) for _ in range(L)])
        self.c_attn = torch.nn.ParameterList([p(torch.randn(3 * D, D) * 0.02) for _ in range(L)])
        self.attn_proj = torch.nn.ParameterList([p(torch.randn(D, D) * 0.02 / math.sqrt(2 * L)) for _ in range(L)])
        self.c_fc = torch.nn.ParameterList([p(torch.randn(2 * I, D) * 0.02) for _ in range(L)])
        self.mlp_proj = torch.nn.ParameterList([p(torch.randn(D, I) * 0.02 / math.sqrt(2 * L)) for _ in range(L)])
        self.ln_f = p(torch.ones(D))

    def forward(self, ids, dropout=0.0):
        c = self.cfg
        B, T = ids.shape
        h = self.wte[ids]
        for l in range(c.L):
            x = rmsnorm(h, self.ln_1[l], c.eps)
            qkv = (x @ self.c_attn[l].t()).view(B, T, c.H, 3 * c.d)
            q, k, v = qkv.split(c.d, dim=-1)
            o = stick_breaking(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), c.scale)
            o = o.transpose(1, 2).reshape(B, T, c.D) @ self.attn_proj[l].t()
            h = h + F.dropout(o, dropout, self.training)
            x = rmsnorm(h, self.ln_2[l], c.eps)
            up, gate = (x @ self.c_fc[l].t()).split(c.I, dim=-1)
            h = h + F.dropout((up * F.silu(gate)) @ self.mlp_proj[l].t(), dropout, self.training)
        return rmsnorm(h, self.ln_f, c.eps) @ self.wte.t()

    def state_for_hf(self):
        t = {"transformer.wte.weight": self.wte, "transformer.ln_f.weight": self.ln_f}
        for l in range(self.cfg.L):
            pre = f"transformer.h.{l}."
            t[pre + "ln_1.weight"] = self.ln_1[l]
            t[pre + "ln_2.weight"] = self.ln_2[l]
            t[pre + "attn.c_attn.weight"] = self.c_attn[l]
            t[pre + "attn.c_proj.weight"] = self.attn_proj[l]
            t[pre + "mlp.c_fc.weight"] = self.c_fc[l]
            t[pre + "mlp.c_proj.weight"] = self.mlp_proj[l]
        return {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in t.items()}


def batches(data, B, T, gen):
    starts = torch.randint(0, len(data) - T - 1, (B,), generator=gen)
    x = torch.stack([data[s:s + T + 1] for s in starts.tolist()])
    return x[:, :-1].cuda(non_blocking=True), x[:, 1:].cuda(non_blocking=True)


@torch.no_grad()
def heldout_loss(model, held, T):
    model.eval()
    n = (len(held) - 1) // T
    x = held[: n * T + 1]
    ids, tgt = x[:-1].view(n, T).cuda(), x[1:].view(n, T).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids)
    model.train()
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tgt.reshape(-1)).item()


@torch.no_grad()
def sample(model, tok, prompt, n, temperature, gen):
    model.eval()
    ids = tok.encode(prompt).ids
    for _ in range(n):
        x = torch.tensor([ids], device="cuda")
        logits = model(x)[0, -1].float()
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        if nxt == 0:
            break
        ids.append(nxt)
    model.train()
    return tok.decode(ids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--template-config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    with open(a.template_config) as f:
        hf = json.load(f)
    cfg = Config(hf)
    train = torch.from_numpy(np.fromfile(os.path.join(a.data, "train.bin"), dtype="<i4").astype(np.int64))
    held = torch.from_numpy(np.fromfile(os.path.join(a.data, "heldout.bin"), dtype="<i4").astype(np.int64))
    print(f"train {len(train)} tokens, held out {len(held)}; uniform loss {math.log(cfg.V):.3f}", flush=True)
    model = Model(cfg).cuda()
    print(f"parameters {sum(p.numel() for p in model.parameters()):,}", flush=True)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), fused=True)
    gen = torch.Generator().manual_seed(a.seed)
    warm = 100
    t0 = time.time()
    best, best_state, step = float("inf"), None, 0
    while step < a.steps and time.time() - t0 < a.seconds:
        frac = min(1.0, (time.time() - t0) / a.seconds)
        lr = a.lr * min(1.0, (step + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batches(train, a.batch, a.ctx, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x, a.dropout)
        loss = F.cross_entropy(logits.float().view(-1, cfg.V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            hl = heldout_loss(model, held, a.ctx)
            if hl < best:
                best, best_state = hl, {k: v.detach().clone() for k, v in model.state_dict().items()}
            print(f"step {step:5d}  {time.time() - t0:6.1f} s  lr {lr:.2e}  train {loss.item():.3f}  "
                  f"held-out {hl:.3f} (ppl {math.exp(hl):.1f})", flush=True)
    model.load_state_dict(best_state)
    print(f"best held-out loss {best:.3f} (perplexity {math.exp(best):.1f}; uniform {cfg.V})", flush=True)

    from safetensors.torch import save_file
    os.makedirs(a.out, exist_ok=True)
    tensors = model.state_for_hf()
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    hf["torch_dtype"] = "bfloat16"
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
        f.write("\n")
    # The exported (bf16-rounded) weights back in fp32, for the cross-check and the samples.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.eval()
    ref = list(range(1, 2048, 41))[:40]
    with torch.no_grad():
        logits = model(torch.tensor([ref], device="cuda"))[0].float().cpu().numpy()
    np.save(os.path.join(a.out, "ref_logits.npy"), logits)
    with open(os.path.join(a.out, "ref_ids.txt"), "w") as f:
        f.write(",".join(map(str, ref)) + "\n")
    print(f"bf16 model held-out loss {heldout_loss(model, held, a.ctx):.3f}", flush=True)
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(a.data, "tokenizer.json"))
        g = torch.Generator(device="cuda").manual_seed(1)
        for prompt in ["Once upon a time", "Hello", "The server"]:
            print(f"--- {prompt!r} greedy: {sample(model, tok, prompt, 40, 0, g)!r}")
            print(f"--- {prompt!r} T=0.8: {sample(model, tok, prompt, 40, 0.8, g)!r}")
    except Exception as e:  # samples are a convenience
        print(f"no samples: {e}")


if __name__ == "__main__":
    main()
