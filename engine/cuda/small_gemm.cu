// Small-batch GEMMs (small_gemm.h). Each warp owns R rows of W (R up rows and R gate rows with the
// GLU epilogue) and walks them in 16-byte chunks: lane j reads chunks j, j + 32, ..., U chunks of
// every row in flight per iteration, and multiplies each chunk with the same chunk of the N rows of
// x (from L1: every warp reads all of x). A warp reduction ends each dot product.
//
// Per weight byte the kernel does N/2 FMAs and reads N/R bytes of x from L1; at N <= 8 and R >= N/2
// that leaves the load pipe and the FMA units far from their limits, so the bound is the weights'
// bytes over the copy bandwidth.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/activation.cuh"
#include "engine/cuda/small_gemm.h"
#include "kernels/cuda_check.h"

namespace sbserve::cuda {
namespace {

constexpr int kWarps = 4;  // per block

// A weight chunk: read once, so it bypasses L1.
__device__ __forceinline__ uint4 LoadWeights(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

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

struct Args {
  const uint4* x;    // [N, in8] chunks
  const uint4* w;    // [rows, in8] chunks
  int64_t in8;       // chunks per row
  int64_t out;       // outputs per row of y
  int64_t gate_row;  // GLU: first gate row of W (= out)
  void* y;
  bool y_f32;
  float alpha, beta;
  int act;
};

// N rows of x, R outputs per warp, U chunks per row in flight; kGlu: R up rows and R gate rows.
template <int N, int R, int U, bool kGlu>
__global__ void __launch_bounds__(kWarps * 32) SmallGemmKernel(Args a) {
  constexpr int W = kGlu ? 2 * R : R;  // weight rows per warp
  const int lane = threadIdx.x & 31;
  const int64_t o0 = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * R;
  if (o0 >= a.out) return;
  const uint4* wr[W];
#pragma unroll
  for (int j = 0; j < R; ++j) {
    const int64_t o = o0 + j < a.out ? o0 + j : a.out - 1;  // past the end: a valid row, not written
    wr[j] = a.w + o * a.in8;
    if constexpr (kGlu) wr[R + j] = a.w + (a.gate_row + o) * a.in8;
  }
  float acc[W][N];
#pragma unroll
  for (int j = 0; j < W; ++j)
#pragma unroll
    for (int t = 0; t < N; ++t) acc[j][t] = 0.f;

  for (int64_t c0 = lane; c0 < a.in8; c0 += 32 * U) {
    uint4 wv[U][W];
    uint4 xv[U][N];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + u * 32;
      const bool ok = c < a.in8;
#pragma unroll
      for (int j = 0; j < W; ++j) wv[u][j] = ok ? LoadWeights(wr[j] + c) : make_uint4(0, 0, 0, 0);
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
#pragma unroll
  for (int j = 0; j < W; ++j)
#pragma unroll
    for (int t = 0; t < N; ++t) {
      float v = acc[j][t];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      acc[j][t] = v;
    }
  // Every lane holds every sum; output (j, t) is written by lane (j·N + t) mod 32.
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

template <int N, bool kGlu>
void Launch(const Args& a, CUstream_st* stream) {
  // More rows per warp as N grows keeps the L1 reads of x per weight byte (N / R) bounded; fewer
  // chunks in flight per row keep the registers (W·U + N·U chunks) in budget.
  constexpr int R = kGlu ? (N <= 4 ? 1 : 2) : (N <= 4 ? 2 : 4);
  constexpr int U = N <= 4 ? 4 : 2;
  const int64_t warps = (a.out + R - 1) / R;
  const unsigned blocks = static_cast<unsigned>((warps + kWarps - 1) / kWarps);
  SmallGemmKernel<N, R, U, kGlu><<<blocks, kWarps * 32, 0, stream>>>(a);
}

template <bool kGlu>
void Dispatch(int64_t n, const Args& a, CUstream_st* stream) {
  switch (n) {
    case 1: Launch<1, kGlu>(a, stream); break;
    case 2: Launch<2, kGlu>(a, stream); break;
    case 3: Launch<3, kGlu>(a, stream); break;
    case 4: Launch<4, kGlu>(a, stream); break;
    case 5: Launch<5, kGlu>(a, stream); break;
    case 6: Launch<6, kGlu>(a, stream); break;
    case 7: Launch<7, kGlu>(a, stream); break;
    default: Launch<8, kGlu>(a, stream); break;
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool SmallGemmFits(int64_t n, int64_t in, const void* x, const void* w, int max_rows) {
  return n >= 1 && n <= max_rows && n <= kSmallGemmMaxRows && in > 0 && in % 8 == 0 && Aligned16(x) &&
         Aligned16(w);
}

absl::Status SmallGemm(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                       float alpha, float beta, CUstream_st* stream) {
  if (!SmallGemmFits(n, in, x, w)) return absl::InvalidArgumentError("SmallGemm: shape or alignment not supported");
  if (!y_f32 && beta != 0.f) return absl::InvalidArgumentError("SmallGemm: beta needs an fp32 output");
  if (out <= 0) return absl::OkStatus();
  Args a{static_cast<const uint4*>(x), static_cast<const uint4*>(w), in / 8, out, 0, y, y_f32, alpha, beta, 0};
  Dispatch<false>(n, a, stream);
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

absl::Status SmallGemmGlu(int act, const void* x, int64_t n, int64_t in, const void* w, int64_t inner, void* out,
                          CUstream_st* stream) {
  if (!SmallGemmFits(n, in, x, w)) return absl::InvalidArgumentError("SmallGemmGlu: shape or alignment not supported");
  if (inner <= 0) return absl::OkStatus();
  Args a{static_cast<const uint4*>(x), static_cast<const uint4*>(w), in / 8, inner, inner, out, false, 1.f, 0.f, act};
  Dispatch<true>(n, a, stream);
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

}  // namespace sbserve::cuda
