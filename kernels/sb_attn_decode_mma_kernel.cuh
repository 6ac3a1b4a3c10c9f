// Paged stick-breaking decode on the tensor cores (split kernel; the combine kernel is shared with
// sb_attn_decode_kernel.cuh, and so are the chunk partials, the early exit and the grid).
//
// A CTA owns one (sequence, kv head, group of kG <= 8 query heads, key chunk), like the CUDA-core
// kernel, but reads every key and value once for all kG heads through shared memory instead of
// once per lane group, and does the dot products and the weighted sum of values with m16n8k16
// MMAs whose rows are the kG query heads (rows kG..15 are zero):
//   S[h][key] = q_h . k_key          (A = q, rows = heads; B = K tile, ldmatrix)
//   o[h][:]  += w[h][key] * v_key    (A = weights in S's accumulator layout; B = V tile, ldmatrix.trans)
// That is ~6 warp instructions per key at d = 128 instead of ~70 (per-lane dot products, 16
// shuffles, 8 special-function ops, 32 FMAs), which bounded the CUDA-core kernel for GQA.
//
// Each of the 4 warps owns a contiguous quarter of the chunk (warp 0 the oldest keys) and streams
// it in tiles of 16 keys from the newest, through its own kStages-deep ring of cp.async copies, so
// a warp only synchronises with itself. The chunk's slice of the block table is staged in shared
// memory first, so no copy waits on a dependent table load.
//
// Key permutation inside a tile (as in the prefill kernel): column 8n + 2t + e of S (n-tile n, lane
// quad position t) is key 4t + 2n + e, so lane (g, t) holds the 4 consecutive keys 4t..4t+3 of head
// g. The weights are the exact recurrence of the CUDA-core kernel: per key t = 2^x, r = 1/(1+t),
// w = t r * (product of r over the newer keys), sequential inside the lane, a 4-lane suffix scan,
// and the running carry of the newer tiles. They enter the P V MMA as bf16 hi + lo parts (two MMAs),
// so their rounding stays ~2^-16 relative instead of bf16's 2^-9.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/sb_attn_decode_kernel.cuh"
#include "kernels/sb_attn_device.cuh"
#include "kernels/sb_attn_params.h"

#ifndef SB_DECODE_MMA_STAGES
#define SB_DECODE_MMA_STAGES 3
#endif

