// Device helpers shared by the stick-breaking attention kernels: asynchronous copies, ldmatrix,
// the m16n8k16 bf16 tensor-core MMA and the special-function approximations.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/sb_attn_params.h"

namespace sbserve::kernels::device {

// The paged cache slot of position pos of sequence b: its block's id (from the block table) times
// the block size, plus the offset in the block (block size 1 << log2_bs).
__device__ __forceinline__ int64_t CacheSlot(const SbKvCache& cache, int b, int pos, int log2_bs) {
  const int bs_mask = (1 << log2_bs) - 1;
  return static_cast<int64_t>(cache.block_tables[static_cast<int64_t>(b) * cache.max_blocks + (pos >> log2_bs)]) *
             (bs_mask + 1) + (pos & bs_mask);
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes == 0 fills the destination with zeros.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                           uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// D = A * B + D, m16n8k16, bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit (flushes denormal results to zero; 2^-inf = 0).
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float Rcp(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The same MMA when only rows 0-7 matter (A's rows 8-15 are zero): d[0], d[1] accumulate, and
// rows 8-15 of the result are discarded instead of being kept live in two more registers.
__device__ __forceinline__ void MmaBf16Rows8(float (&d)[2], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  [[maybe_unused]] float unused0, unused1;
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %12};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(unused0), "=f"(unused1)
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(d[0]), "f"(d[1]), "f"(0.f));
}

// Suffix products over the 4 lanes of a quad (lane tq = lane % 4, higher tq = newer keys) of each
// lane's product r: *excl = product over the lanes after this one, *all = product over the quad.
__device__ __forceinline__ void QuadSuffixProducts(float r, int tq, float* excl, float* all) {
  float incl = r;
  float sh = __shfl_down_sync(0xffffffffu, incl, 1, 4);
  if (tq < 3) incl *= sh;
  sh = __shfl_down_sync(0xffffffffu, incl, 2, 4);
  if (tq < 2) incl *= sh;
  float e = __shfl_down_sync(0xffffffffu, incl, 1, 4);
  *excl = tq == 3 ? 1.f : e;
  *all = __shfl_sync(0xffffffffu, incl, 0, 4);
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Unpacks 8 bf16 held in a uint4 into floats.
__device__ __forceinline__ void Bf16x8ToFloat(const uint4& v, float* out) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// GPU-scope acquire / release / relaxed accesses for flags published between CTAs of one launch.
__device__ __forceinline__ unsigned LoadAcquireGpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void StoreReleaseGpu(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ float LoadRelaxedGpu(const float* p) {
  float v;
  asm volatile("ld.relaxed.gpu.global.f32 %0, [%1];\n" : "=f"(v) : "l"(p) : "memory");
  return v;
}

constexpr float kLog2e = 1.4426950408889634f;

}  // namespace sbserve::kernels::device
