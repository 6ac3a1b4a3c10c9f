#!/usr/bin/python3
"""Independent check of the whole model: writes checkpoints in the HF layout (float32, bfloat16 and
float16, rounded to nearest even by this script's own safetensors writer), computes logits in float64
straight from DESIGN.md on exactly the stored (rounded) weights (stick-breaking weights by the product
formula A_ij = beta_ij * prod_{j<k<i} (1 - beta_ik)), and compares `sbmodel logits` (prefill and
--decode) against them.

The cases cover R0/R1/R2, MHA/GQA/MQA, rmsnorm and layernorm, biases, tied and untied heads, all seven
activations the config accepts and layer_norm_epsilon 1e-5 and 1e-2. Before running sbmodel, each case
checks that the bar can see what it is meant to catch: the float64 logits with the norm epsilon dropped
and with the activation swapped for its look-alike (gelu <-> gelu_pytorch_tanh, silu <-> relu) must
differ from the true ones by far more than the bar.

Exit status 0 only when every case is within BAR relative L2 (||got - want|| / ||want|| over all
logits)."""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

BAR = 3e-6        # relative L2 of sbmodel's logits against float64; fp32 arithmetic measures ~4e-7
SENSITIVITY = 10  # a look-alike model (eps dropped, activation swapped) must miss by >= 10x the bar

ST_DTYPE = {"f32": "F32", "bf16": "BF16", "f16": "F16"}
TORCH_DTYPE = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


# ---- rounding and encoding: float64 -> stored dtype -> float64 (what the engine decodes) ----

def to_bf16_bits(x):
    """float64 -> float32 -> bfloat16 bits, round to nearest even (finite inputs only)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_bits_to_f64(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def encode(x, dtype):
    """Returns (bytes as stored, the float64 values those bytes hold)."""
    if dtype == "f32":
        v = np.ascontiguousarray(x, dtype=np.float32)
        return v.tobytes(), v.astype(np.float64)
    if dtype == "f16":
        v = np.ascontiguousarray(x, dtype=np.float16)  # numpy rounds to nearest even
        assert np.isfinite(v).all()
        return v.tobytes(), v.astype(np.float64)
    bits = to_bf16_bits(x)
    return bits.astype("<u2").tobytes(), bf16_bits_to_f64(bits)


def self_test_rounding():
    """Hand-computed cases, so the writer's rounding cannot drift unnoticed."""
    cases = [(1.0, 0x3F80), (1 + 2.0 ** -8, 0x3F80),           # tie -> even (down)
             (1 + 3 * 2.0 ** -8, 0x3F82),                       # tie -> even (up)
             (1 + 2.0 ** -8 + 2.0 ** -20, 0x3F81),              # just above the tie -> up
             (-2.5, 0xC020), (0.0, 0x0000), (3.0e38, 0x7F62)]
    for x, want in cases:
        got = int(to_bf16_bits(np.array([x]))[0])
        assert got == want, f"bf16({x!r}) = {got:#06x}, want {want:#06x}"
    assert bf16_bits_to_f64(np.array([0xC020], dtype=np.uint16))[0] == -2.5
    assert np.float16(1 + 2.0 ** -11) == 1.0 and np.float16(1 + 3 * 2.0 ** -11) == 1 + 2.0 ** -9


def write_safetensors(path, tensors):
    """tensors: name -> (dtype, shape, bytes)."""
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": ST_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, data in tensors.values():
            f.write(data)


