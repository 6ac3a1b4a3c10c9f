// Varlen stick-breaking attention prefill over a paged KV cache (device code).
//
// One CTA owns kBlockM query rows of one sequence and one query head; each warp owns
// 16 * kMTiles rows. Key tiles of 64 are visited from the diagonal back to position 0 and carry,
// per row, the product of (1 - beta) over the keys already visited (all newer keys):
//   A_ij = t_j * prod_{j <= k < i} 1 / (1 + t_k),   t = 2^x, x = s * log2(e) * q_i . k_j,
//   rem_i = prod_{k < i} 1 / (1 + t_k).
// This is the product form of DESIGN.md section 1; it needs one 2^x per element instead of
// the three special-function ops (2^x, log2, 2^x) of the log-space form, which bound the
// kernel at d = 64.
//
// Key permutation. The S = Q K^T accumulator of an m16n8k16 MMA gives lane (g, t) (g = lane/4,
// t = lane%4) the columns 8n + 2t + {0,1} of each n8 tile n. Column 8n + 2t + e is fed key
// 16t + 2n + e, so each lane holds 16 consecutive keys of a row: the suffix products along the
// key axis become sequential products inside a lane plus a 4-lane scan. P V uses the same
// permutation for the rows of V; the gathers are free because ldmatrix takes one row address
// per lane.
//
// Inside a lane the 16 keys form 4 chunks of 4. Per chunk, exclusive prefix products
// pre_j = prod_{k<j} (1 + t_k) and one reciprocal of the full product give
// prod_{k>=j} 1/(1+t_k) = pre_j / prod: one reciprocal per 4 elements. x is clamped at 20 so a
// chunk's product stays below 2^81; a key with x > 20 then passes 1/(1 + 2^20) < 1e-6 of the
// older keys' weight instead of 1/(1 + 2^x). A chunk factor that underflows (1/prod >= 2^-81 times
// a carry below 2^-46) only drops weights below 2^-46.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/sb_attn_device.cuh"
#include "kernels/sb_attn_params.h"

namespace sbserve::kernels {

// What the prefill kernel reads, copied from SbAttnPrefillParams on the host. It stays within 128
// bytes: the full parameter block (136 bytes with the early-exit fields) made the compiler read
// the by-value kernel parameter through its address instead of keeping it in registers, which
// measured 1-3% slower on the H100 (tests/bench/kernels.md).
struct SbPrefillKernelParams {
  const void* q;
  const int32_t* cu_seqlens_q;
  const int32_t* context_lens;
  SbKvCache cache;
  const float* head_bias;
  void* o;
  float* rem;
  unsigned long long* early_exit_stats;
  int num_heads;
  int num_kv_heads;
  float scale;
  SbRemainder remainder;
  float early_exit_log_threshold;
  int q_row_stride;  // elements; 0: H * d (the host checks it fits an int)

  static SbPrefillKernelParams From(const SbAttnPrefillParams& p) {
    return {p.q,         p.cu_seqlens_q, p.context_lens, p.cache,     p.head_bias, p.o, p.rem, p.early_exit_stats,
            p.num_heads, p.num_kv_heads, p.scale,        p.remainder, p.early_exit_log_threshold,
            static_cast<int>(p.q_row_stride)};
  }
};
static_assert(sizeof(SbPrefillKernelParams) <= 128);

template <int kHeadDim_, int kNWarps_, int kMTiles_, int kMinBlocks_, bool kQInRegs_>
struct SbPrefillTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kMTiles = kMTiles_;  // m16 tiles per warp
  static constexpr int kMinBlocks = kMinBlocks_;
  // Q fragments held in registers for the whole CTA (true) or re-read from shared memory for
  // every key tile (false: fewer registers, more resident warps).
  static constexpr bool kQInRegs = kQInRegs_;
  static constexpr int kBlockM = 16 * kMTiles * kNWarps;
  static constexpr int kBlockN = 64;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kTileBytes = kBlockN * kRowBytes;
  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kSmemBytes = kQBytes + 2 * 2 * kTileBytes;  // Q + 2 stages of (K, V)
  static_assert(kHeadDim % 16 == 0);
  static_assert((kBlockN * kChunks) % kNThreads == 0);
};

