// Tensor-core GEMMs of up to 64 rows (skinny_gemm.h). Two kernels share the fragment layout, the
// cluster split and the epilogue: the register one (launch variants 0-5, below) and the staged one
// (variants 6-9, "The shared-memory-staged variant" further down).
//
// In the register kernel the fragments come straight from global memory. The inner dimension of a dot product may be
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
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "engine/cuda/activation.cuh"
#include "engine/cuda/skinny_gemm.h"
#include "engine/cuda/streamed_load.cuh"
#include "kernels/cuda_check.h"
#include "kernels/pdl.h"
#include "kernels/sb_attn_device.cuh"
#include "kernels/wgmma.cuh"

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

__device__ __forceinline__ void Mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One 32-wide inner step of an m16 x n8 tile under the shared permutation (file comment): w0 and w1
// are the 16 bytes of weight rows g and g + 8, x those of x row g, at the same inner offset.
__device__ __forceinline__ void MmaStep(float (&c)[4], const uint4& w0, const uint4& w1, const uint4& x) {
  Mma(c, w0.x, w1.x, w0.y, w1.y, x.x, x.y);
  Mma(c, w0.z, w1.z, w0.w, w1.w, x.z, x.w);
}

__device__ __forceinline__ void PrefetchL2(const __nv_bfloat16* p, int64_t elems) {
  if (elems > 0)
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(static_cast<unsigned>(elems * 2))
                 : "memory");
}

// The weight row behind local row lr of the CTA whose first output is o0 (clamped: a row past the
// end is read, never written). With the GLU, local rows kRows / 2 on are the gate rows.
template <bool kGlu>
__device__ __forceinline__ int64_t WeightRow(const Args& a, int64_t o0, int lr) {
  if constexpr (kGlu) {
    constexpr int kOutRows = kRows / 2;
    const int64_t o = o0 + (lr % kOutRows) < a.out ? o0 + (lr % kOutRows) : a.out - 1;
    return lr < kOutRows ? o : a.out + o;
  } else {
    return o0 + lr < a.out ? o0 + lr : a.out - 1;
  }
}

// The partial tile (acc of the threads that hold one, `has_acc`) into `part` ([kN][kRows + 4] fp32),
// then this CTA's slice of the tile's outputs, summed over the cluster in rank order, written with
// the epilogue. Every thread of the CTA calls it (the cluster barriers count them all).
template <int kNT, bool kGlu, int kTiles = kMT>  // kTiles: m16 tiles per warp (rows 16 · kTiles · warp on)
__device__ __forceinline__ void Epilogue(const Args& a, const float (&acc)[kTiles][kNT][4], float* part, int64_t o0,
                                         bool has_acc) {
  constexpr int kN = 8 * kNT;
  constexpr int kLd = kRows + 4;
  constexpr int kOutRows = kGlu ? kRows / 2 : kRows;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int split = gridDim.y, rank = blockIdx.y;
  // c0, c1: row g, columns 2t and 2t + 1; c2, c3: row g + 8.
  if (has_acc) {
#pragma unroll
    for (int i = 0; i < kTiles; ++i)
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const int r = warp * 16 * kTiles + i * 16 + g, c = 8 * j + 2 * t;
        part[c * kLd + r] = acc[i][j][0];
        part[(c + 1) * kLd + r] = acc[i][j][1];
        part[c * kLd + r + 8] = acc[i][j][2];
        part[(c + 1) * kLd + r + 8] = acc[i][j][3];
      }
  }
  cg::cluster_group cluster = cg::this_cluster();
  if (split > 1) {
    cluster.sync();
  } else {
    __syncthreads();
  }
  constexpr int kElems = kN * kOutRows;
  const int lo = rank * kElems / split, hi = (rank + 1) * kElems / split;
  for (int e = lo + static_cast<int>(threadIdx.x); e < hi; e += static_cast<int>(blockDim.x)) {
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
      const float sv = a.alpha * v;
      y[idx] = a.beta != 0.f ? sv + a.beta * y[idx] : sv;
    } else {
      static_cast<__nv_bfloat16*>(a.y)[idx] = __float2bfloat16(a.alpha * v);
    }
  }
  // No CTA may leave while another still reads its partial tile.
  if (split > 1) cluster.sync();
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
  const int rank = blockIdx.y;
  const int64_t kb = rank * a.k_per_cta;
  const int64_t ke = kb + a.k_per_cta < a.in ? kb + a.k_per_cta : a.in;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kOutRows;

  auto weight_row = [&](int lr) { return WeightRow<kGlu>(a, o0, lr); };
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

  float acc[kMT][kNT][4] = {};

  uint4 wv[kDepth][kMT][2];
  uint4 xv[kDepth][kNT];
  // The weight and x fragments of the step at inner offset k into load slot d.
  auto load = [&](uint4 (&w)[kMT][2], uint4 (&x)[kNT], int64_t k) {
#pragma unroll
    for (int i = 0; i < kMT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) w[i][h] = LoadStreamed<kL2Hint>(wp[i][h] + k);
#pragma unroll
    for (int j = 0; j < kNT; ++j) x[j] = __ldg(reinterpret_cast<const uint4*>(xp[j] + k));
  };
