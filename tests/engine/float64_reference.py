#!/usr/bin/python3
"""Independent check of the whole model: writes float32 checkpoints in the HF layout with its own
safetensors writer, computes logits in float64 straight from DESIGN.md (stick-breaking weights by the
product formula A_ij = beta_ij * prod_{j<k<i} (1 - beta_ik)), and compares `sbmodel logits` (prefill
and --decode) against them. Exit status 0 only when every case is within 1e-4 relative L2."""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def make_case(rng, variant, kv_heads, norm, bias, tied):
    D, L, H, I, V = 48, 2, 4, 80, 97
    d = D // H
    Hkv = kv_heads or H
    cfg = {
        "model_type": "stickbreaking", "vocab_size": V, "n_embd": D, "n_layer": L, "n_head": H,
        "n_inner": I, "n_positions": 64, "activation_function": "swiglu",
        "normalization_function": norm, "layer_norm_epsilon": 1e-5, "add_bias": bias,
        "m_emb": 1.5, "m_residual": 0.7, "m_width": 2.0, "attention_multiplier": 0.3,
        "tie_word_embeddings": tied, "sb_remainder": variant != "R0",
        "attention_head_type": "mha" if Hkv == H else ("mqa" if Hkv == 1 else "gqa"),
    }
    if Hkv not in (1, H):
        cfg["num_key_value_heads"] = Hkv
    w = lambda *s: rng.normal(0, 0.3, s)
    t = {"transformer.wte.weight": w(V, D), "transformer.ln_f.weight": 1 + 0.1 * w(D)}
    if norm == "layernorm":
        t["transformer.ln_f.bias"] = 0.1 * w(D)
    for l in range(L):
        p = f"transformer.h.{l}."
        t[p + "ln_1.weight"] = 1 + 0.1 * w(D)
        t[p + "ln_2.weight"] = 1 + 0.1 * w(D)
        if norm == "layernorm":
            t[p + "ln_1.bias"] = 0.1 * w(D)
            t[p + "ln_2.bias"] = 0.1 * w(D)
        t[p + "attn.c_attn.weight"] = w(D + 2 * Hkv * d, D)
        t[p + "attn.c_proj.weight"] = w(D, D) / np.sqrt(D)
        t[p + "mlp.c_fc.weight"] = w(2 * I, D)
        t[p + "mlp.c_proj.weight"] = w(D, I) / np.sqrt(I)
        if bias:
            t[p + "attn.c_attn.bias"] = w(D + 2 * Hkv * d)
            t[p + "attn.c_proj.bias"] = w(D)
            t[p + "mlp.c_fc.bias"] = w(2 * I)
            t[p + "mlp.c_proj.bias"] = w(D)
        if variant == "R2":
            t[p + "attn.head_bias"] = w(H, d)
    if not tied:
        t["lm_head.weight"] = w(V, D)
    # Round to float32 now: the reference must see exactly the stored weights.
    t = {k: v.astype(np.float32).astype(np.float64) for k, v in t.items()}
    return cfg, t


def norm(x, w, b, kind, eps):
    if kind == "rmsnorm":
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def forward(cfg, t, ids, variant):
    D, H, L, I = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["n_inner"]
    d = D // H
    Hkv = cfg.get("num_key_value_heads", H if cfg["attention_head_type"] == "mha" else 1)
    G = H // Hkv
    s, r, kind, eps = cfg["attention_multiplier"], cfg["m_residual"], cfg["normalization_function"], 1e-5
    T = len(ids)
    g = lambda n: t.get(n, 0.0)
    h = t["transformer.wte.weight"][ids] * cfg["m_emb"]
    for l in range(L):
        p = f"transformer.h.{l}."
        x = norm(h, t[p + "ln_1.weight"], g(p + "ln_1.bias"), kind, eps)
        qkv = (x @ t[p + "attn.c_attn.weight"].T + g(p + "attn.c_attn.bias")).reshape(T, Hkv, (G + 2) * d)
        q = qkv[:, :, : G * d].reshape(T, H, d)
        k = qkv[:, :, G * d:(G + 1) * d]
        v = qkv[:, :, (G + 1) * d:]
        o = np.zeros((T, H, d))
        for hh in range(H):
            kv = hh // G
            beta = 1 / (1 + np.exp(-s * (q[:, hh] @ k[:, kv].T)))
            for i in range(T):
                prod = 1.0
                for j in range(i - 1, -1, -1):
                    o[i, hh] += beta[i, j] * prod * v[j, kv]
                    prod *= 1 - beta[i, j]
                if variant == "R1":
                    o[i, hh] += prod * v[i, kv]
                elif variant == "R2":
                    o[i, hh] += prod * t[p + "attn.head_bias"][hh]
        h = h + r * (o.reshape(T, D) @ t[p + "attn.c_proj.weight"].T + g(p + "attn.c_proj.bias"))
        x = norm(h, t[p + "ln_2.weight"], g(p + "ln_2.bias"), kind, eps)
        fc = x @ t[p + "mlp.c_fc.weight"].T + g(p + "mlp.c_fc.bias")
        up, gate = fc[:, :I], fc[:, I:]
        act = up * gate / (1 + np.exp(-gate))
        h = h + r * (act @ t[p + "mlp.c_proj.weight"].T + g(p + "mlp.c_proj.bias"))
    x = norm(h, t["transformer.ln_f.weight"], g("transformer.ln_f.bias"), kind, eps)
    head = t["transformer.wte.weight"] if cfg["tie_word_embeddings"] else t["lm_head.weight"]
    return x @ head.T / cfg["m_width"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sbmodel", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(2024)
    cases = [("R0", 0, "rmsnorm", False, True), ("R1", 0, "rmsnorm", False, True),
             ("R2", 0, "rmsnorm", False, True), ("R1", 2, "rmsnorm", False, True),
             ("R2", 1, "layernorm", True, False)]
    worst, failed = 0.0, False
    with tempfile.TemporaryDirectory() as tmp:
        for n, (variant, kv, kind, bias, tied) in enumerate(cases):
            cfg, t = make_case(rng, variant, kv, kind, bias, tied)
            ck = os.path.join(tmp, f"case{n}")
            os.makedirs(ck)
            with open(os.path.join(ck, "config.json"), "w") as f:
                json.dump(cfg, f)
            write_safetensors(os.path.join(ck, "model.safetensors"), t)
            ids = rng.integers(0, cfg["vocab_size"], 23)
            want = forward(cfg, t, ids, variant)
            for mode in ([], ["--decode"]):
                out = os.path.join(ck, "logits.npy")
                subprocess.run([args.sbmodel, "logits", "--model", ck, "--backend", "cpu", "--ids",
                                ",".join(map(str, ids)), "--out", out] + mode, check=True)
                got = np.load(out).astype(np.float64)
                assert got.shape == want.shape, (got.shape, want.shape)
                err = np.linalg.norm(got - want) / np.linalg.norm(want)
                worst = max(worst, err)
                ok = np.isfinite(got).all() and err <= 1e-4
                failed |= not ok
                print(f"{'ok  ' if ok else 'FAIL'} {variant} kv_heads={kv or cfg['n_head']} {kind} bias={bias} "
                      f"tied={tied} {'decode ' if mode else 'prefill'} rel_l2={err:.2e}")
    print(f"worst relative L2 {worst:.2e} (bar 1e-4)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
