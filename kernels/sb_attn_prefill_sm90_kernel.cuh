// Varlen stick-breaking attention prefill for Hopper (sm_90a): the recurrence and the key
// permutation of sb_attn_prefill_kernel.cuh, with warpgroup MMAs (wgmma) that run asynchronously
// beside the weight step.
//
// One warpgroup (4 warps) owns 64 query rows; a CTA holds kWarpGroups of them, which share the K/V
// tiles. Per 64-key tile:
//   S = Q K^T   wgmma m64n64k16, Q and K from shared memory;
//   weights     SbWeights on the S accumulators (which have the m16n8k16 layout per warp);
//   O += P V    wgmma m64n64k16 with P from registers and V from shared memory.
// The MMAs are issued one tile ahead: while the warps compute the weights of tile i on the
// special-function and FMA pipes, the tensor cores run P V of tile i - 1 and S of tile i + 1
// (two S buffers and two P buffers, the loop unrolled by two so that both stay in registers).
//
// Key permutation in shared memory. S column 8n + 2t + e (lane t = lane % 4) must hold key
// 16t + 2n + e of the tile, so that each lane holds 16 consecutive keys; with wgmma the B operand
// is read from shared memory by row, so the loader writes key k of a tile to row SbKeyRow(k) of
// both the K and the V tile. P's k index is the S column, so P V reads V in the same row order.
//
// Pipeline: every thread loads with cp.async (one commit group per tile, kStages stages); the
// barrier at the top of iteration i publishes tile i + 1 and frees the stage of tile i - 2, whose
// P V every thread waited for at the end of iteration i - 1.
//
// TMA variant (kTma, the -tma kernels): the first tile visited (the one that may end inside the
// context, loaded with zero fill) still comes through cp.async with Q; every later tile is loaded
// by warp 0 alone, each lane issuing two TMA boxes of 2 keys x 64 dims (its key pair in K and in V)
// to the rows SbKeyRow gives them, the TMA unit applying the 128-byte swizzle. A transaction
// barrier per stage tells the other warps that a tile is in; the barrier at the top of iteration i
// still frees the stage that warp 0 refills right after it. The consumer warps issue no loads and
// read no block table.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/sb_attn_device.cuh"
#include "kernels/sb_attn_params.h"
#include "kernels/sb_attn_prefill_kernel.cuh"
#include "kernels/wgmma.cuh"

namespace sbserve::kernels {

template <int kHeadDim_, int kWarpGroups_, int kStages_, int kMinBlocks_>
struct SbPrefillSm90Traits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarpGroups = kWarpGroups_;
  static constexpr int kStages = kStages_;
  static constexpr int kMinBlocks = kMinBlocks_;
  static constexpr int kNThreads = 128 * kWarpGroups;
  static constexpr int kBlockM = 64 * kWarpGroups;
  static constexpr int kBlockN = 64;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  // Rows are stored as kHeadDim / 64 column blocks of 128-byte swizzled rows: block cb of a tile
  // of R rows starts at cb * R * 128.
  static constexpr int kColBlocks = kHeadDim / 64;
  static constexpr int kTileBytes = kBlockN * kHeadDim * 2;
  static constexpr int kQTileBytes = 64 * kHeadDim * 2;  // one warpgroup's rows
  static constexpr int kQBytes = kWarpGroups * kQTileBytes;
  // + 1024: the dynamic shared memory is aligned up to the 1024 bytes of a swizzle atom; then
  // one 8-byte transaction barrier per stage (used by the TMA kernels only).
  static constexpr int kSmemBytes = 1024 + kQBytes + kStages * 2 * kTileBytes + 8 * kStages;
  // d = 128 (two column blocks) compiles and its tile layouts pass SbAttnWgmmaTile.Dim128, but the
  // kernel is launched only at d = 64: at d = 128 four stages of (K, V) leave one CTA per SM.
  static_assert(kHeadDim == 64 || kHeadDim == 128);
  static_assert(kStages >= 4, "tile i + 1 is waited for while tiles i - 1 and i are still read");
  // 16-byte chunks of a K (or V) tile and the loader passes over them (the last one partial when
  // the threads do not divide them, as with 3 warpgroups).
  static constexpr int kTileChunks = kBlockN * kChunks;
  static constexpr int kLoadPasses = (kTileChunks + kNThreads - 1) / kNThreads;
};