#pragma unroll
  for (int d = 0; d < kDepth; ++d) {
    if (kb + d * kStep < ke) load(wv[d], xv[d], kb + d * kStep);
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
          for (int j = 0; j < kNT; ++j) MmaStep(acc[i][j], wv[d][i][0], wv[d][i][1], xv[d][j]);
        if (k + kDepth * kStep < ke) load(wv[d], xv[d], k + kDepth * kStep);
      }
    }
  }
  // The next kernel (its own weight loads) may be scheduled as CTAs end.
  kernels::PdlLaunchDependents();

  Epilogue<kNT, kGlu>(a, acc, part, o0, true);
}

// ---- The shared-memory-staged variant ----
// A producer warp (the last warp) streams each stage, kStageK = 128 inner elements of the CTA's 128
// weight rows and of the kN rows of x, into shared memory with 2-D tensor copies (TMA: boxes of 64
// rows or kN rows by 64 columns, 128-byte swizzled) that complete on the stage's "full" mbarrier;
// the consumer warps (4 or 8) read their fragments from there and release the stage on its "empty"
// mbarrier, so up to kStages stages are in flight per CTA whatever the registers. Rows of x past n
// and weight rows past the tensor are zero-filled by the copy engine. Weights of the first stages
// are requested before griddepcontrol.wait, x only after it.
constexpr int kStageK = 128;   // inner elements per stage
constexpr int kBoxK = 64;      // inner elements per box row: 128 bytes, one swizzle atom
constexpr int kBoxRows = 64;   // weight rows per box
constexpr int kWBoxBytes = kBoxRows * kBoxK * 2;

