// GEMMs of a few rows: the decode steps of a small batch, where y[n, out] = x[n, in] · W[out, in]ᵀ
// is a matrix-vector product that must stream W at copy bandwidth. These kernels read each weight
// once, 16 bytes per load, with the few rows of x from L1, and reduce in fp32 on CUDA cores.
// small_gemm_bench compares them with cuBLAS (tests/bench/engine.md).
#pragma once

#include <cstdint>

#include "absl/status/status.h"

struct CUstream_st;

namespace sbserve::cuda {

inline constexpr int kSmallGemmMaxRows = 4;
// Up to this many rows the CUDA backend uses these kernels rather than cuBLAS: faster at 1 and 2
// rows on the 3B model's decode step, slower at 3 (end to end) and 4 (tests/bench/engine.md).
inline constexpr int kSmallGemmDefaultRows = 2;

// Whether SmallGemm and SmallGemmGlu take a call: 1 <= n <= min(max_rows, kSmallGemmMaxRows),
// in % 8 == 0, and x and W 16-byte aligned.
bool SmallGemmFits(int64_t n, int64_t in, const void* x, const void* w, int max_rows = kSmallGemmMaxRows);

// y = alpha · x · Wᵀ, plus beta · y when y is fp32 and beta != 0 (y is not read otherwise); x, W
// bf16; y bf16 (then beta must be 0) or fp32. variant: a launch shape (below), -1 the one set by
// SetSmallGemmVariant.
absl::Status SmallGemm(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                       float alpha, float beta, CUstream_st* stream, int variant = -1);

// A GLU MLP's first GEMM and its activation in one kernel. W is c_fc, [2·inner, in]: the up rows,
// then the gate rows. out[t, i] = bf16(up · act(gate)), where up and gate are the GEMM's outputs
// rounded to bf16 (as the unfused path stores them before its activation kernel). act: 0 silu,
// 1 gelu (erf), 2 gelu tanh, 3 relu.
absl::Status SmallGemmGlu(int act, const void* x, int64_t n, int64_t in, const void* w, int64_t inner, void* out,
                          CUstream_st* stream);

// Tuning: the launch shapes the kernels may take (rows per block, chunks in flight, warps per
// block), numbered 0 (the default) to kSmallGemmVariants - 1. small_gemm_bench times each; tests
// check each. Not thread-safe: set before any call.
inline constexpr int kSmallGemmVariants = 6;
void SetSmallGemmVariant(int variant);

}  // namespace sbserve::cuda