// Byte offset of 16-byte chunk c of row r in a tile of `rows` rows stored as 128-byte column blocks.
__device__ __forceinline__ int SbTileOffset(int r, int c, int rows) {
  return (c >> 3) * rows * 128 + device::Sw128Offset(r, c & 7);
}

// wgmma descriptors of the tiles above. K-major (Q, K): k16 step kc (d = 16 kc ..) of a tile of
// `rows` rows. MN-major (V): keys 16 kk .. 16 kk + 15 (two 8-row atoms) of column block cb.
__device__ __forceinline__ uint64_t SbKMajorDesc(uint32_t tile, int kc, int rows) {
  return device::SmemDescSw128(tile + (kc / 4) * rows * 128 + 32 * (kc % 4), 16, 1024);
}
__device__ __forceinline__ uint64_t SbVDesc(uint32_t tile, int kk, int cb, int rows) {
  return device::SmemDescSw128(tile + cb * rows * 128 + 16 * kk * 128, 1024, 1024);
}

// Shared-memory row of key k (0..63) of a tile: the S column 8n + 2t + e that must hold it, for
// k = 16t + 2n + e (see above).
__host__ __device__ constexpr int SbKeyRow(int k) { return 8 * ((k >> 1) & 7) + 2 * (k >> 4) + (k & 1); }
// Its inverse: the key held by row (S column) c = 8n + 2t + e.
__host__ __device__ constexpr int SbKeyOfRow(int c) { return 16 * ((c >> 1) & 3) + 2 * (c >> 3) + (c & 1); }
constexpr bool SbKeyRowIsThePermutation() {
  for (int c = 0; c < 64; ++c)
    if (SbKeyRow(SbKeyOfRow(c)) != c) return false;
  return true;
}
static_assert(SbKeyRowIsThePermutation());
// The TMA kernels load keys 2l and 2l + 1 as one box of two consecutive rows starting at an even row.
constexpr bool SbKeyPairsAreRowPairs() {
  for (int l = 0; l < 32; ++l)
    if (SbKeyRow(2 * l) % 2 != 0 || SbKeyRow(2 * l + 1) != SbKeyRow(2 * l) + 1) return false;
  return true;
}
static_assert(SbKeyPairsAreRowPairs());

// SB_PREFILL_SM90_ABLATE (measurement builds only; results are wrong): 1 replaces the weight step
// by a plain bf16 conversion, 2 computes S of the first tile only and no P V, 3 loads only the first key tile.
// Each leaves one stage out so that its share of the time can be measured.
#ifndef SB_PREFILL_SM90_ABLATE
#define SB_PREFILL_SM90_ABLATE 0
#endif

// The K and V caches as 3-d tensors (dims, KV heads, slots) for the TMA kernels, built on the host
// per launch (SbKvTmaMapsFor); boxes of 64 dims x 1 head x 2 slots, 128-byte swizzled.
struct SbKvTmaMaps {
  CUtensorMap k;
  CUtensorMap v;
};

