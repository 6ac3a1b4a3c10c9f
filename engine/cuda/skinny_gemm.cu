// Tensor-core GEMMs of up to 64 rows (skinny_gemm.h).
//
// The fragments come straight from global memory. The inner dimension of a dot product may be
// visited in any order as long as both operands agree, so lane (g, t) of a warp (g = lane / 4,
// t = lane % 4) loads the 16 bytes at inner offset k + 8t of weight rows g and g + 8 and of x row g,
// and uses their four bf16 pairs as the k-slots {2t, 2t+1} and {2t+8, 2t+9} of two m16n8k16 MMAs:
// pairs .x and .y in the first, .z and .w in the second. A and B see the same permutation, so the
// sum is the GEMM's, and every load is a full 16 bytes with no shared-memory round trip.
//
// Per 32-wide inner step a warp reads 32 weight rows (two m16 tiles, 2 KB) and n rows of x (from L1,
// shared by the CTA's four warps, which walk the same inner range over different weight rows), and
// issues 4 · n/8 MMAs. Loads run kDepth steps ahead of the MMAs in registers; with kAheadBytes > 0
// each lane also keeps its weight row that far ahead in L2 (cp.async.bulk.prefetch), and with
// kL2Hint each load asks L2 for the 256 bytes around it.
//
// The CTAs of a cluster split the inner dimension. Each stores its fp32 partial tile in shared
// memory; after a cluster barrier, CTA r sums the r-th slice of the tile over the cluster's CTAs in
// rank order (distributed shared memory) and writes it with the epilogue, so the result does not
// depend on timing.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "engine/cuda/activation.cuh"
#include "engine/cuda/skinny_gemm.h"
#include "kernels/cuda_check.h"
#include "kernels/pdl.h"

namespace sbserve::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kWarps = 4;
constexpr int kMT = 2;                       // m16 tiles per warp
constexpr int kRows = kWarps * kMT * 16;     // weight rows per CTA
constexpr int kStep = 32;                    // inner elements per step
constexpr int kPrefetchGrain = 128;          // elements (256 bytes) of a row prefetched at a time

struct Args {
  const __nv_bfloat16* x;  // [n, in]
  const __nv_bfloat16* w;  // [rows, in]
  int64_t in;
  int64_t out;             // outputs per row of y (GLU: the inner size; W's gate rows start there)
  int n;
  int64_t k_per_cta;       // a multiple of kStep
  void* y;
  bool y_f32;
  float alpha, beta;
  int act;
};

// A weight chunk: read once, so it bypasses L1; kL2Hint asks L2 to fetch the 256 bytes around it
// (the row's next steps) from memory at once.
template <bool kL2Hint>
__device__ __forceinline__ uint4 LoadStreamed(const __nv_bfloat16* p) {
  uint4 v;
  if constexpr (kL2Hint) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else {
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  }
  return v;
}

__device__ __forceinline__ void Mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void PrefetchL2(const __nv_bfloat16* p, int64_t elems) {
  if (elems > 0)
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(static_cast<unsigned>(elems * 2))
                 : "memory");
}

// kNT: n-tiles of 8 rows of x (n ≤ 8 · kNT). kGlu: local rows 0..63 are up rows, 64..127 the
// matching gate rows, and the CTA writes 64 outputs.
// kDepth: inner steps of loads in flight ahead of the MMAs.
template <int kNT, bool kGlu, int kAheadBytes, bool kL2Hint, int kDepth>
__global__ void __launch_bounds__(kWarps * 32) SkinnyGemmKernel(Args a) {
  constexpr int kN = 8 * kNT;
  constexpr int kLd = kRows + 4;  // partial tile: [kN][kLd] fp32, rows contiguous (conflict-free stores)
  constexpr int kOutRows = kGlu ? kRows / 2 : kRows;
  __shared__ float part[kN * kLd];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int split = gridDim.y, rank = blockIdx.y;
  const int64_t kb = rank * a.k_per_cta;
  const int64_t ke = kb + a.k_per_cta < a.in ? kb + a.k_per_cta : a.in;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kOutRows;

  // The weight row behind local row lr (clamped: a row past the end is read, never written).
  auto weight_row = [&](int lr) -> int64_t {
    if constexpr (kGlu) {
      const int64_t o = o0 + (lr % kOutRows) < a.out ? o0 + (lr % kOutRows) : a.out - 1;
      return lr < kOutRows ? o : a.out + o;
    } else {
      return o0 + lr < a.out ? o0 + lr : a.out - 1;
    }
  };
  const __nv_bfloat16* wp[kMT][2];
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) wp[i][h] = a.w + weight_row(warp * 32 + i * 16 + h * 8 + g) * a.in + 8 * t;
  const __nv_bfloat16* xp[kNT];