def read_back(path):
    """Decodes the file just written, independently of encode(): name -> float64 array."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        raw = blob[8 + n + b:8 + n + e]
        if info["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif info["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        else:
            a = np.array([struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)])
        out[name] = a.reshape(info["shape"])
    return out


# ---- the model, from DESIGN.md ----

GLU = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}
PLAIN = ("gelu", "gelu_pytorch_tanh", "silu", "relu")
LOOK_ALIKE = {"silu": "relu", "relu": "silu", "gelu": "gelu_pytorch_tanh", "gelu_pytorch_tanh": "gelu"}
_erf = np.frompyfunc(math.erf, 1, 1)


def act_fn(name, x):
    if name == "silu":
        return x / (1 + np.exp(-x))
    if name == "gelu":
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)).astype(np.float64))
    if name == "gelu_pytorch_tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "relu":
        return np.maximum(x, 0.0)
    raise ValueError(name)


def make_case(rng, c):
    """c: dict of the case's knobs. Returns config.json and name -> (dtype, shape, float64 values)."""
    D, L, H, I, V = 48, 2, 4, 40, 97
    d = D // H
    Hkv = c["kv"] or H
    glu = c["act"] in GLU
    cfg = {
        "model_type": "stickbreaking", "vocab_size": V, "n_embd": D, "n_layer": L, "n_head": H,
        "n_inner": I, "n_positions": 64, "activation_function": c["act"],
        "normalization_function": c["norm"], "layer_norm_epsilon": c["eps"], "add_bias": c["bias"],
        "m_emb": 1.5, "m_residual": 0.7, "m_width": 2.0, "attention_multiplier": 0.3,
        "tie_word_embeddings": c["tied"], "sb_remainder": c["variant"] != "R0",
        "attention_head_type": "mha" if Hkv == H else ("mqa" if Hkv == 1 else "gqa"),
        "torch_dtype": TORCH_DTYPE[c["dtype"]],
    }
    if c.get("qkv_bias") is not None:
        cfg["add_qkv_bias"] = c["qkv_bias"]
    qkv_bias = c["bias"] if c.get("qkv_bias") is None else c["qkv_bias"]
    if Hkv not in (1, H):
        cfg["num_key_value_heads"] = Hkv
    w = lambda *s: rng.normal(0, 0.3, s)
    t = {"transformer.wte.weight": w(V, D), "transformer.ln_f.weight": 1 + 0.1 * w(D)}
    if c["norm"] == "layernorm":
        t["transformer.ln_f.bias"] = 0.1 * w(D)
    F = 2 * I if glu else I
    for l in range(L):
        p = f"transformer.h.{l}."
        t[p + "ln_1.weight"] = 1 + 0.1 * w(D)
        t[p + "ln_2.weight"] = 1 + 0.1 * w(D)
        if c["norm"] == "layernorm":
            t[p + "ln_1.bias"] = 0.1 * w(D)
            t[p + "ln_2.bias"] = 0.1 * w(D)
        t[p + "attn.c_attn.weight"] = w(D + 2 * Hkv * d, D)
        t[p + "attn.c_proj.weight"] = w(D, D) / np.sqrt(D)
        t[p + "mlp.c_fc.weight"] = w(F, D)
        t[p + "mlp.c_proj.weight"] = w(D, I) / np.sqrt(I)
        if qkv_bias:
            t[p + "attn.c_attn.bias"] = w(D + 2 * Hkv * d)
        if c["bias"]:
            t[p + "attn.c_proj.bias"] = w(D)
            t[p + "mlp.c_fc.bias"] = w(F)
            t[p + "mlp.c_proj.bias"] = w(D)
        if c["variant"] == "R2":
            t[p + "attn.head_bias"] = w(H, d)
    if not c["tied"]:
        t["lm_head.weight"] = w(V, D)
    return cfg, t


def norm(x, w, b, kind, eps):
    if kind == "rmsnorm":
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def forward(cfg, t, ids, variant, eps=None, act=None):
    """float64 logits of every position. eps / act override the config (for the look-alike models)."""
    D, H, L, I = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["n_inner"]
    d = D // H
    Hkv = cfg.get("num_key_value_heads", H if cfg["attention_head_type"] == "mha" else 1)
    G = H // Hkv
    s, r, kind = cfg["attention_multiplier"], cfg["m_residual"], cfg["normalization_function"]
    eps = cfg["layer_norm_epsilon"] if eps is None else eps
    glu = cfg["activation_function"] in GLU
    act = act or GLU.get(cfg["activation_function"], cfg["activation_function"])
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
        a = fc[:, :I] * act_fn(act, fc[:, I:]) if glu else act_fn(act, fc)
        h = h + r * (a @ t[p + "mlp.c_proj.weight"].T + g(p + "mlp.c_proj.bias"))
    x = norm(h, t["transformer.ln_f.weight"], g("transformer.ln_f.bias"), kind, eps)
    head = t["transformer.wte.weight"] if cfg["tie_word_embeddings"] else t["lm_head.weight"]
    return x @ head.T / cfg["m_width"]


