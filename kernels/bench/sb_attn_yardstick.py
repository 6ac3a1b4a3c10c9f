#!/usr/bin/env python3
"""Yardsticks for sb_attn_bench, timed the same way (CUDA events, warm-up, median of >= 50 runs,
inputs rotated over several copies): PyTorch flash SDPA (causal softmax) and, when its package
is importable (--sbref DIR holding stickbreaking_attention/), the reference Triton
stick-breaking kernel sb_attn_varlen. Same shapes as sb_attn_bench; TF/s = 4*H*d*sum(L^2)/2/t.

usage: python3 sb_attn_yardstick.py [--sbref DIR] [--reps 50]
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

MIXED = [5000, 64, 3000, 1200, 4000, 700, 2000, 420]
SHAPES = [
    (36, 64, "8 x 2048", [2048] * 8),
    (36, 64, "4 x 4096", [4096] * 4),
    (36, 64, "1 x 16384", [16384]),
    (36, 64, "32 x 512", [512] * 32),
    (36, 64, "mixed 64..5000", MIXED),
    (32, 128, "8 x 2048", [2048] * 8),
    (32, 128, "4 x 4096", [4096] * 4),
    (32, 128, "1 x 16384", [16384]),
    (32, 128, "32 x 512", [512] * 32),
    (32, 128, "mixed 64..5000", MIXED),
]


def median_ms(fn, reps, nsets):
    for i in range(5):
        fn(i % nsets)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i % nsets)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sbref", default=None)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    reps = max(50, args.reps)
    sb_attn_varlen = None
    if args.sbref:
        os.environ.setdefault("TRITON_ALLOW_NON_CONSTEXPR_GLOBALS", "1")
        sys.path.insert(0, args.sbref)
        try:
            from stickbreaking_attention.sb_varlen import sb_attn_varlen  # noqa: F811
        except Exception as e:  # report and go on with SDPA alone
            print(f"reference Triton kernel not importable: {e}")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; median of {reps} runs")
    torch.manual_seed(0)
    for H, d, label, lens in SHAPES:
        T = sum(lens)
        nsets = 3
        sets = [tuple(torch.randn(T, H, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)) for _ in range(nsets)]
        uniform = len(set(lens)) == 1
        flops = 4 * H * d * sum(L * L for L in lens) / 2

        def sdpa(i):
            q, k, v = sets[i]
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                if uniform:
                    B, L = len(lens), lens[0]
                    f = lambda x: x.view(B, L, H, d).transpose(1, 2)
                    F.scaled_dot_product_attention(f(q), f(k), f(v), is_causal=True)
                else:
                    off = 0
                    for L in lens:
                        f = lambda x: x[off:off + L].transpose(0, 1)[None]
                        F.scaled_dot_product_attention(f(q), f(k), f(v), is_causal=True)
                        off += L

        with torch.no_grad():
            t_sdpa = median_ms(sdpa, reps, nsets)
            line = f"{H:3d} x {d:<3d} {label:<16s} SDPA flash {t_sdpa:8.3f} ms {flops / t_sdpa / 1e9:6.1f} TF/s"
            if sb_attn_varlen is not None:
                cu = torch.tensor(lens, device="cuda").cumsum(0).to(torch.int32)
                # The layout its users pass: contiguous [H, T, d] (made once, outside the timing).
                tsets = [tuple(x.permute(1, 0, 2).contiguous() for x in s) for s in sets]

                def triton_sb(i):
                    q, k, v = tsets[i]
                    sb_attn_varlen(q, k, v, cu_seqlens=cu, max_seqlens=max(lens), inv_temp=1 / math.sqrt(d),
                                   zero_start=False)

                t_tri = median_ms(triton_sb, reps, nsets)
                line += f" | Triton sb {t_tri:8.3f} ms {flops / t_tri / 1e9:6.1f} TF/s"
            print(line, flush=True)
        del sets


if __name__ == "__main__":
    main()