#pragma unroll
  for (int j = 0; j < kNT; ++j) xp[j] = a.x + static_cast<int64_t>(8 * j + g < a.n ? 8 * j + g : a.n - 1) * a.in + 8 * t;

  // Lane l of warp w prefetches local row 32w + l, which the same warp loads.
  const __nv_bfloat16* pf = a.w + weight_row(threadIdx.x) * a.in;
  if constexpr (kAheadBytes > 0) {
    constexpr int64_t ahead = kAheadBytes / 2;
    PrefetchL2(pf + kb, (ke - kb < ahead ? ke - kb : ahead));
  }
  // The weights are nobody's output: the loads above may run while the previous kernel finishes.
  kernels::PdlWait();

  float acc[kMT][kNT][4];
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  uint4 wv[kDepth][kMT][2];
  uint4 xv[kDepth][kNT];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) {
    const int64_t k = kb + d * kStep;
    if (k < ke) {
#pragma unroll
      for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) wv[d][i][h] = LoadStreamed<kL2Hint>(wp[i][h] + k);
#pragma unroll
      for (int j = 0; j < kNT; ++j) xv[d][j] = __ldg(reinterpret_cast<const uint4*>(xp[j] + k));
    }
  }
  for (int64_t k0 = kb; k0 < ke; k0 += kDepth * kStep) {
    if constexpr (kAheadBytes > 0) {
      constexpr int64_t ahead = kAheadBytes / 2;
      if (((k0 - kb) % kPrefetchGrain) == 0) {
        const int64_t p = k0 + ahead;
        PrefetchL2(pf + p, ke - p < kPrefetchGrain ? ke - p : kPrefetchGrain);
      }
    }
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int64_t k = k0 + d * kStep;
      if (k < ke) {
#pragma unroll
        for (int i = 0; i < kMT; ++i)
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            Mma(acc[i][j], wv[d][i][0].x, wv[d][i][1].x, wv[d][i][0].y, wv[d][i][1].y, xv[d][j].x, xv[d][j].y);
            Mma(acc[i][j], wv[d][i][0].z, wv[d][i][1].z, wv[d][i][0].w, wv[d][i][1].w, xv[d][j].z, xv[d][j].w);
          }
        const int64_t kn = k + kDepth * kStep;
        if (kn < ke) {
#pragma unroll
          for (int i = 0; i < kMT; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) wv[d][i][h] = LoadStreamed<kL2Hint>(wp[i][h] + kn);
#pragma unroll
          for (int j = 0; j < kNT; ++j) xv[d][j] = __ldg(reinterpret_cast<const uint4*>(xp[j] + kn));
        }
      }
    }
  }
  // The next kernel (its own weight loads) may be scheduled as CTAs end.
  kernels::PdlLaunchDependents();

  // c0, c1: row g, columns 2t and 2t + 1; c2, c3: row g + 8.
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      const int r = warp * 32 + i * 16 + g, c = 8 * j + 2 * t;
      part[c * kLd + r] = acc[i][j][0];
      part[(c + 1) * kLd + r] = acc[i][j][1];
      part[c * kLd + r + 8] = acc[i][j][2];
      part[(c + 1) * kLd + r + 8] = acc[i][j][3];
    }
  cg::cluster_group cluster = cg::this_cluster();
  if (split > 1) {
    cluster.sync();
  } else {
    __syncthreads();
  }
  // This CTA's slice of the tile's outputs, summed over the cluster in rank order.
  constexpr int kElems = kN * kOutRows;
  const int lo = rank * kElems / split, hi = (rank + 1) * kElems / split;
  for (int e = lo + static_cast<int>(threadIdx.x); e < hi; e += kWarps * 32) {
    const int c = e / kOutRows, r = e % kOutRows;
    const int64_t o = o0 + r;
    if (c >= a.n || o >= a.out) continue;
    float v = 0.f, gate = 0.f;
    for (int q = 0; q < split; ++q) {
      const float* src = split > 1 ? cluster.map_shared_rank(part, q) : part;
      v += src[c * kLd + r];
      if constexpr (kGlu) gate += src[c * kLd + r + kOutRows];
    }
    const int64_t idx = c * a.out + o;
    if constexpr (kGlu) {
      const float up = __bfloat162float(__float2bfloat16(v));
      const float gt = __bfloat162float(__float2bfloat16(gate));
      static_cast<__nv_bfloat16*>(a.y)[idx] = __float2bfloat16(up * Act(a.act, gt));
    } else if (a.y_f32) {
      float* y = static_cast<float*>(a.y);
      const float s = a.alpha * v;
      y[idx] = a.beta != 0.f ? s + a.beta * y[idx] : s;
    } else {
      static_cast<__nv_bfloat16*>(a.y)[idx] = __float2bfloat16(a.alpha * v);
    }
  }
  // No CTA may leave while another still reads its partial tile.
  if (split > 1) cluster.sync();
}

