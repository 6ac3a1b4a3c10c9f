// GEMMs of 5 to 64 rows on tensor cores: the decode steps of a mid-sized batch, where
// y[n, out] = x[n, in] · W[out, in]ᵀ still costs about one read of W (n · 2 FLOPs per weight
// byte is far below the tensor rate), but is too many rows for the CUDA-core kernels of
// small_gemm.h. cuBLAS reads W at 61–74% of the copy rate at these shapes (tests/bench/engine.md);
// these kernels load W and x straight into mma.sync fragments, 16 bytes per lane per load, with no
// shared-memory staging, and split the inner dimension over a thread-block cluster whose CTAs sum
// their partial tiles through distributed shared memory in a fixed order (deterministic: the same
// call always gives the same bits).
//
// A CTA owns 128 weight rows (4 warps × 32) and one slice of the inner dimension; `split` CTAs
// (1, 2, 4 or 8: a cluster) cover it. With the GLU epilogue the 128 rows are 64 up rows and the
// matching 64 gate rows, and the CTA writes 64 outputs of the activation. Launch variants 6 and 7
// stage W and x through shared memory instead: a producer thread's 2-D tensor copies (TMA) into
// 3 or 4 mbarrier-guarded stages, read by 4 consumer warps; 8 and 9 the same with 8 consumer warps;
// 10 and 11 the same stages multiplied by two warpgroups with wgmma (sm_90a builds only).
//
// The register-loading variants measured slower than cuBLAS at every 3B shape on the H100
// (tests/bench/engine.md, step 8): they are latency-bound. The staged mma.sync variants are bound
// by their shared-memory fragment loads; the wgmma ones come closest but still trail cuBLAS from
// 16 rows on. The CUDA backend uses these kernels only with SBSERVE_SKINNY_GEMM_ROWS.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

struct CUstream_st;

namespace sbserve::cuda {

inline constexpr int kSkinnyGemmMinRows = 1;
inline constexpr int kSkinnyGemmMaxRows = 64;
inline constexpr int kSkinnyGemmMaxSplit = 8;
inline constexpr int kSkinnyGemmVariants = 12;

// Whether SkinnyGemm and SkinnyGemmGlu take a call: 1 <= n <= kSkinnyGemmMaxRows, in % 32 == 0,
// and x and W 16-byte aligned.
bool SkinnyGemmFits(int64_t n, int64_t in, const void* x, const void* w);

// The split a call of this shape takes when split = 0 is passed: the smallest power of two whose
// clusters fill the GPU's resident CTA slots at least once (at most kSkinnyGemmMaxSplit, and at
// most one 32-wide step of `in` per CTA). weight_rows: W's rows (2 · inner with the GLU). variant:
// the launch variant the call takes (-1: the default); the staged ones fit fewer CTAs per SM.
int SkinnyGemmAutoSplit(int64_t n, int64_t in, int64_t weight_rows, int variant = -1);

// y = alpha · x · Wᵀ, plus beta · y when y is fp32 and beta != 0 (y is not read otherwise); x, W
// bf16; y bf16 (then beta must be 0) or fp32. split: 0 for SkinnyGemmAutoSplit's, or 1, 2, 4, 8.
// prefetch: a launch variant for measurement, 0 to kSkinnyGemmVariants - 1 (how far ahead the
// weights are pulled into L2, and how many steps of loads each warp keeps in flight; -1 takes the
// default).
absl::Status SkinnyGemm(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                        float alpha, float beta, CUstream_st* stream, int split = 0, int prefetch = -1);

// A GLU MLP's first GEMM and its activation (SmallGemmGlu's contract): W is c_fc, [2·inner, in],
// the up rows then the gate rows; out[t, i] = bf16(bf16(up) · act(bf16(gate))). act: 0 silu, 1 gelu
// (erf), 2 gelu tanh, 3 relu.
absl::Status SkinnyGemmGlu(int act, const void* x, int64_t n, int64_t in, const void* w, int64_t inner, void* out,
                           CUstream_st* stream, int split = 0, int prefetch = -1);

}  // namespace sbserve::cuda