template <typename Tr, bool kEarlyExit, bool kTma>
__device__ __forceinline__ void SbPrefillSm90(const SbPrefillKernelParams& p, const int log2_bs,
                                              const SbKvTmaMaps* maps) {
  static_assert(!(kTma && kEarlyExit), "an early exit would leave TMA loads unwaited");
  static_assert(!kTma || Tr::kHeadDim == 64, "one 128-byte box row per key");
#if SB_HAS_WGMMA
  using namespace device;
  constexpr int kD = Tr::kHeadDim;
  constexpr int kNT = Tr::kBlockN / 8;  // n8 tiles of S
  constexpr int kKC = kD / 16;          // k16 steps of Q K^T
  constexpr int kND = kD / 8;           // n8 tiles of O
  constexpr int kStages = Tr::kStages;

  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem =
      smem_raw + ((1024 - (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) & 1023)) & 1023);
  unsigned char* q_smem = smem;                 // one 64-row tile per warpgroup
  unsigned char* kv_smem = smem + Tr::kQBytes;  // stage s: K at 2s, V at 2s+1
  const uint32_t full_bar = SmemAddr(kv_smem + kStages * 2 * Tr::kTileBytes);  // stage s at + 8 s

  SbPrefillCta cta;
  if (!SbPrefillCtaOf<Tr::kBlockM, Tr::kBlockN>(p, &cta)) return;
  const int ctx = cta.ctx, pos0 = cta.pos0, rows_valid = cta.rows_valid, n_tiles = cta.n_tiles, hk = cta.hk;
  const int Hkv = p.num_kv_heads;

  const int tid = threadIdx.x;
  const int wg = tid / 128;
  const int warp_row0 = 64 * wg + 16 * ((tid / 32) % 4);
  const int lane = tid % 32;
  const int g = lane / 4;
  const int tq = lane % 4;

  const __nv_bfloat16* k_cache = static_cast<const __nv_bfloat16*>(p.cache.k);
  const __nv_bfloat16* v_cache = static_cast<const __nv_bfloat16*>(p.cache.v);
  const int32_t* block_table = p.cache.block_tables + static_cast<int64_t>(cta.b) * p.cache.max_blocks;

  // ---- Q tile -> shared memory (rows beyond the chunk are zero) ----
  for (int i = tid; i < Tr::kBlockM * Tr::kChunks; i += Tr::kNThreads) {
    const int row = i / Tr::kChunks;
    const int c = i % Tr::kChunks;
    CpAsync16(SmemAddr(q_smem + (row / 64) * Tr::kQTileBytes + SbTileOffset(row % 64, c, 64)),
              SbQChunk<kD>(p, cta, row, c), row < rows_valid ? 16 : 0);
  }

  // Key tile n (keys 64n ..) -> stage; key k of the tile goes to row SbKeyRow(k).
  auto load_kv = [&](int n, int stage) {
#if SB_PREFILL_SM90_ABLATE == 3
    if (n != n_tiles - 1) return;  // measurement variant: only the first tile is loaded
#endif
    unsigned char* k_dst = kv_smem + (2 * stage) * Tr::kTileBytes;
    unsigned char* v_dst = kv_smem + (2 * stage + 1) * Tr::kTileBytes;
#pragma unroll
    for (int i = 0; i < Tr::kLoadPasses; ++i) {
      const int idx = tid + i * Tr::kNThreads;
      if (Tr::kTileChunks % Tr::kNThreads != 0 && idx >= Tr::kTileChunks) break;
      const int row = idx / Tr::kChunks;
      const int c = idx % Tr::kChunks;
      const int key = n * Tr::kBlockN + row;
      const bool ok = key < ctx;
      const int64_t off = ok ? SbKvOffset<kD>(block_table, key, log2_bs, Hkv, hk, c) : 0;
      const int soff = SbTileOffset(SbKeyRow(row), c, Tr::kBlockN);
      CpAsync16(SmemAddr(k_dst + soff), k_cache + off, ok ? 16 : 0);
      CpAsync16(SmemAddr(v_dst + soff), v_cache + off, ok ? 16 : 0);
    }
  };
  // TMA kernels: visit j (j >= 1, a whole tile inside the context) by warp 0; lane l loads keys
  // 2l and 2l + 1 of the tile, rows SbKeyRow(2l) and SbKeyRow(2l) + 1, as one box of K and one of V.
  // Its stage's barrier completes phase j / kStages. The cache slot of the lane's key pair is read
  // from the block table one visit ahead (tma_slot), so that no TMA waits for that load.
  auto slot_of = [&](int j) {  // a TMA coordinate (SbAttnPrefillKernelFor: fewer than 2^31 slots)
    return static_cast<int>(SbKvSlot(block_table, (n_tiles - 1 - j) * Tr::kBlockN + 2 * lane, log2_bs));
  };
  auto load_kv_tma = [&](int j, int slot) {
    const int stage = j % kStages;
    const uint32_t bar = full_bar + 8 * stage;
    if (lane == 0) MbarArriveExpectTx(bar, 2 * Tr::kTileBytes);
    __syncwarp();
    const uint32_t row = SbKeyRow(2 * lane) * 128;
    TmaLoad3d(SmemAddr(kv_smem + (2 * stage) * Tr::kTileBytes) + row, &maps->k, 0, hk, slot, bar);
    TmaLoad3d(SmemAddr(kv_smem + (2 * stage + 1) * Tr::kTileBytes) + row, &maps->v, 0, hk, slot, bar);
  };
  // Visit order: iteration i reads key tile n_tiles - 1 - i from stage i % kStages. Commit group j
  // holds tile j (group 0 also Q); groups 0 .. kStages - 3 are issued here, group j + kStages - 2 at
  // iteration j. TMA kernels: only group 0; the barriers are set up, and stage 0's first phase (visit
  // 0, loaded by cp.async) completed, before warp 0 issues visits 1 .. kStages - 3.
  if (n_tiles > 0) load_kv(n_tiles - 1, 0);
  CpAsyncCommit();
  int tma_slot = 0;  // warp 0 of the TMA kernels: the slot of its key pair in the next visit to load
  if constexpr (kTma) {
    if (tid < 32) {
      if (tid == 0) {
        for (int s = 0; s < kStages; ++s) MbarInit(full_bar + 8 * s, 1);
        FenceMbarInit();
        FenceProxyAsyncShared();
        MbarArrive(full_bar);
      }
      __syncwarp();
      for (int j = 1; j <= kStages - 3 && j < n_tiles; ++j) load_kv_tma(j, slot_of(j));
      if (kStages - 2 < n_tiles) tma_slot = slot_of(kStages - 2);
    }
  } else {
#pragma unroll
    for (int j = 1; j <= kStages - 3; ++j) {
      if (j < n_tiles) load_kv(n_tiles - 1 - j, j);
      CpAsyncCommit();
    }
  }

  const uint32_t q_addr = SmemAddr(q_smem + wg * Tr::kQTileBytes);
  const uint32_t kv_addr = SmemAddr(kv_smem);
  auto issue_s = [&](float (&acc)[kNT][4], int stage) {
    const uint32_t k_addr = kv_addr + (2 * stage) * Tr::kTileBytes;
    WgmmaFence();
#pragma unroll
    for (int kc = 0; kc < kKC; ++kc)
      WgmmaM64N64K16(acc, SbKMajorDesc(q_addr, kc, 64), SbKMajorDesc(k_addr, kc, Tr::kBlockN), kc > 0);
    WgmmaCommit();
  };
  float acc_o[Tr::kColBlocks][8][4];  // d = 64 cb + ..: one m64n64 accumulator per column block
  auto issue_pv = [&](uint32_t (&pf)[1][kNT / 2][4], int stage) {
    const uint32_t v_addr = kv_addr + (2 * stage + 1) * Tr::kTileBytes;
    FenceRegs(pf[0]);
#if SB_PREFILL_SM90_ABLATE == 2
    return;
#endif
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kNT / 2; ++kk)  // keys (rows) 16 kk .. 16 kk + 15: two 8-row atoms
#pragma unroll
      for (int cb = 0; cb < Tr::kColBlocks; ++cb)
        WgmmaM64N64K16RegA(acc_o[cb], pf[0][kk], SbVDesc(v_addr, kk, cb, Tr::kBlockN));
    WgmmaCommit();
  };