template <int kNT, bool kGlu, int kAheadBytes, bool kL2Hint, int kDepth>
cudaError_t Launch(const Args& a, int tiles, int split, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(split));
  cfg.blockDim = dim3(kWarps * 32);
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int na = 0;
  if (split > 1) {
    attr[na].id = cudaLaunchAttributeClusterDimension;
    attr[na].val.clusterDim.x = 1;
    attr[na].val.clusterDim.y = static_cast<unsigned>(split);
    attr[na].val.clusterDim.z = 1;
    ++na;
  }
  if (kernels::PdlEnabled()) {
    attr[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[na].val.programmaticStreamSerializationAllowed = 1;
    ++na;
  }
  cfg.attrs = attr;
  cfg.numAttrs = na;
  return cudaLaunchKernelEx(&cfg, SkinnyGemmKernel<kNT, kGlu, kAheadBytes, kL2Hint, kDepth>, a);
}

// The launch variants (skinny_gemm.h's `prefetch`): how far ahead a CTA pulls its weights into L2
// (a bulk prefetch 512 B or 2 KB ahead, or the 256-byte L2 fetch hint on each load) and how many
// steps of loads each warp keeps in registers (4 only up to 32 rows: at 64 they would spill).
constexpr int kDefaultPrefetch = 0;

template <int kNT, bool kGlu>
cudaError_t LaunchPrefetch(int prefetch, const Args& a, int tiles, int split, cudaStream_t stream) {
  constexpr int kDeep = kNT >= 8 ? 2 : 4;
  switch (prefetch < 0 ? kDefaultPrefetch : prefetch) {
    case 1: return Launch<kNT, kGlu, 512, false, 2>(a, tiles, split, stream);
    case 2: return Launch<kNT, kGlu, 2048, false, 2>(a, tiles, split, stream);
    case 3: return Launch<kNT, kGlu, 0, true, 2>(a, tiles, split, stream);
    case 4: return Launch<kNT, kGlu, 0, true, kDeep>(a, tiles, split, stream);
    case 5: return Launch<kNT, kGlu, 0, false, kDeep>(a, tiles, split, stream);
    default: return Launch<kNT, kGlu, 0, false, 2>(a, tiles, split, stream);
  }
}

template <bool kGlu>
cudaError_t Dispatch(int n, int prefetch, const Args& a, int tiles, int split, cudaStream_t stream) {
  if (n <= 8) return LaunchPrefetch<1, kGlu>(prefetch, a, tiles, split, stream);
  if (n <= 16) return LaunchPrefetch<2, kGlu>(prefetch, a, tiles, split, stream);
  if (n <= 32) return LaunchPrefetch<4, kGlu>(prefetch, a, tiles, split, stream);
  return LaunchPrefetch<8, kGlu>(prefetch, a, tiles, split, stream);
}