using kernels::device::SmemAddr;
__device__ __forceinline__ void MbarInit(uint32_t bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void MbarExpectTx(uint32_t bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// Box (c0 = inner element, c1 = row) of `map` into shared memory at dst, completing on bar.
__device__ __forceinline__ void TensorCopy(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ uint4 LdShared(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}
// The 16-byte chunk `chunk` (0..7) of row r of a 128-byte-swizzled box at `box`.
__device__ __forceinline__ uint32_t Swizzled(uint32_t box, int r, int chunk) {
  return box + r * 128 + ((chunk ^ (r & 7)) << 4);
}

// A stage: the weight boxes [column half][row half], then the x boxes [column half] of nt n-tiles.
constexpr int StagedXBoxBytes(int nt) { return 8 * nt * kBoxK * 2; }
constexpr int StagedStageBytes(int nt) { return 4 * kWBoxBytes + 2 * StagedXBoxBytes(nt); }
// The stages, their full and empty mbarriers, and up to 1024 bytes to align the stages to a swizzle atom.
constexpr int StagedSmemBytes(int nt, int stages) { return 1024 + stages * StagedStageBytes(nt) + 2 * stages * 8; }
// The staged launch variants: 6 and 8 three stages deep, 7, 9 and 11 four, 10 as many as leave room
// for two CTAs per SM (3 up to 16 rows of x, 2 above); 6 and 7 with 4 consumer warps, 8 to 11 with 8;
// 10 and 11 multiply on wgmma.
constexpr int StagedStages(int variant, int nt) {
  return variant == 10 ? (nt <= 2 ? 3 : 2) : variant % 2 == 0 ? 3 : 4;
}
constexpr int StagedConsumers(int variant) { return variant < 8 ? 4 : 8; }
constexpr bool StagedWgmma(int variant) { return variant >= 10; }

template <int kNT, int kStages>
struct StagedLayout {
  static constexpr int kXBoxBytes = StagedXBoxBytes(kNT);
  static constexpr int kStageBytes = StagedStageBytes(kNT);
  static constexpr int kBarOffset = kStages * kStageBytes;  // full[s], then empty[s]
  static constexpr int kSmemBytes = StagedSmemBytes(kNT, kStages);
  static_assert(8 * kNT * (kRows + 4) * 4 <= kBarOffset, "the partial tile reuses the stages");
  static_assert(kXBoxBytes % 1024 == 0, "boxes start on 1024-byte swizzle atoms");
};

// kConsumers: consumer warps (4 of 32 weight rows or 8 of 16); the producer is warp kConsumers.
// kWgmma: the two consumer warpgroups multiply with wgmma straight from the swizzled stages
// (warpgroup q: weight rows 64q..64q + 63, the box row half q) instead of loading fragments into
// registers for mma.sync; the accumulator of warp w holds rows 16w..16w + 15 in the same layout.
template <int kNT, bool kGlu, int kStages, int kConsumers, bool kWgmma>
__global__ void __launch_bounds__((kConsumers + 1) * 32)
    SkinnyGemmStagedKernel(Args a, const __grid_constant__ CUtensorMap wmap, const __grid_constant__ CUtensorMap xmap) {
  using L = StagedLayout<kNT, kStages>;
  constexpr int kTiles = kRows / (16 * kConsumers);  // m16 tiles per consumer warp
  static_assert(kTiles * 16 * kConsumers == kRows);
  constexpr int kOutRows = kGlu ? kRows / 2 : kRows;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (SmemAddr(smem_raw) & 1023)) & 1023);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t kb = static_cast<int64_t>(blockIdx.y) * a.k_per_cta;
  const int64_t ke = kb + a.k_per_cta < a.in ? kb + a.k_per_cta : a.in;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kOutRows;
  const int stages_total = ke > kb ? static_cast<int>((ke - kb + kStageK - 1) / kStageK) : 0;
  const uint32_t base = SmemAddr(smem);
  const uint32_t bars = base + L::kBarOffset;
  auto full = [&](int st) { return bars + 8 * st; };
  auto empty = [&](int st) { return bars + 8 * (kStages + st); };
  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) {
      MbarInit(full(st), 1);
      MbarInit(empty(st), kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  float acc[kTiles][kNT][4] = {};

  if (warp == kConsumers) {
    if (lane == 0) {
      // Producer (one thread): the row halves are rows o0 and o0 + 64 of W, or with the GLU the up
      // rows o0.. and the gate rows out + o0..
      const int r0 = static_cast<int>(o0), r1 = static_cast<int>(kGlu ? a.out + o0 : o0 + kBoxRows);
      auto issue_w = [&](int it) {
        const int st = it % kStages;
        MbarExpectTx(full(st), L::kStageBytes);
        const uint32_t stage = base + st * L::kStageBytes;
        const int k = static_cast<int>(kb) + it * kStageK;
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) {
          TensorCopy(stage + (2 * ch) * kWBoxBytes, &wmap, k + ch * kBoxK, r0, full(st));
          TensorCopy(stage + (2 * ch + 1) * kWBoxBytes, &wmap, k + ch * kBoxK, r1, full(st));
        }
      };
      auto issue_x = [&](int it) {
        const int st = it % kStages;
        const uint32_t stage = base + st * L::kStageBytes + 4 * kWBoxBytes;
        const int k = static_cast<int>(kb) + it * kStageK;
#pragma unroll
        for (int ch = 0; ch < 2; ++ch) TensorCopy(stage + ch * L::kXBoxBytes, &xmap, k + ch * kBoxK, 0, full(st));
      };
      const int first = stages_total < kStages ? stages_total : kStages;
      for (int it = 0; it < first; ++it) issue_w(it);
      kernels::PdlWait();  // x is the previous kernel's output
      for (int it = 0; it < first; ++it) issue_x(it);
      for (int it = first; it < stages_total; ++it) {
        MbarWait(empty(it % kStages), ((it / kStages) - 1) & 1);
        issue_w(it);
        issue_x(it);
      }
    } else {
      kernels::PdlWait();
    }
  } else if constexpr (kWgmma) {
    static_assert(kConsumers == 8 && kTiles == 1, "one m64 box row half per consumer warpgroup");
    namespace dev = kernels::device;
    kernels::PdlWait();  // the epilogue reads and writes y
    const int q = warp >> 2;
    for (int it = 0; it < stages_total; ++it) {
      const int st = it % kStages;
      MbarWait(full(st), (it / kStages) & 1);
      const uint32_t stage = base + st * L::kStageBytes;
      const int64_t k = kb + static_cast<int64_t>(it) * kStageK;
      const int k16 = static_cast<int>((ke - k < kStageK ? ke - k : kStageK) / 16);
      dev::WgmmaFence();
#pragma unroll
      for (int s16 = 0; s16 < kStageK / 16; ++s16) {
        if (s16 < k16) {  // the same for the whole warpgroup
          // K-major 128-byte-swizzled boxes: 16 inner elements further is 32 bytes into each row.
          const int ch = s16 / 4, kk = s16 % 4;
          const uint64_t da = dev::SmemDescSw128(stage + (2 * ch + q) * kWBoxBytes + 32 * kk, 16, 1024);
          const uint64_t db = dev::SmemDescSw128(stage + 4 * kWBoxBytes + ch * L::kXBoxBytes + 32 * kk, 16, 1024);
          dev::WgmmaM64NK16<8 * kNT>(acc[0], da, db);
        }
      }
      dev::WgmmaCommit();
      dev::WgmmaWait<0>();
      __syncwarp();
      if (lane == 0) MbarArrive(empty(st));
    }
    dev::FenceRegs(acc[0]);
  } else {
    kernels::PdlWait();  // the epilogue reads and writes y
    for (int it = 0; it < stages_total; ++it) {
      const int st = it % kStages;
      MbarWait(full(st), (it / kStages) & 1);
      const uint32_t stage = base + st * L::kStageBytes;
      const int64_t k = kb + static_cast<int64_t>(it) * kStageK;
      const int steps = static_cast<int>((ke - k < kStageK ? ke - k : kStageK) / kStep);
#pragma unroll
      for (int sp = 0; sp < kStageK / kStep; ++sp) {
        if (sp < steps) {
          const int ch = sp / 2, chunk = (sp % 2) * 4 + t;
          uint4 wv[kTiles][2];
          uint4 xv[kNT];
#pragma unroll
          for (int i = 0; i < kTiles; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int r = warp * 16 * kTiles + i * 16 + h * 8 + g;  // local weight row
              wv[i][h] = LdShared(Swizzled(stage + (2 * ch + r / kBoxRows) * kWBoxBytes, r % kBoxRows, chunk));
            }
#pragma unroll
          for (int j = 0; j < kNT; ++j)
            xv[j] = LdShared(Swizzled(stage + 4 * kWBoxBytes + ch * L::kXBoxBytes, 8 * j + g, chunk));
#pragma unroll
          for (int i = 0; i < kTiles; ++i)
#pragma unroll
            for (int j = 0; j < kNT; ++j) MmaStep(acc[i][j], wv[i][0], wv[i][1], xv[j]);
        }
      }
      __syncwarp();
      if (lane == 0) MbarArrive(empty(st));
    }
  }
  kernels::PdlLaunchDependents();
  // The partial tile reuses the stages, all of whose copies have been consumed.
  __syncthreads();
  Epilogue<kNT, kGlu, kTiles>(a, acc, reinterpret_cast<float*>(smem), o0, warp < kConsumers);
}

// cuTensorMapEncodeTiled through the runtime (no link against the driver library).
PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A row-major bf16 [rows, cols] tensor read in boxes of box_rows x kBoxK, 128-byte swizzled.
cudaError_t EncodeMap(CUtensorMap* map, const void* p, int64_t rows, int64_t cols, int box_rows) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = TensorMapEncoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols * 2)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBoxK), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(p), dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// A launch of `kernel` over (tiles, split) CTAs: a cluster of `split` CTAs along y when split > 1,
// and a programmatic dependent launch (kernels/pdl.h) unless SBSERVE_PDL=0.
template <typename... KernelArgs, typename... Ts>
cudaError_t LaunchSplit(void (*kernel)(KernelArgs...), int tiles, int split, int threads, size_t smem,
                        cudaStream_t stream, Ts&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(split));
  cfg.blockDim = dim3(static_cast<unsigned>(threads));
  cfg.dynamicSmemBytes = smem;
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
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Ts>(args)...);
}

