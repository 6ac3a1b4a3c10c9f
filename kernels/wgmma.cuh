// Hopper warpgroup MMA (wgmma, sm_90a) for the stick-breaking kernels: shared-memory matrix
// descriptors of the 128-byte swizzled layout, the fences and groups that order the asynchronous
// MMAs, and the two m64n64k16 bf16 forms the prefill uses (A and B in shared memory; A in
// registers with B transposed).
//
// The 128-byte swizzled layout: rows of 128 bytes (64 bf16), 8-row atoms of 1024 bytes starting at
// 1024-byte aligned addresses, 16-byte chunk c of row r stored at r * 128 + ((c ^ (r % 8)) * 16).
// Sw128Offset gives that offset; the tensor cores undo the XOR on the absolute address.
#pragma once

#include <cstdint>

// wgmma exists only in the arch-specific sm_90a target; other targets compile the kernels that
// use it to a trap, and the host never launches those (SbAttnPrefillUsesWgmma).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SB_HAS_WGMMA 1
#else
#define SB_HAS_WGMMA 0
#endif

namespace sbserve::kernels::device {

__device__ __forceinline__ int Sw128Offset(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// Descriptor of a matrix in the 128-byte swizzled layout starting at shared address `addr`.
// K-major operands (rows along M or N, 64 elements of K per row): lbo is unused, sbo = 1024 (the
// step between 8-row atoms). MN-major operands (rows along K, 64 elements of M or N per row): lbo
// = the step between 64-column blocks of M or N, sbo = the step between 8-row atoms along K.
__device__ __forceinline__ uint64_t SmemDescSw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = (addr & 0x3FFFFu) >> 4;
  d |= static_cast<uint64_t>((lbo >> 4) & 0x3FFFu) << 16;
  d |= static_cast<uint64_t>((sbo >> 4) & 0x3FFFu) << 32;
  d |= uint64_t{1} << 62;  // 128-byte swizzle
  return d;
}

#if SB_HAS_WGMMA
// Orders earlier register writes (accumulators, A fragments) before the next wgmma.
__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Returns once at most kPending of this warpgroup's committed groups are still running.
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
#else
__device__ __forceinline__ void WgmmaFence() { __trap(); }
__device__ __forceinline__ void WgmmaCommit() { __trap(); }
template <int kPending>
__device__ __forceinline__ void WgmmaWait() { __trap(); }
#endif

// Shared memory written through the generic proxy (st.shared, cp.async) is made visible to the
// tensor cores' async proxy: each writing thread fences before the barrier that publishes it.
__device__ __forceinline__ void FenceProxyAsyncShared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();  // no async proxy before sm_90; the wgmma kernels never run there
#endif
}