#pragma unroll
  for (int cb = 0; cb < Tr::kColBlocks; ++cb) {
#pragma unroll
    for (int nd = 0; nd < 8; ++nd)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[cb][nd][e] = 0.f;
    FenceRegs(acc_o[cb]);
  }
  float carry[1][2] = {{1.f, 1.f}};  // prod of 1/(1+t) over the keys visited so far, rows g and g+8
  float s_acc[2][1][kNT][4];
  uint32_t p_frag[2][1][kNT / 2][4];
  const float scale_log2 = p.scale * kLog2e;
  const float exit_carry = kEarlyExit ? __expf(-p.early_exit_log_threshold) : 0.f;

  CpAsyncWait<kTma ? 0 : kStages - 3>();  // Q and tile 0
  FenceProxyAsyncShared();
  __syncthreads();
#if SB_PREFILL_SM90_ABLATE == 2
  for (int nt = 0; nt < kNT; ++nt)
    for (int e = 0; e < 4; ++e) s_acc[1][0][nt][e] = 0.f;  // never computed in this variant
#endif
  if (n_tiles > 0) {
    issue_s(s_acc[0][0], 0);
    WgmmaWait<0>();
    FenceRegs(s_acc[0][0]);
  }

  // One iteration on tile i, whose S sits in buffer kB; returns false when the CTA exits early.
  int tiles_done = n_tiles;
  auto step = [&](auto buf, int i) -> bool {
    constexpr int kB = decltype(buf)::value;
    if constexpr (kTma) {
      if (i + 1 < n_tiles) MbarWait(full_bar + 8 * ((i + 1) % kStages), ((i + 1) / kStages) & 1);  // tile i + 1
    } else {
      CpAsyncWait<kStages - 4>();  // tile i + 1
    }
    FenceProxyAsyncShared();
    if constexpr (kEarlyExit) {
      bool below = true;
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) below = below && (warp_row0 + g + 8 * hf >= rows_valid || carry[0][hf] < exit_carry);
      if (__syncthreads_and(i > 0 && below)) {
        tiles_done = i;
        return false;
      }
    } else {
      __syncthreads();
    }
    const int j = i + kStages - 2;
    if constexpr (kTma) {
      if (j < n_tiles && tid < 32) {
        load_kv_tma(j, tma_slot);
        if (j + 1 < n_tiles) tma_slot = slot_of(j + 1);
      }
    } else {
      if (j < n_tiles) load_kv(n_tiles - 1 - j, j % kStages);
      CpAsyncCommit();
    }
    if (i + 1 < n_tiles && SB_PREFILL_SM90_ABLATE != 2) issue_s(s_acc[kB ^ 1][0], (i + 1) % kStages);

    const int n = n_tiles - 1 - i;
    const int key0 = n * Tr::kBlockN + 16 * tq;  // this lane's first key