// Shared-memory swizzle of a K/V tile row (key index within the tile): the 8 rows that one
// ldmatrix reads under the key permutation above are keys 16a + 2n + e (a < 4, e < 2), and this
// maps them to 8 distinct 16-byte bank groups.
__device__ __forceinline__ int KvSwizzle(int key) { return ((key >> 3) & 6) | (key & 1); }

// Turns one key tile of logits (S fragments, permuted key columns) into bf16 weights (the A
// operand of P V) and advances the per-row carry. row_pos0 = position of this lane's row g of
// m-tile 0; key0 = first key of this lane's 16.
template <int kMT, int kNT, bool kMask>
__device__ __forceinline__ void SbWeights(const float (&s)[kMT][kNT][4], uint32_t (&p_frag)[kMT][kNT / 2][4],
                                          float (&carry)[kMT][2], float scale_log2, int key0, int row_pos0, int tq) {
  using namespace device;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int pos = row_pos0 + 16 * mt + 8 * hf;
      float w[16];
      float chunk_r[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float prod = 1.f;
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int idx = 4 * c + jj;  // key key0 + idx
          float x = s[mt][idx >> 1][2 * hf + (idx & 1)] * scale_log2;
          if (kMask && key0 + idx >= pos) x = -INFINITY;
          const float t = Exp2(fminf(x, 20.f));
          w[idx] = t * prod;
          prod = fmaf(prod, t, prod);  // prod * (1 + t)
        }
        chunk_r[c] = Rcp(prod);
      }
      const float lane_r = (chunk_r[0] * chunk_r[1]) * (chunk_r[2] * chunk_r[3]);
      // Suffix products over the 4 lanes of the row (lane tq holds keys 16tq..16tq+15).
      float excl, tile_r;
      QuadSuffixProducts(lane_r, tq, &excl, &tile_r);
      float gc = carry[mt][hf] * excl;  // prod over keys newer than this lane's keys
#pragma unroll
      for (int c = 3; c >= 0; --c) {
        gc *= chunk_r[c];
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) w[4 * c + jj] *= gc;
      }
      carry[mt][hf] *= tile_r;
#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk) {
        // A operand of P V for key slice kk: n-tiles 2kk (cols 0-7) and 2kk+1 (cols 8-15).
        p_frag[mt][kk][hf] = PackBf16(w[2 * (2 * kk)], w[2 * (2 * kk) + 1]);
        p_frag[mt][kk][2 + hf] = PackBf16(w[2 * (2 * kk + 1)], w[2 * (2 * kk + 1) + 1]);
      }
    }
  }
}

// The rows and keys of a prefill CTA. Grid: (query head, sequence, row block), row blocks
// visited from the last (heaviest) one.
struct SbPrefillCta {
  int h, b, q_start, m0, ctx, pos0, rows_valid, n_tiles, hk;
};
// This CTA's rows (kBlockM per CTA, key tiles of kBlockN); false when its row block lies beyond
// its sequence. pos0: position of the first row; n_tiles covers keys 0 .. last position - 1.
template <int kBlockM, int kBlockN>
__device__ __forceinline__ bool SbPrefillCtaOf(const SbPrefillKernelParams& p, SbPrefillCta* c) {
  c->h = blockIdx.x;
  c->b = blockIdx.y;
  const int m_block = gridDim.z - 1 - blockIdx.z;
  c->q_start = p.cu_seqlens_q[c->b];
  const int q_len = p.cu_seqlens_q[c->b + 1] - c->q_start;
  c->m0 = m_block * kBlockM;
  if (c->m0 >= q_len) return false;
  c->ctx = p.context_lens[c->b];
  c->pos0 = c->ctx - q_len + c->m0;
  c->rows_valid = min(kBlockM, q_len - c->m0);
  c->n_tiles = (c->pos0 + c->rows_valid - 1 + kBlockN - 1) / kBlockN;
  c->hk = c->h / (p.num_heads / p.num_kv_heads);
  return true;
}