constexpr int kMaxDevices = 64;
// Staged launch variant kVariant (6 to 11): its stages, consumer warps and MMA from StagedStages,
// StagedConsumers and StagedWgmma.
template <int kNT, bool kGlu, int kVariant>
cudaError_t LaunchStaged(const Args& a, int tiles, int split, cudaStream_t stream) {
  constexpr int kStages = StagedStages(kVariant, kNT);
  constexpr int kConsumers = StagedConsumers(kVariant);
  constexpr bool kWgmma = StagedWgmma(kVariant);
  using L = StagedLayout<kNT, kStages>;
  // The shared-memory limit is raised once per device.
  static std::atomic<bool> raised[kMaxDevices] = {};
  int dev = 0;
  if (cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) return e;
  if (dev >= kMaxDevices || !raised[dev].load(std::memory_order_acquire)) {
    if (cudaError_t e = cudaFuncSetAttribute(SkinnyGemmStagedKernel<kNT, kGlu, kStages, kConsumers, kWgmma>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, L::kSmemBytes);
        e != cudaSuccess)
      return e;
    if (dev < kMaxDevices) raised[dev].store(true, std::memory_order_release);
  }
  alignas(64) CUtensorMap wmap, xmap;
  const int64_t w_rows = kGlu ? 2 * a.out : a.out;
  if (cudaError_t e = EncodeMap(&wmap, a.w, w_rows, a.in, kBoxRows); e != cudaSuccess) return e;
  if (cudaError_t e = EncodeMap(&xmap, a.x, a.n, a.in, 8 * kNT); e != cudaSuccess) return e;
  return LaunchSplit(SkinnyGemmStagedKernel<kNT, kGlu, kStages, kConsumers, kWgmma>, tiles, split, (kConsumers + 1) * 32,
                     L::kSmemBytes, stream, a, wmap, xmap);
}