namespace sbserve::kernels {

template <int kHeadDim, int kG>
struct SbDecodeMmaTraits {
  static_assert(kG >= 1 && kG <= 8, "the MMA rows hold at most 8 heads (rows g of the m16 tile)");
  static constexpr int kWarps = kDecodeThreads / 32;  // 4, as the fold in DecodeWriteChunk
  static constexpr int kTileKeys = 16;
  static constexpr int kStages = SB_DECODE_MMA_STAGES;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per K or V row
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kTileBytes = kTileKeys * kRowBytes;
  static constexpr int kStageBytes = 2 * kTileBytes;  // K then V
  static constexpr int kWarpRingBytes = kStages * kStageBytes;
  static constexpr int kRingBytes = kWarps * kWarpRingBytes;
  // Block-table entries staged in shared memory: a chunk of up to 1024 keys at block size 1 plus
  // one for a chunk that straddles a block boundary. Larger forced chunks read the table from
  // global memory.
  static constexpr int kTableCap = 1026;
  static constexpr int kSmemBytes = kRingBytes + kTableCap * 4;
  // CTAs per SM that the shared memory allows (228 KB per SM, 1 KB reserved per CTA); registers
  // are capped to match.
#ifdef SB_DECODE_MMA_MIN_BLOCKS
  static constexpr int kMinBlocks = SB_DECODE_MMA_MIN_BLOCKS;
#else
  static constexpr int kMinBlocks = 228 * 1024 / (kSmemBytes + 1024) < 4 ? 228 * 1024 / (kSmemBytes + 1024) : 4;
#endif
  static_assert(kWarps * kG * (kHeadDim + 1) * 4 <= kRingBytes, "the fold buffer reuses the ring");
  static_assert(kStages >= 2);
};

// Swizzled 16-byte chunk of tile row `row` (key within the tile): the 8 rows that one ldmatrix
// reads under the key permutation ({0,1,4,5,8,9,12,13} + 0 or 2) land in 8 distinct bank groups.
__device__ __forceinline__ int DecodeKvSwizzle(int row) { return ((row >> 1) & 6) | (row & 1); }

template <int kHeadDim, int kG>
__global__ void __launch_bounds__(kDecodeThreads, SbDecodeMmaTraits<kHeadDim, kG>::kMinBlocks)
    sb_attn_decode_split_mma_kernel(const SbAttnDecodeParams p, const int log2_bs, const int keys_per_split,
                                    const int num_splits, float* __restrict__ o_part, float* __restrict__ p_part,
                                    unsigned* __restrict__ flags, unsigned* __restrict__ done) {
  using namespace device;
  using Tr = SbDecodeMmaTraits<kHeadDim, kG>;
  constexpr int kKC = kHeadDim / 16;  // k16 steps of q . k
  constexpr int kND = kHeadDim / 8;   // n8 tiles of o
  PdlWait();
  PdlLaunchDependents();

  const DecodeChunk ch = DecodeChunkOfCta<kG>(p, keys_per_split, num_splits, flags);
  if (!ch.valid) return;
  DecodeAppendNewKv<kHeadDim>(p, ch, log2_bs);
  if (ch.flag_row != nullptr && DecodeChunkIsCut<kG>(p, ch, p_part, num_splits)) return;
  const int b = ch.b, hk = ch.hk, h0 = ch.h0, k_begin = ch.k_begin, k_end = ch.k_end;
  const int H = p.num_heads;
  const int Hkv = p.num_kv_heads;

  extern __shared__ __align__(128) unsigned char smem[];
  int32_t* const table_s = reinterpret_cast<int32_t*>(smem + Tr::kRingBytes);
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;  // MMA row: head h0 + g when g < kG
  const int tq = lane % 4;

  const int32_t* block_table = p.cache.block_tables + static_cast<int64_t>(b) * p.cache.max_blocks;
  const int bs_mask = (1 << log2_bs) - 1;
  const int blk0 = k_begin >> log2_bs;
  const int n_blk = k_end > k_begin ? ((k_end - 1) >> log2_bs) - blk0 + 1 : 0;
  const bool table_in_smem = n_blk <= Tr::kTableCap;
  if (table_in_smem) {
    for (int i = tid; i < n_blk; i += kDecodeThreads) table_s[i] = block_table[blk0 + i];
  }

  // q as the A operand: a0 = row g, columns 16kc + 2tq..+1; a2 = columns 16kc + 8 + 2tq..+1; the
  // rows g + 8 (a1, a3) are zero.
  uint32_t qa[kKC][2];
  {
    const int qrow = p.q_rows != nullptr ? p.q_rows[b] : b;
    const int64_t q_stride = p.q_row_stride != 0 ? p.q_row_stride : static_cast<int64_t>(H) * kHeadDim;
    const __nv_bfloat16* q_h = static_cast<const __nv_bfloat16*>(p.q) + static_cast<int64_t>(qrow) * q_stride +
                               static_cast<int64_t>(h0 + (g < kG ? g : 0)) * kHeadDim;
#pragma unroll
    for (int kc = 0; kc < kKC; ++kc) {
      qa[kc][0] = g < kG ? *reinterpret_cast<const uint32_t*>(q_h + 16 * kc + 2 * tq) : 0u;
      qa[kc][1] = g < kG ? *reinterpret_cast<const uint32_t*>(q_h + 16 * kc + 8 + 2 * tq) : 0u;
    }
  }
  __syncthreads();  // the table slice

  const int per_warp = keys_per_split / Tr::kWarps;  // a multiple of 16
  const int w_begin = k_begin + warp * per_warp;
  const int w_end = min(k_end, w_begin + per_warp);
  const int n_tiles = w_end > w_begin ? (w_end - w_begin + Tr::kTileKeys - 1) / Tr::kTileKeys : 0;
  unsigned char* const ring = smem + warp * Tr::kWarpRingBytes;
  const uint4* k_cache = static_cast<const uint4*>(p.cache.k);
  const uint4* v_cache = static_cast<const uint4*>(p.cache.v);

  // Copies tile i (keys w_begin + 16i ..) into ring slot i % kStages; keys at or past w_end are
  // zero-filled (their weight is then exactly 0 and 0 * 0 adds nothing).
  auto load_tile = [&](int i) {
    unsigned char* k_dst = ring + (i % Tr::kStages) * Tr::kStageBytes;
    unsigned char* v_dst = k_dst + Tr::kTileBytes;
    const int key0 = w_begin + Tr::kTileKeys * i;  // a multiple of 16
    auto block_of = [&](int key) {
      return table_in_smem ? table_s[(key >> log2_bs) - blk0] : block_table[key >> log2_bs];
    };
    // Blocks of at least 16 keys hold the whole tile: one table entry for all its rows.
    const int64_t tile_row0 =
        log2_bs >= 4 ? static_cast<int64_t>(block_of(key0)) * (bs_mask + 1) + (key0 & bs_mask) : 0;
#pragma unroll
    for (int j = 0; j < Tr::kTileKeys * Tr::kChunks / 32; ++j) {
      const int idx = lane + 32 * j;
      const int row = idx / Tr::kChunks;
      const int c = idx % Tr::kChunks;
      const int key = key0 + row;
      const bool ok = key < w_end;
      int64_t off = 0;
      if (ok) {
        const int64_t slot_row = log2_bs >= 4 ? tile_row0 + row
                                              : static_cast<int64_t>(block_of(key)) * (bs_mask + 1) + (key & bs_mask);
        off = (slot_row * Hkv + hk) * Tr::kChunks + c;
      }
      const int soff = row * Tr::kRowBytes + ((c ^ DecodeKvSwizzle(row)) << 4);
      CpAsync16(SmemAddr(k_dst + soff), k_cache + off, ok ? 16 : 0);
      CpAsync16(SmemAddr(v_dst + soff), v_cache + off, ok ? 16 : 0);
    }
  };

#pragma unroll
  for (int s = 0; s < Tr::kStages - 1; ++s) {
    if (n_tiles - 1 - s >= 0) load_tile(n_tiles - 1 - s);
    CpAsyncCommit();
  }

  float acc[kND][2];  // o of head g, columns 8nd + 2tq, +1
#pragma unroll
  for (int nd = 0; nd < kND; ++nd) acc[nd][0] = acc[nd][1] = 0.f;
  float carry = 1.f;  // product of 1/(1+t) over the keys visited so far (head g)
  const float scale_log2 = p.scale * kLog2e;
  const int lm_mi = lane / 8;  // ldmatrix: matrix of this lane's row address
  const int lm_j = lane % 8;   // ... and its row in that matrix
  // Q K^T: matrix lm_mi is n-tile lm_mi >> 1, chunk 2kc + (lm_mi & 1); its row lm_j is S column
  // 8n + lm_j, i.e. key 4 (lm_j >> 1) + 2n + (lm_j & 1).
  const int qk_row = 4 * (lm_j >> 1) + 2 * (lm_mi >> 1) + (lm_j & 1);
  // P V: matrix lm_mi covers S columns 8 (lm_mi & 1) .. + 7 (keys, the k of the MMA) of d-tile
  // nd + (lm_mi >> 1); its row lm_j is column 8 (lm_mi & 1) + lm_j.
  const int pv_row = 4 * (lm_j >> 1) + 2 * (lm_mi & 1) + (lm_j & 1);

  for (int i = n_tiles - 1; i >= 0; --i) {
    if (i - (Tr::kStages - 1) >= 0) load_tile(i - (Tr::kStages - 1));
    CpAsyncCommit();
    CpAsyncWait<Tr::kStages - 1>();
    __syncwarp();
    const unsigned char* k_s = ring + (i % Tr::kStages) * Tr::kStageBytes;
    const unsigned char* v_s = k_s + Tr::kTileBytes;

    float s[2][2];  // rows g of the two n-tiles (rows g + 8 are zero heads)
#pragma unroll
    for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = 0.f;
#pragma unroll
    for (int kc = 0; kc < kKC; ++kc) {
      uint32_t b0, b1, b2, b3;
      LdMatrixX4(SmemAddr(k_s + qk_row * Tr::kRowBytes + (((2 * kc + (lm_mi & 1)) ^ DecodeKvSwizzle(qk_row)) << 4)),
                 b0, b1, b2, b3);
      MmaBf16Rows8(s[0], qa[kc][0], qa[kc][1], b0, b1);
      MmaBf16Rows8(s[1], qa[kc][0], qa[kc][1], b2, b3);
    }

    // Weights of this lane's keys 4tq + j (j = 2n + e: s[n][e]), newest first.
    const int key_lane0 = w_begin + Tr::kTileKeys * i + 4 * tq;
    float w[4];
    float lane_r = 1.f;
#pragma unroll
    for (int j = 3; j >= 0; --j) {
      float x = s[j >> 1][j & 1] * scale_log2;
      // x <= 64 keeps 1 + t finite; beyond that beta rounds to 1 anyway.
      x = key_lane0 + j < w_end ? fminf(x, 64.f) : -INFINITY;
      const float t = Exp2(x);
      const float r = Rcp(1.f + t);
      w[j] = t * r * lane_r;
      lane_r *= r;
    }
    float excl, tile_r;  // products over the newer lanes of the quad, and over the whole tile
    QuadSuffixProducts(lane_r, tq, &excl, &tile_r);
    const float scale_w = carry * excl;
    carry *= tile_r;
    uint32_t ph[2], pl[2];  // A operand, row g: keys 4tq, 4tq+1 (a0) and 4tq+2, 4tq+3 (a2)
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const float w0 = w[2 * n] * scale_w;
      const float w1 = w[2 * n + 1] * scale_w;
      const __nv_bfloat162 hi = __floats2bfloat162_rn(w0, w1);
      const float2 hf = __bfloat1622float2(hi);
      ph[n] = *reinterpret_cast<const uint32_t*>(&hi);
      pl[n] = PackBf16(w0 - hf.x, w1 - hf.y);
    }

    // Fully unrolled: unrolled by 2 (130 instead of 215 registers) it measured 64% instead of 91%
    // of copy bandwidth at 32 x 128, B = 64 on the H200 (tests/bench/kernels.md).
#pragma unroll
    for (int nd = 0; nd < kND; nd += 2) {
      uint32_t b0, b1, b2, b3;
      LdMatrixX4Trans(
          SmemAddr(v_s + pv_row * Tr::kRowBytes + (((nd + (lm_mi >> 1)) ^ DecodeKvSwizzle(pv_row)) << 4)), b0, b1,
          b2, b3);
      MmaBf16Rows8(acc[nd], ph[0], ph[1], b0, b1);
      MmaBf16Rows8(acc[nd], pl[0], pl[1], b0, b1);
      MmaBf16Rows8(acc[nd + 1], ph[0], ph[1], b2, b3);
      MmaBf16Rows8(acc[nd + 1], pl[0], pl[1], b2, b3);
    }
    __syncwarp();  // the ring slot of tile i is refilled next iteration
  }
  CpAsyncWait<0>();
  __syncthreads();  // every warp is done with its ring: reuse it for the fold

  float* const o_s = reinterpret_cast<float*>(smem);  // [4][kG][kHeadDim]
  float* const p_s = o_s + Tr::kWarps * kG * kHeadDim;  // [4][kG]
  if (g < kG) {
#pragma unroll
    for (int nd = 0; nd < kND; ++nd) {
      o_s[(warp * kG + g) * kHeadDim + 8 * nd + 2 * tq] = acc[nd][0];
      o_s[(warp * kG + g) * kHeadDim + 8 * nd + 2 * tq + 1] = acc[nd][1];
    }
    if (tq == 0) p_s[warp * kG + g] = carry;
  }
  __syncthreads();
  DecodeWriteChunk<kHeadDim, kG>(o_s, p_s, ch, H, num_splits, o_part, p_part);
  if (done != nullptr) DecodeFoldInSplit<kHeadDim, kG>(p, log2_bs, ch, num_splits, o_part, p_part, done);
}

}  // namespace sbserve::kernels