// Resident CTAs per SM of the widest instantiation for n rows (the register-heaviest), times SMs.
int Slots(int n) {
  int dev = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 132;
  const void* k = n <= 8    ? reinterpret_cast<const void*>(SkinnyGemmKernel<1, false, 0, false, 2>)
                  : n <= 16 ? reinterpret_cast<const void*>(SkinnyGemmKernel<2, false, 0, false, 2>)
                  : n <= 32 ? reinterpret_cast<const void*>(SkinnyGemmKernel<4, false, 0, false, 2>)
                            : reinterpret_cast<const void*>(SkinnyGemmKernel<8, false, 0, false, 2>);
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kWarps * 32, 0) != cudaSuccess || per_sm < 1) per_sm = 1;
  return sms * per_sm;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int Split(int split, int64_t n, int64_t in, int64_t tiles) {
  return split > 0 ? split : SkinnyGemmAutoSplit(n, in, tiles * kRows);
}

absl::Status Run(bool glu, const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                 float alpha, float beta, int act, CUstream_st* stream, int split, int prefetch) {
  const int64_t tiles = (out + (glu ? kRows / 2 : kRows) - 1) / (glu ? kRows / 2 : kRows);
  split = Split(split, n, in, tiles);
  if (split != 1 && split != 2 && split != 4 && split != 8)
    return absl::InvalidArgumentError("SkinnyGemm: split must be 1, 2, 4 or 8");
  const int64_t steps = in / kStep;
  Args a{static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w), in, out, static_cast<int>(n),
         (steps + split - 1) / split * kStep, y, y_f32, alpha, beta, act};
  SB_CUDA_RETURN_IF_ERROR(glu ? Dispatch<true>(static_cast<int>(n), prefetch, a, static_cast<int>(tiles), split, stream)
                              : Dispatch<false>(static_cast<int>(n), prefetch, a, static_cast<int>(tiles), split, stream));
  return absl::OkStatus();
}

}  // namespace

bool SkinnyGemmFits(int64_t n, int64_t in, const void* x, const void* w) {
  return n >= kSkinnyGemmMinRows && n <= kSkinnyGemmMaxRows && in > 0 && in % kStep == 0 && Aligned16(x) &&
         Aligned16(w);
}

int SkinnyGemmAutoSplit(int64_t n, int64_t in, int64_t weight_rows) {
  static std::atomic<int> slots[kSkinnyGemmMaxRows + 1] = {};
  const int i = static_cast<int>(std::clamp<int64_t>(n, 1, kSkinnyGemmMaxRows));
  int resident = slots[i].load(std::memory_order_relaxed);
  if (resident == 0) slots[i].store(resident = Slots(i), std::memory_order_relaxed);
  const int64_t tiles = (weight_rows + kRows - 1) / kRows;
  int split = 1;
  while (split < kSkinnyGemmMaxSplit && tiles * split < resident && (2 * split) * kStep <= in) split *= 2;
  return split;
}

absl::Status SkinnyGemm(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                        float alpha, float beta, CUstream_st* stream, int split, int prefetch) {
  if (!SkinnyGemmFits(n, in, x, w)) return absl::InvalidArgumentError("SkinnyGemm: shape or alignment not supported");
  if (!y_f32 && beta != 0.f) return absl::InvalidArgumentError("SkinnyGemm: beta needs an fp32 output");
  if (out <= 0) return absl::OkStatus();
  return Run(false, x, n, in, w, out, y, y_f32, alpha, beta, 0, stream, split, prefetch);
}

absl::Status SkinnyGemmGlu(int act, const void* x, int64_t n, int64_t in, const void* w, int64_t inner, void* out,
                           CUstream_st* stream, int split, int prefetch) {
  if (!SkinnyGemmFits(n, in, x, w)) return absl::InvalidArgumentError("SkinnyGemmGlu: shape or alignment not supported");
  if (inner <= 0) return absl::OkStatus();
  return Run(true, x, n, in, w, inner, out, false, 1.f, 0.f, act, stream, split, prefetch);
}

}  // namespace sbserve::cuda