template <int kNT, bool kGlu, int kAheadBytes, bool kL2Hint, int kDepth>
cudaError_t Launch(const Args& a, int tiles, int split, cudaStream_t stream) {
  return LaunchSplit(SkinnyGemmKernel<kNT, kGlu, kAheadBytes, kL2Hint, kDepth>, tiles, split, kWarps * 32, 0, stream, a);
}

// The launch variants (skinny_gemm.h's `prefetch`): how far ahead a CTA pulls its weights into L2
// (a bulk prefetch 512 B or 2 KB ahead, or the 256-byte L2 fetch hint on each load) and how many
// steps of loads each warp keeps in registers (4 only up to 32 rows: at 64 they would spill); 6 and
// 7 stage the weights and x through shared memory instead (2-D tensor copies), 3 or 4 stages deep,
// for 4 consumer warps of 32 rows; 8 and 9 the same for 8 consumer warps of 16 rows.
// SBSERVE_SKINNY_GEMM_VARIANT overrides the default (A/B runs of the engine).
int DefaultVariant() {
  static const int v = [] {
    const char* e = std::getenv("SBSERVE_SKINNY_GEMM_VARIANT");
    const int parsed = e != nullptr ? std::atoi(e) : 0;
    return parsed >= 0 && parsed < kSkinnyGemmVariants ? parsed : 0;
  }();
  return v;
}

template <int kNT, bool kGlu>
cudaError_t LaunchPrefetch(int prefetch, const Args& a, int tiles, int split, cudaStream_t stream) {
  constexpr int kDeep = kNT >= 8 ? 2 : 4;
  switch (prefetch < 0 ? DefaultVariant() : prefetch) {
    case 1: return Launch<kNT, kGlu, 512, false, 2>(a, tiles, split, stream);
    case 2: return Launch<kNT, kGlu, 2048, false, 2>(a, tiles, split, stream);
    case 3: return Launch<kNT, kGlu, 0, true, 2>(a, tiles, split, stream);
    case 4: return Launch<kNT, kGlu, 0, true, kDeep>(a, tiles, split, stream);
    case 5: return Launch<kNT, kGlu, 0, false, kDeep>(a, tiles, split, stream);
    case 6: return LaunchStaged<kNT, kGlu, 6>(a, tiles, split, stream);
    case 7: return LaunchStaged<kNT, kGlu, 7>(a, tiles, split, stream);
    case 8: return LaunchStaged<kNT, kGlu, 8>(a, tiles, split, stream);
    case 9: return LaunchStaged<kNT, kGlu, 9>(a, tiles, split, stream);
#if SBSERVE_ENGINE_SM90A
    case 10: return LaunchStaged<kNT, kGlu, 10>(a, tiles, split, stream);
    case 11: return LaunchStaged<kNT, kGlu, 11>(a, tiles, split, stream);
#else
    case 10:
    case 11: return cudaErrorNotSupported;  // wgmma exists only in sm_90a code
#endif
    default: return Launch<kNT, kGlu, 0, false, 2>(a, tiles, split, stream);
  }
}

