// Small-batch GEMMs (small_gemm.h). A block owns R rows of W (R up rows and R gate rows with the GLU
// epilogue) and walks them in 16-byte chunks spread over its warps and lanes, U chunks of every row
// in flight per thread, multiplying each chunk with the same chunk of the N rows of x (from L1).
// Warp shuffles and then shared memory end each dot product.
//
// Per weight byte the kernel does N/2 FMAs and reads N/R bytes of x from L1; at N <= 4 that leaves
// the load pipe and the FMA units far from their limits, so the bound is the weights' bytes over the
// copy bandwidth, reached when enough loads are in flight.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/activation.cuh"
#include "engine/cuda/small_gemm.h"
#include "engine/cuda/streamed_load.cuh"
#include "kernels/cuda_check.h"
#include "kernels/pdl.h"

namespace sbserve::cuda {
namespace {

__device__ __forceinline__ float Lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float Hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

// acc += dot(w, x) over the 8 bf16 of a chunk.
__device__ __forceinline__ float Dot8(uint4 w, const float (&x)[8], float acc) {
  acc = fmaf(Lo(w.x), x[0], acc);
  acc = fmaf(Hi(w.x), x[1], acc);
  acc = fmaf(Lo(w.y), x[2], acc);
  acc = fmaf(Hi(w.y), x[3], acc);
  acc = fmaf(Lo(w.z), x[4], acc);
  acc = fmaf(Hi(w.z), x[5], acc);
  acc = fmaf(Lo(w.w), x[6], acc);
  acc = fmaf(Hi(w.w), x[7], acc);
  return acc;
}

constexpr int64_t kPrefetchBytes = 16384;  // per weight row, before griddepcontrol.wait

struct Args {
  const uint4* x;    // [N, in8] chunks
  const uint4* w;    // [rows, in8] chunks
  int64_t in8;       // chunks per row
  int64_t out;       // outputs per row of y (GLU: W's gate rows start at row `out`)
  void* y;
  bool y_f32;
  float alpha, beta;
  int act;
};

// A block of WARPS warps owns R outputs (R up rows and R gate rows with kGlu) and splits their
// inner dimension: warp w, lane j reads chunks (w·32 + j) + k·32·WARPS, U of them per row in flight.
// Partial sums meet in shared memory.
template <int N, int R, int U, int WARPS, bool kGlu>
__global__ void __launch_bounds__(WARPS * 32) SmallGemmKernel(Args a) {
  constexpr int W = kGlu ? 2 * R : R;  // weight rows per block
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * R;
  const uint4* wr[W];
#pragma unroll
  for (int j = 0; j < R; ++j) {
    const int64_t o = o0 + j < a.out ? o0 + j : a.out - 1;  // past the end: a valid row, not written
    wr[j] = a.w + o * a.in8;
    if constexpr (kGlu) wr[R + j] = a.w + (a.out + o) * a.in8;
  }
  // Launched as a programmatic dependent (kernels/pdl.h), the block may start while the kernel
  // before it still runs: the weights are nobody's output, so their first bytes are fetched into L2
  // now, and x and y are touched only after griddepcontrol.wait (a no-op in a plain launch).
  if (threadIdx.x < W) {
    const int64_t bytes = a.in8 * 16 < kPrefetchBytes ? a.in8 * 16 : kPrefetchBytes;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(wr[threadIdx.x]), "r"(static_cast<unsigned>(bytes))
                 : "memory");
  }
  kernels::PdlWait();
  float acc[W][N];
#pragma unroll
  for (int j = 0; j < W; ++j)
#pragma unroll
    for (int t = 0; t < N; ++t) acc[j][t] = 0.f;

  constexpr int kStride = 32 * WARPS;
  for (int64_t c0 = warp * 32 + lane; c0 < a.in8; c0 += kStride * U) {
    uint4 wv[U][W];
    uint4 xv[U][N];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + u * kStride;
      const bool ok = c < a.in8;
#pragma unroll
      for (int j = 0; j < W; ++j) wv[u][j] = ok ? LoadStreamed(wr[j] + c) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int t = 0; t < N; ++t) xv[u][t] = ok ? __ldg(a.x + t * a.in8 + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int t = 0; t < N; ++t) {
        const uint4 q = xv[u][t];
        const float xf[8] = {Lo(q.x), Hi(q.x), Lo(q.y), Hi(q.y), Lo(q.z), Hi(q.z), Lo(q.w), Hi(q.w)};
#pragma unroll
        for (int j = 0; j < W; ++j) acc[j][t] = Dot8(wv[u][j], xf, acc[j][t]);
      }
    }
  }
  // The next kernel (its own weight prefetch, if it is one of these) may be scheduled as blocks end.
  kernels::PdlLaunchDependents();
#pragma unroll
  for (int j = 0; j < W; ++j)