// 16-byte chunk c of query row `row` of the CTA (rows past the chunk read row 0: their copies are
// zero-filled).
template <int kD>
__device__ __forceinline__ const __nv_bfloat16* SbQChunk(const SbPrefillKernelParams& p, const SbPrefillCta& cta,
                                                         int row, int c) {
  const int64_t q_stride = p.q_row_stride != 0 ? p.q_row_stride : static_cast<int64_t>(p.num_heads) * kD;
  const int r = row < cta.rows_valid ? row : 0;
  return static_cast<const __nv_bfloat16*>(p.q) + static_cast<int64_t>(cta.q_start + cta.m0 + r) * q_stride +
         static_cast<int64_t>(cta.h) * kD + c * 8;
}

// The paged cache slot of key `key` of the sequence whose block table is `block_table`.
__device__ __forceinline__ int64_t SbKvSlot(const int32_t* block_table, int key, int log2_bs) {
  return static_cast<int64_t>(block_table[key >> log2_bs]) * (1 << log2_bs) + (key & ((1 << log2_bs) - 1));
}

// Element offset in the paged cache of 16-byte chunk c of the row of key `key`, KV head hk.
template <int kD>
__device__ __forceinline__ int64_t SbKvOffset(const int32_t* block_table, int key, int log2_bs, int num_kv_heads,
                                              int hk, int c) {
  return (SbKvSlot(block_table, key, log2_bs) * num_kv_heads + hk) * kD + c * 8;
}

// Epilogue of a prefill CTA: adds the remainder term rem * (own value | head bias) to each row's
// weighted sum and stores o (bf16) and rem. acc_o and carry hold this warp's kMT m16 tiles in the
// m16n8k16 accumulator layout (CTA rows warp_row0 + 16 mt + g and + 8).
template <int kD, int kMT>
__device__ __forceinline__ void SbPrefillStoreRows(const SbPrefillKernelParams& p, const SbPrefillCta& cta,
                                                   const float (&acc_o)[kMT][kD / 8][4], const float (&carry)[kMT][2],
                                                   int warp_row0, int g, int tq, const int32_t* block_table,
                                                   int log2_bs) {
  using namespace device;
  constexpr int kND = kD / 8;
  const int H = p.num_heads;
  const int h = cta.h;
  const int Hkv = p.num_kv_heads;
  const __nv_bfloat16* v_cache = static_cast<const __nv_bfloat16*>(p.cache.v);
  __nv_bfloat16* o_g = static_cast<__nv_bfloat16*>(p.o);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = warp_row0 + 16 * mt + g + 8 * hf;
      if (row >= cta.rows_valid) continue;
      const int64_t qrow = cta.q_start + cta.m0 + row;
      const float rem = carry[mt][hf];
      const __nv_bfloat16* extra = nullptr;
      const float* bias = nullptr;
      if (p.remainder == SbRemainder::kOwnValue) {
        extra = v_cache + SbKvOffset<kD>(block_table, cta.pos0 + row, log2_bs, Hkv, cta.hk, 0);
      } else if (p.remainder == SbRemainder::kHeadBias) {
        bias = p.head_bias + static_cast<int64_t>(h) * kD;
      }
      __nv_bfloat16* dst = o_g + (qrow * H + h) * kD;
#pragma unroll
      for (int nd = 0; nd < kND; ++nd) {
        const int col = 8 * nd + 2 * tq;
        float o0 = acc_o[mt][nd][2 * hf];
        float o1 = acc_o[mt][nd][2 * hf + 1];
        if (extra != nullptr) {
          const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(extra + col));
          o0 = fmaf(rem, v.x, o0);
          o1 = fmaf(rem, v.y, o1);
        } else if (bias != nullptr) {
          o0 = fmaf(rem, bias[col], o0);
          o1 = fmaf(rem, bias[col + 1], o1);
        }
        *reinterpret_cast<uint32_t*>(dst + col) = PackBf16(o0, o1);
      }
      if (p.rem != nullptr && tq == 0) p.rem[qrow * H + h] = rem;
    }
}