// The n-tiles of 8 rows of x that an instantiation for n rows holds: 1, 2, 4 or 8.
int NTilesFor(int n) { return n <= 8 ? 1 : n <= 16 ? 2 : n <= 32 ? 4 : 8; }

template <bool kGlu>
cudaError_t Dispatch(int n, int prefetch, const Args& a, int tiles, int split, cudaStream_t stream) {
  switch (NTilesFor(n)) {
    case 1: return LaunchPrefetch<1, kGlu>(prefetch, a, tiles, split, stream);
    case 2: return LaunchPrefetch<2, kGlu>(prefetch, a, tiles, split, stream);
    case 4: return LaunchPrefetch<4, kGlu>(prefetch, a, tiles, split, stream);
    default: return LaunchPrefetch<8, kGlu>(prefetch, a, tiles, split, stream);
  }
}

// CTAs of a launch for n rows that fit on the GPU at once: the register variants' occupancy (of the
// plain instantiation for n), or for the staged variants the shared memory their stages take.
int Slots(int n, int variant) {
  int dev = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 132;
  const int nt = NTilesFor(n);
  if (variant >= 6) {
    const int smem = StagedSmemBytes(nt, StagedStages(variant, nt));
    int sm_bytes = 0;
    if (cudaDeviceGetAttribute(&sm_bytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess)
      sm_bytes = 228 * 1024;
    return sms * std::max(1, sm_bytes / (smem + 1024));
  }
  const void* k = nt == 1   ? reinterpret_cast<const void*>(SkinnyGemmKernel<1, false, 0, false, 2>)
                  : nt == 2 ? reinterpret_cast<const void*>(SkinnyGemmKernel<2, false, 0, false, 2>)
                  : nt == 4 ? reinterpret_cast<const void*>(SkinnyGemmKernel<4, false, 0, false, 2>)
                            : reinterpret_cast<const void*>(SkinnyGemmKernel<8, false, 0, false, 2>);
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kWarps * 32, 0) != cudaSuccess || per_sm < 1) per_sm = 1;
  return sms * per_sm;
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int Split(int split, int64_t n, int64_t in, int64_t tiles, int variant) {
  return split > 0 ? split : SkinnyGemmAutoSplit(n, in, tiles * kRows, variant);
}

absl::Status Run(bool glu, const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                 float alpha, float beta, int act, CUstream_st* stream, int split, int prefetch) {
  const int64_t tiles = (out + (glu ? kRows / 2 : kRows) - 1) / (glu ? kRows / 2 : kRows);
  const int variant = prefetch < 0 ? DefaultVariant() : prefetch;
  if (variant >= kSkinnyGemmVariants) return absl::InvalidArgumentError("SkinnyGemm: no such launch variant");
  split = Split(split, n, in, tiles, variant);
  if (split != 1 && split != 2 && split != 4 && split != 8)
    return absl::InvalidArgumentError("SkinnyGemm: split must be 1, 2, 4 or 8");
  const int64_t steps = in / kStep;
  Args a{static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w), in, out, static_cast<int>(n),
         (steps + split - 1) / split * kStep, y, y_f32, alpha, beta, act};
  SB_CUDA_RETURN_IF_ERROR(glu ? Dispatch<true>(static_cast<int>(n), variant, a, static_cast<int>(tiles), split, stream)
                              : Dispatch<false>(static_cast<int>(n), variant, a, static_cast<int>(tiles), split, stream));
  return absl::OkStatus();
}

}  // namespace

bool SkinnyGemmFits(int64_t n, int64_t in, const void* x, const void* w) {
  return n >= kSkinnyGemmMinRows && n <= kSkinnyGemmMaxRows && in > 0 && in % kStep == 0 && Aligned16(x) &&
         Aligned16(w);
}

int SkinnyGemmAutoSplit(int64_t n, int64_t in, int64_t weight_rows, int variant) {
  static std::atomic<int> slots[kSkinnyGemmMaxRows + 1][kSkinnyGemmVariants] = {};
  const int i = static_cast<int>(std::clamp<int64_t>(n, 1, kSkinnyGemmMaxRows));
  const int v = std::clamp(variant < 0 ? DefaultVariant() : variant, 0, kSkinnyGemmVariants - 1);
  int resident = slots[i][v].load(std::memory_order_relaxed);
  if (resident == 0) slots[i][v].store(resident = Slots(i, v), std::memory_order_relaxed);
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