def rel_l2(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def case(variant, kv, norm_kind, bias, tied, act, eps, dtype, qkv_bias=None):
    return {"variant": variant, "kv": kv, "norm": norm_kind, "bias": bias, "tied": tied, "act": act,
            "eps": eps, "dtype": dtype, "qkv_bias": qkv_bias}


# Every activation, both norms with both epsilons, every dtype with each norm, R0/R1/R2, MHA/GQA/MQA.
CASES = [
    case("R0", 0, "rmsnorm", False, True, "swiglu", 1e-5, "f32"),
    case("R1", 0, "rmsnorm", False, True, "swiglu", 1e-2, "bf16"),
    case("R2", 0, "rmsnorm", False, True, "geglu", 1e-5, "f16"),
    case("R1", 2, "rmsnorm", False, True, "reglu", 1e-2, "f32"),
    case("R2", 1, "layernorm", True, False, "gelu", 1e-2, "bf16"),
    case("R1", 0, "layernorm", True, True, "gelu_pytorch_tanh", 1e-5, "f16"),
    case("R0", 2, "layernorm", False, False, "silu", 1e-2, "f32"),
    case("R1", 0, "rmsnorm", True, False, "relu", 1e-2, "bf16"),
    case("R2", 2, "layernorm", False, True, "swiglu", 1e-2, "f16", qkv_bias=True),
    case("R1", 0, "rmsnorm", False, True, "gelu_pytorch_tanh", 1e-2, "bf16"),
    case("R1", 1, "layernorm", True, True, "geglu", 1e-5, "bf16"),
    case("R1", 0, "rmsnorm", False, False, "gelu", 1e-5, "f16"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sbmodel", required=True)
    args = ap.parse_args()
    self_test_rounding()
    rng = np.random.default_rng(2024)
    worst, failed = {}, False
    with tempfile.TemporaryDirectory() as tmp:
        for n, c in enumerate(CASES):
            cfg, raw = make_case(rng, c)
            ck = os.path.join(tmp, f"case{n}")
            os.makedirs(ck)
            with open(os.path.join(ck, "config.json"), "w") as f:
                json.dump(cfg, f)
            stored, t = {}, {}
            for name, x in raw.items():
                data, values = encode(x, c["dtype"])
                stored[name] = (c["dtype"], x.shape, data)
                t[name] = values  # the reference sees exactly the rounded, stored weights
            path = os.path.join(ck, "model.safetensors")
            write_safetensors(path, stored)
            back = read_back(path)
            assert back.keys() == t.keys() and all(np.array_equal(back[k], t[k]) for k in t), "writer round trip"
            if c["dtype"] != "f32":  # the rounding really happened (the bf16/f16 cases are not f32 in disguise)
                assert rel_l2(t["transformer.wte.weight"], raw["transformer.wte.weight"]) > 1e-4
            ids = rng.integers(0, cfg["vocab_size"], 23)
            want = forward(cfg, t, ids, c["variant"])
            name = (f"{c['variant']} kv_heads={c['kv'] or cfg['n_head']} {c['norm']} eps={c['eps']:g} {c['act']} "
                    f"bias={c['bias']} qkv_bias={c['qkv_bias']} tied={c['tied']} {c['dtype']}")
            # The bar must be able to see a dropped epsilon and a look-alike activation in this case.
            act = GLU.get(c["act"], c["act"])
            looks = {"eps=0": forward(cfg, t, ids, c["variant"], eps=0.0),
                     f"act={LOOK_ALIKE[act]}": forward(cfg, t, ids, c["variant"], act=LOOK_ALIKE[act])}
            for what, alt in looks.items():
                miss = rel_l2(alt, want)
                needed = SENSITIVITY * BAR if (what != "eps=0" or c["eps"] >= 1e-2) else 0
                if miss < needed:
                    failed = True
                    print(f"FAIL {name}: the look-alike {what} is only {miss:.2e} away (need >= {needed:.0e})")
                print(f"     {name}: look-alike {what} would be {miss:.2e} away")
            for mode in ([], ["--decode"]):
                out = os.path.join(ck, "logits.npy")
                subprocess.run([args.sbmodel, "logits", "--model", ck, "--backend", "cpu", "--ids",
                                ",".join(map(str, ids)), "--out", out] + mode, check=True)
                got = np.load(out).astype(np.float64)
                assert got.shape == want.shape, (got.shape, want.shape)
                err = rel_l2(got, want) if np.isfinite(got).all() else math.inf
                worst[c["dtype"]] = max(worst.get(c["dtype"], 0.0), err)
                ok = err <= BAR
                failed |= not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name} {'decode ' if mode else 'prefill'} rel_l2={err:.2e}")
    print("worst relative L2 by dtype: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())) +
          f" (bar {BAR:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