#pragma unroll
    for (int t = 0; t < N; ++t) {
      float v = acc[j][t];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      acc[j][t] = v;
    }
  if constexpr (WARPS > 1) {
    __shared__ float part[WARPS][W][N];
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < W; ++j)
#pragma unroll
        for (int t = 0; t < N; ++t) part[warp][j][t] = acc[j][t];
    }
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int j = 0; j < W; ++j)
#pragma unroll
      for (int t = 0; t < N; ++t) {
        float v = part[0][j][t];
#pragma unroll
        for (int k = 1; k < WARPS; ++k) v += part[k][j][t];
        acc[j][t] = v;
      }
  }
  // Warp 0 holds every sum in every lane; output (j, t) is written by lane (j·N + t) mod 32.
#pragma unroll
  for (int j = 0; j < R; ++j) {
#pragma unroll
    for (int t = 0; t < N; ++t) {
      if (lane != (j * N + t) % 32 || o0 + j >= a.out) continue;
      const int64_t i = t * a.out + o0 + j;
      if constexpr (kGlu) {
        const float up = __bfloat162float(__float2bfloat16(acc[j][t]));
        const float gate = __bfloat162float(__float2bfloat16(acc[R + j][t]));
        static_cast<__nv_bfloat16*>(a.y)[i] = __float2bfloat16(up * Act(a.act, gate));
      } else if (a.y_f32) {
        float* y = static_cast<float*>(a.y);
        const float v = a.alpha * acc[j][t];
        y[i] = a.beta != 0.f ? v + a.beta * y[i] : v;
      } else {
        static_cast<__nv_bfloat16*>(a.y)[i] = __float2bfloat16(a.alpha * acc[j][t]);
      }
    }
  }
}

template <int N, int R, int U, int WARPS, bool kGlu>
cudaError_t Launch(const Args& a, CUstream_st* stream) {
  return kernels::LaunchPdl(SmallGemmKernel<N, R, U, WARPS, kGlu>, dim3(static_cast<unsigned>((a.out + R - 1) / R)),
                            dim3(WARPS * 32), 0, stream, a);
}

// The shapes a launch may take (small_gemm_bench compares them; SetSmallGemmVariant picks one).
int g_variant = 0;

template <int N, bool kGlu>
cudaError_t LaunchVariant(int variant, const Args& a, CUstream_st* stream) {
  // <N, R, U, WARPS>: R outputs (2R rows with GLU) per block of WARPS warps, U chunks per row in
  // flight per thread; N/R bytes of x per weight byte come from L1. The default (0) was the fastest
  // in sum over the 3B model's GEMMs at n = 1 to 3 (small_gemm_bench, tests/bench/engine.md).
  switch (variant < 0 ? g_variant : variant) {
    case 1: return Launch<N, 2, 4, 1, kGlu>(a, stream);  // one warp per block
    case 2: return Launch<N, 1, 4, 4, kGlu>(a, stream);
    case 3: return Launch<N, 2, 4, 4, kGlu>(a, stream);
    case 4: return Launch<N, 1, 2, 8, kGlu>(a, stream);
    case 5: return Launch<N, 4, 2, 4, kGlu>(a, stream);
    default: return Launch<N, 2, 2, 4, kGlu>(a, stream);
  }
}

template <bool kGlu>
cudaError_t Dispatch(int64_t n, int variant, const Args& a, CUstream_st* stream) {
  switch (n) {
    case 1: return LaunchVariant<1, kGlu>(variant, a, stream);
    case 2: return LaunchVariant<2, kGlu>(variant, a, stream);
    case 3: return LaunchVariant<3, kGlu>(variant, a, stream);
    default: return LaunchVariant<4, kGlu>(variant, a, stream);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void SetSmallGemmVariant(int variant) { g_variant = variant; }

bool SmallGemmFits(int64_t n, int64_t in, const void* x, const void* w, int max_rows) {
  return n >= 1 && n <= max_rows && n <= kSmallGemmMaxRows && in > 0 && in % 8 == 0 && Aligned16(x) &&
         Aligned16(w);
}

absl::Status SmallGemm(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                       float alpha, float beta, CUstream_st* stream, int variant) {
  if (!SmallGemmFits(n, in, x, w)) return absl::InvalidArgumentError("SmallGemm: shape or alignment not supported");
  if (!y_f32 && beta != 0.f) return absl::InvalidArgumentError("SmallGemm: beta needs an fp32 output");
  if (out <= 0) return absl::OkStatus();
  Args a{static_cast<const uint4*>(x), static_cast<const uint4*>(w), in / 8, out, y, y_f32, alpha, beta, 0};
  SB_CUDA_RETURN_IF_ERROR(Dispatch<false>(n, variant, a, stream));
  return absl::OkStatus();
}

absl::Status SmallGemmGlu(int act, const void* x, int64_t n, int64_t in, const void* w, int64_t inner, void* out,
                          CUstream_st* stream) {
  if (!SmallGemmFits(n, in, x, w)) return absl::InvalidArgumentError("SmallGemmGlu: shape or alignment not supported");
  if (inner <= 0) return absl::OkStatus();
  Args a{static_cast<const uint4*>(x), static_cast<const uint4*>(w), in / 8, inner, out, false, 1.f, 0.f, act};
  SB_CUDA_RETURN_IF_ERROR(Dispatch<true>(n, -1, a, stream));
  return absl::OkStatus();
}

}  // namespace sbserve::cuda