// mbarriers and TMA tensor loads (sm_90a builds only, like wgmma): a transaction barrier counts
// the bytes its loads still owe; a phase completes when its arrivals and its bytes are both in.
#if SB_HAS_WGMMA
__device__ __forceinline__ void MbarInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes initialized barriers visible to the async proxy (the TMA unit) before its first load.
__device__ __forceinline__ void FenceMbarInit() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Returns once the phase of parity `parity` has completed.
__device__ __forceinline__ void MbarWait(uint32_t bar, int parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "SB_MBAR_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra SB_MBAR_WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Box (c0, c1, c2) of the 3-d tensor map at `map` (a __grid_constant__ parameter) to shared
// address dst; its bytes complete on barrier bar.
__device__ __forceinline__ void TmaLoad3d(uint32_t dst, const void* map, int c0, int c1, int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
#else
__device__ __forceinline__ void MbarInit(uint32_t, int) { __trap(); }
__device__ __forceinline__ void FenceMbarInit() { __trap(); }
__device__ __forceinline__ void MbarArrive(uint32_t) { __trap(); }
__device__ __forceinline__ void MbarArriveExpectTx(uint32_t, int) { __trap(); }
__device__ __forceinline__ void MbarWait(uint32_t, int) { __trap(); }
__device__ __forceinline__ void TmaLoad3d(uint32_t, const void*, int, int, int, uint32_t) { __trap(); }
#endif

// Pins registers at this point of the instruction stream: code that reads wgmma accumulators
// after a wait, or writes operands before an issue, cannot be moved across it.
template <int kN, int kM>
__device__ __forceinline__ void FenceRegs(float (&r)[kN][kM]) {
#pragma unroll
  for (int i = 0; i < kN; ++i)
#pragma unroll
    for (int j = 0; j < kM; ++j) asm volatile("" : "+f"(r[i][j])::"memory");
}
template <int kN, int kM>
__device__ __forceinline__ void FenceRegs(uint32_t (&r)[kN][kM]) {
#pragma unroll
  for (int i = 0; i < kN; ++i)
#pragma unroll
    for (int j = 0; j < kM; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

#define SB_WGMMA_D32 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SB_WGMMA_D4(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define SB_WGMMA_D32_OPERANDS(d)                                                                        \
  SB_WGMMA_D4(d, 0), SB_WGMMA_D4(d, 1), SB_WGMMA_D4(d, 2), SB_WGMMA_D4(d, 3), SB_WGMMA_D4(d, 4), \
      SB_WGMMA_D4(d, 5), SB_WGMMA_D4(d, 6), SB_WGMMA_D4(d, 7)

// d (+)= A * B, m64n64k16, bf16 in, fp32 out; A (64 x 16) and B (16 x 64, stored as 64 rows of K)
// both K-major in shared memory. accumulate == 0 overwrites d. d[j][e]: n8 tile j, in the layout
// of an m16n8k16 accumulator of this warp's 16 rows.
__device__ __forceinline__ void WgmmaM64N64K16(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
#if SB_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " SB_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
      : SB_WGMMA_D32_OPERANDS(d)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#else
  __trap();
#endif
}

// d += A * B, m64n64k16, A (64 x 16) in registers (the m16n8k16 A fragment of this warp's 16
// rows), B (16 x 64) MN-major in shared memory (rows along K, transposed by the MMA).
__device__ __forceinline__ void WgmmaM64N64K16RegA(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b) {
#if SB_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " SB_WGMMA_D32
      ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : SB_WGMMA_D32_OPERANDS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
#else
  __trap();
#endif
}

// d += A * B, m64nNk16 for N = 8, 16, 32 or 64, bf16 in, fp32 out; A (64 x 16) and B (16 x N, stored
// as N rows of K) both K-major in shared memory, as WgmmaM64N64K16 (the skinny GEMMs of
// engine/cuda/skinny_gemm.cu, whose N is the batch's row count).
template <int kN>
__device__ __forceinline__ void WgmmaM64NK16(float (&d)[kN / 8][4], uint64_t desc_a, uint64_t desc_b) {
  static_assert(kN == 8 || kN == 16 || kN == 32 || kN == 64);
#if SB_HAS_WGMMA
  if constexpr (kN == 64) {
    WgmmaM64N64K16(d, desc_a, desc_b, 1);
  } else if constexpr (kN == 32) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
        "%12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : SB_WGMMA_D4(d, 0), SB_WGMMA_D4(d, 1), SB_WGMMA_D4(d, 2), SB_WGMMA_D4(d, 3)
        : "l"(desc_a), "l"(desc_b), "r"(1));
  } else if constexpr (kN == 16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, "
        "0, 0;\n}\n"
        : SB_WGMMA_D4(d, 0), SB_WGMMA_D4(d, 1)
        : "l"(desc_a), "l"(desc_b), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, %4, %5, p, 1, 1, 0, 0;\n}\n"
        : SB_WGMMA_D4(d, 0)
        : "l"(desc_a), "l"(desc_b), "r"(1));
  }
#else
  __trap();
#endif
}

#undef SB_WGMMA_D32
#undef SB_WGMMA_D4
#undef SB_WGMMA_D32_OPERANDS

}  // namespace sbserve::kernels::device