#if SB_PREFILL_SM90_ABLATE == 1
    // Measurement variant: P = bf16(S) instead of the weight step (wrong results).
#pragma unroll
    for (int kk = 0; kk < kNT / 2; ++kk)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        p_frag[kB][0][kk][e] = PackBf16(s_acc[kB][0][2 * kk + (e >> 1)][2 * (e & 1)] * scale_log2,
                                        s_acc[kB][0][2 * kk + (e >> 1)][2 * (e & 1) + 1]);
#else
    if (n * Tr::kBlockN + Tr::kBlockN - 1 >= pos0)
      SbWeights<1, kNT, true>(s_acc[kB], p_frag[kB], carry, scale_log2, key0, pos0 + warp_row0 + g, tq);
    else
      SbWeights<1, kNT, false>(s_acc[kB], p_frag[kB], carry, scale_log2, key0, pos0 + warp_row0 + g, tq);
#endif
    issue_pv(p_frag[kB], i % kStages);
    WgmmaWait<1>();  // S of tile i + 1 and P V of tile i - 1 are done
    FenceRegs(s_acc[kB ^ 1][0]);
    return true;
  };
  for (int i = 0; i < n_tiles; i += 2) {
    if (!step(std::integral_constant<int, 0>{}, i)) break;
    if (i + 1 < n_tiles && !step(std::integral_constant<int, 1>{}, i + 1)) break;
  }
  WgmmaWait<0>();
#pragma unroll
  for (int cb = 0; cb < Tr::kColBlocks; ++cb) FenceRegs(acc_o[cb]);
  CpAsyncWait<0>();
  if (kEarlyExit && tiles_done < n_tiles) carry[0][0] = carry[0][1] = 0.f;
  if (kEarlyExit && p.early_exit_stats != nullptr && tid == 0) {
    atomicAdd(p.early_exit_stats, static_cast<unsigned long long>(n_tiles - tiles_done));
    atomicAdd(p.early_exit_stats + 1, static_cast<unsigned long long>(n_tiles));
  }

  // The column blocks side by side are the m16n8k16 layout of all kD / 8 n8 tiles of O.
  SbPrefillStoreRows<kD, 1>(p, cta, reinterpret_cast<const float(&)[1][kND][4]>(acc_o), carry, warp_row0, g, tq,
                            block_table, log2_bs);
#else
  __trap();
#endif
}

template <typename Tr, bool kEarlyExit>
__global__ void __launch_bounds__(Tr::kNThreads, Tr::kMinBlocks)
    sb_attn_prefill_sm90_kernel(const SbPrefillKernelParams p, const int log2_bs) {
  SbPrefillSm90<Tr, kEarlyExit, false>(p, log2_bs, nullptr);
}

template <typename Tr>
__global__ void __launch_bounds__(Tr::kNThreads, Tr::kMinBlocks)
    sb_attn_prefill_sm90_tma_kernel(const SbPrefillKernelParams p, const int log2_bs,
                                    const __grid_constant__ SbKvTmaMaps maps) {
  SbPrefillSm90<Tr, false, true>(p, log2_bs, &maps);
}

}  // namespace sbserve::kernels