// kEarlyExit: compiled separately so that the default path keeps its registers and code.
template <typename Tr, bool kEarlyExit>
__global__ void __launch_bounds__(Tr::kNThreads, Tr::kMinBlocks)
    sb_attn_prefill_bf16_kernel(const SbPrefillKernelParams p, const int log2_bs) {
  using namespace device;
  constexpr int kD = Tr::kHeadDim;
  constexpr int kMT = Tr::kMTiles;
  constexpr int kNT = Tr::kBlockN / 8;  // n8 tiles of S per key tile
  constexpr int kKC = kD / 16;          // k16 steps of Q K^T
  constexpr int kND = kD / 8;           // n8 tiles of O

  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* q_smem = smem;
  unsigned char* kv_smem = smem + Tr::kQBytes;  // stage s: K at 2s, V at 2s+1

  SbPrefillCta cta;
  if (!SbPrefillCtaOf<Tr::kBlockM, Tr::kBlockN>(p, &cta)) return;
  const int ctx = cta.ctx, pos0 = cta.pos0, rows_valid = cta.rows_valid, n_tiles = cta.n_tiles, hk = cta.hk;
  const int Hkv = p.num_kv_heads;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
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
    CpAsync16(SmemAddr(q_smem + row * Tr::kRowBytes + ((c ^ (row & 7)) << 4)), SbQChunk<kD>(p, cta, row, c),
              row < rows_valid ? 16 : 0);
  }

  auto load_kv = [&](int n, int stage) {
    unsigned char* k_dst = kv_smem + (2 * stage) * Tr::kTileBytes;
    unsigned char* v_dst = kv_smem + (2 * stage + 1) * Tr::kTileBytes;
#pragma unroll
    for (int i = 0; i < Tr::kBlockN * Tr::kChunks / Tr::kNThreads; ++i) {
      const int idx = tid + i * Tr::kNThreads;
      const int row = idx / Tr::kChunks;
      const int c = idx % Tr::kChunks;
      const int key = n * Tr::kBlockN + row;
      const bool ok = key < ctx;
      const int64_t off = ok ? SbKvOffset<kD>(block_table, key, log2_bs, Hkv, hk, c) : 0;
      const int soff = row * Tr::kRowBytes + ((c ^ KvSwizzle(row)) << 4);
      CpAsync16(SmemAddr(k_dst + soff), k_cache + off, ok ? 16 : 0);
      CpAsync16(SmemAddr(v_dst + soff), v_cache + off, ok ? 16 : 0);
    }
  };

  if (n_tiles > 0) load_kv(n_tiles - 1, 0);
  CpAsyncCommit();

  float acc_o[kMT][kND][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nd = 0; nd < kND; ++nd)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][nd][e] = 0.f;
  float carry[kMT][2];  // prod of 1/(1+t) over the keys visited so far, rows g and g+8
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) carry[mt][0] = carry[mt][1] = 1.f;

  const int warp_row0 = warp * 16 * kMT;
  const float scale_log2 = p.scale * kLog2e;

  // ldmatrix lane roles: matrix mi = lane / 8, row j = lane % 8.
  const int lm_mi = lane / 8;
  const int lm_j = lane % 8;

  uint32_t q_frag[kMT][Tr::kQInRegs ? kKC : 1][4];
  auto load_q_frag = [&](int kc, uint32_t (&dst)[kMT][Tr::kQInRegs ? kKC : 1][4], int slot) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int row = warp_row0 + 16 * mt + lm_j + 8 * (lm_mi & 1);
      const int c = 2 * kc + (lm_mi >> 1);
      LdMatrixX4(SmemAddr(q_smem + row * Tr::kRowBytes + ((c ^ lm_j) << 4)), dst[mt][slot][0], dst[mt][slot][1],
                 dst[mt][slot][2], dst[mt][slot][3]);
    }
  };

  // Early exit: the CTA stops once every valid row's carry (e^-acc) is below e^-tau; the tile
  // then in flight is waited for below and dropped.
  const float exit_carry = kEarlyExit ? __expf(-p.early_exit_log_threshold) : 0.f;
  int tiles_done = n_tiles;
  for (int it = 0; it < n_tiles; ++it) {
    const int n = n_tiles - 1 - it;
    const int stage = it & 1;
    CpAsyncWait<0>();
    if constexpr (kEarlyExit) {
      bool below = true;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
          below = below && (warp_row0 + 16 * mt + g + 8 * hf >= rows_valid || carry[mt][hf] < exit_carry);
      if (__syncthreads_and(it > 0 && below)) {
        tiles_done = it;
        break;
      }
    } else {
      __syncthreads();
    }
    if (Tr::kQInRegs && it == 0) {
#pragma unroll
      for (int kc = 0; kc < kKC; ++kc) load_q_frag(kc, q_frag, Tr::kQInRegs ? kc : 0);
    }
    if (n > 0) load_kv(n - 1, stage ^ 1);
    CpAsyncCommit();

    const unsigned char* k_s = kv_smem + (2 * stage) * Tr::kTileBytes;
    const unsigned char* v_s = kv_smem + (2 * stage + 1) * Tr::kTileBytes;

    // ---- S = Q K^T (permuted key columns) ----
    float s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
    {
      // Lane supplies the row of S column 8 * nt + lm_j of n-tile nt = nt0 + (lm_mi >> 1):
      // key 16 * (lm_j >> 1) + 2 * nt + (lm_j & 1), whose swizzle is lm_j.
      const int key_base = 16 * (lm_j >> 1) + (lm_j & 1) + 2 * (lm_mi >> 1);
      const int xo = (lm_mi & 1) ^ lm_j;
#pragma unroll
      for (int kc = 0; kc < kKC; ++kc) {
        if constexpr (!Tr::kQInRegs) load_q_frag(kc, q_frag, 0);
        const int qs = Tr::kQInRegs ? kc : 0;
#pragma unroll
        for (int nt = 0; nt < kNT; nt += 2) {
          uint32_t b0, b1, b2, b3;
          LdMatrixX4(SmemAddr(k_s + (key_base + 2 * nt) * Tr::kRowBytes + (((2 * kc) ^ xo) << 4)), b0, b1,
                     b2, b3);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            MmaBf16(s[mt][nt], q_frag[mt][qs], b0, b1);
            MmaBf16(s[mt][nt + 1], q_frag[mt][qs], b2, b3);
          }
        }
      }
    }

    // ---- break probabilities, suffix products, weights ----
    // Only tiles that reach a row's own position need the causal mask; the others take a
    // mask-free copy of the same code.
    const int key0 = n * Tr::kBlockN + 16 * tq;  // this lane's first key
    uint32_t p_frag[kMT][kNT / 2][4];
    if (n * Tr::kBlockN + Tr::kBlockN - 1 >= pos0)
      SbWeights<kMT, kNT, true>(s, p_frag, carry, scale_log2, key0, pos0 + warp_row0 + g, tq);
    else
      SbWeights<kMT, kNT, false>(s, p_frag, carry, scale_log2, key0, pos0 + warp_row0 + g, tq);

    // ---- O += P V ----
    {
      // Row r of key-slice kk is key 16 * ((r & 7) >> 1) + 4 * kk + 2 * (r >> 3) + (r & 1);
      // lane supplies r = lm_j + 8 * (lm_mi & 1) of d-tile nd + (lm_mi >> 1). Swizzle is lm_j.
      const int key_base = 16 * (lm_j >> 1) + (lm_j & 1) + 2 * (lm_mi & 1);
#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk)
#pragma unroll
        for (int nd = 0; nd < kND; nd += 2) {
          uint32_t b0, b1, b2, b3;
          LdMatrixX4Trans(
              SmemAddr(v_s + (key_base + 4 * kk) * Tr::kRowBytes + (((nd + (lm_mi >> 1)) ^ lm_j) << 4)), b0,
              b1, b2, b3);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            MmaBf16(acc_o[mt][nd], p_frag[mt][kk], b0, b1);
            MmaBf16(acc_o[mt][nd + 1], p_frag[mt][kk], b2, b3);
          }
        }
    }
  }
  CpAsyncWait<0>();
  if (kEarlyExit && tiles_done < n_tiles) {
    // The skipped keys and the remainder carry less than e^-tau together: both are dropped.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) carry[mt][0] = carry[mt][1] = 0.f;
  }
  if (kEarlyExit && p.early_exit_stats != nullptr && tid == 0) {
    atomicAdd(p.early_exit_stats, static_cast<unsigned long long>(n_tiles - tiles_done));
    atomicAdd(p.early_exit_stats + 1, static_cast<unsigned long long>(n_tiles));
  }

  // ---- epilogue: remainder term, o and rem ----
  SbPrefillStoreRows<kD, kMT>(p, cta, acc_o, carry, warp_row0, g, tq, block_table, log2_bs);
}

}  // namespace sbserve::kernels
