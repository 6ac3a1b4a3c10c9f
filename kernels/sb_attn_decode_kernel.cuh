// Paged stick-breaking decode (device code): one query per sequence over its cached keys,
// split over key chunks, then an associative combine (DESIGN.md section 1).
//
// Split kernel: a CTA owns one (sequence, kv head, group of kG query heads, key chunk). Its
// chunk is cut into contiguous slot ranges, one per slot of d/8 lanes (4 slots per warp at
// d = 64, 2 at d = 128); a slot walks its keys from newest to oldest with the exact recurrence
//   o += t/(1+t) * P * v,   P *= 1/(1+t)          (t = 2^x, P = prod over newer keys of 1 - beta)
// so no scan is needed; each lane holds 8 elements of q, k, v and o (one 16-byte load per row). Slot, warp and chunk
// partials (o_c, P_c) combine as o = o_old * P_new + o_new, P = P_old * P_new, which is
// associative, so a single long sequence still fills the GPU.
//
// Early exit (params.early_exit_log_threshold = tau > 0; see sb_attn_params.h): per (sequence,
// query head) the combine walks the chunks from the newest and drops every chunk reached once the
// product P of the newer chunks is below e^-tau (and reports rem = 0). That cut depends only on
// the data, so the result does too. The split kernel then runs the newest chunks first (chunk
// index slowest in the grid) and publishes each chunk's P with a release flag; a CTA that starts
// after all chunks newer than it have published, and finds the same cut above it for each of its
// heads (same fp32 products in the same order), skips its keys. A CTA that cannot tell yet computes
// its chunk and the combine ignores it, so timing only changes the work done, never the output.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/pdl.h"
#include "kernels/sb_attn_device.cuh"
#include "kernels/sb_attn_params.h"

namespace sbserve::kernels {

constexpr int kDecodeThreads = 128;

// Keys each slot loads before using them, and the CTAs per SM the split kernel is built for.
// d = 128 with 4 query heads per CTA (32 heads on 8 KV heads) keeps 8 keys in flight per slot at
// 3 CTAs per SM (168 registers, as with 4 keys): B = 64 x 4096 took 0.407 instead of 0.438 ms,
// 8 x 8192 0.110 instead of 0.116 ms (H100, tests/bench/kernels.md). Elsewhere 4 keys: 8 would
// cost occupancy (d = 64 with one head per CTA: 72 -> 136 registers, 7 -> 3 CTAs per SM).
template <int kHeadDim, int kG>
struct SbDecodeTuning {
  static constexpr bool kDeep = kHeadDim == 128 && kG == 4;
  static constexpr int kUnroll = kDeep ? 8 : 4;
  static constexpr int kMinBlocks = kDeep ? 3 : 0;  // 0: no minimum (the compiler's choice)
};

constexpr int kCombineGroups = 4;                  // split ranges folded in parallel per (b, h)

// The (sequence, KV head, group of kG query heads, key chunk) of this CTA under the split grid:
// (num_splits, H / kG, B), or with the early exit (H / kG, B, num_splits) with the chunk counted
// from the newest. `valid` is false for a chunk past the sequence's keys.
struct DecodeChunk {
  int b, hk, h0, split, n_split_b, k_begin, k_end;
  unsigned* flag_row;  // this (sequence, head group)'s published-chunk flags; null without the early exit
  bool valid;
};

template <int kG>
__device__ __forceinline__ DecodeChunk DecodeChunkOfCta(const SbAttnDecodeParams& p, int keys_per_split,
                                                        int num_splits, unsigned* flags) {
  DecodeChunk c;
  const bool early_exit = flags != nullptr;
  const int hg = early_exit ? blockIdx.x : blockIdx.y;  // (kv head, group of kG query heads)
  c.b = early_exit ? blockIdx.y : blockIdx.z;
  const int G = p.num_heads / p.num_kv_heads;
  const int groups = G / kG;
  c.hk = hg / groups;
  c.h0 = c.hk * G + (hg % groups) * kG;
  const int n_keys = p.context_lens[c.b] - 1;  // keys 0 .. T - 2
  c.n_split_b = max(1, (n_keys + keys_per_split - 1) / keys_per_split);
  c.split = early_exit ? c.n_split_b - 1 - static_cast<int>(blockIdx.z) : static_cast<int>(blockIdx.x);
  c.valid = c.split >= 0 && c.split < c.n_split_b;
  c.k_begin = c.split * keys_per_split;
  c.k_end = min(n_keys, c.k_begin + keys_per_split);
  c.flag_row =
      early_exit ? flags + (static_cast<int64_t>(c.b) * (p.num_heads / kG) + hg) * num_splits : nullptr;
  return c;
}

// Sequence b's new K (v = false) or V row of KV head hk in k_new / v_new (SbAttnDecodeParams::k_new).
template <int kHeadDim>
__device__ __forceinline__ const __nv_bfloat16* DecodeNewKvRow(const SbAttnDecodeParams& p, int b, int hk, bool v) {
  const int64_t stride = p.kv_row_stride != 0 ? p.kv_row_stride : static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const int row = p.q_rows != nullptr ? p.q_rows[b] : b;
  return static_cast<const __nv_bfloat16*>(v ? p.v_new : p.k_new) + row * stride + static_cast<int64_t>(hk) * kHeadDim;
}

// The fused append (SbAttnDecodeParams::k_new): the CTA of the oldest chunk and the first group of
// query heads of each (sequence, KV head) copies that head's new K and V row into the cache slot of
// position T - 1, which no split CTA reads. Called by every thread before any may return.
template <int kHeadDim>
__device__ __forceinline__ void DecodeAppendNewKv(const SbAttnDecodeParams& p, const DecodeChunk& ch, int log2_bs) {
  constexpr int kVecs = kHeadDim / 8;  // 16-byte pieces of one head's row
  const int tid = static_cast<int>(threadIdx.x);
  if (p.k_new == nullptr || ch.split != 0 || ch.h0 != ch.hk * (p.num_heads / p.num_kv_heads) || tid >= 2 * kVecs)
    return;
  const int64_t slot = device::CacheSlot(p.cache, ch.b, p.context_lens[ch.b] - 1, log2_bs);
  const bool v = tid >= kVecs;
  const __nv_bfloat16* src = DecodeNewKvRow<kHeadDim>(p, ch.b, ch.hk, v);
  __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(v ? p.cache.v : p.cache.k) +
                       (slot * p.num_kv_heads + ch.hk) * kHeadDim;
  reinterpret_cast<uint4*>(dst)[tid % kVecs] = reinterpret_cast<const uint4*>(src)[tid % kVecs];
}

// Early exit: whether the combine will cut at or above this chunk for each of the CTA's kG heads
// (h0 ..), judged from the chunks newer than it that have published their P. Called by every
// thread of the CTA (it synchronises); counts the CTA in p.early_exit_stats.
template <int kG>
__device__ bool DecodeChunkIsCut(const SbAttnDecodeParams& p, const DecodeChunk& ch, const float* p_part,
                                 int num_splits) {
  using namespace device;
  const int tid = threadIdx.x;
  bool cut = true;
  if (tid < kG) {
    const float exit_carry = __expf(-p.early_exit_log_threshold);
    const float* p_row = p_part + (static_cast<int64_t>(ch.b) * p.num_heads + ch.h0 + tid) * num_splits;
    float prod = 1.f;
    for (int s = ch.n_split_b - 1; s > ch.split; --s) {
      if (prod < exit_carry || LoadAcquireGpu(ch.flag_row + s) == 0u) break;
      prod *= LoadRelaxedGpu(p_row + s);
    }
    cut = prod < exit_carry;
  }
  const bool skip = __syncthreads_and(cut);
  if (p.early_exit_stats != nullptr && tid == 0) {
    if (skip) atomicAdd(p.early_exit_stats, 1ull);
    atomicAdd(p.early_exit_stats + 1, 1ull);
  }
  return skip;
}

// Folds the 4 warps' partials of a chunk (o_s [4][kG][kHeadDim], p_s [4][kG], warp 0 the oldest
// keys; written and synchronised by the caller) into the chunk's partial of each head, and
// publishes the chunk's flag when ch.flag_row is set (early exit).
template <int kHeadDim, int kG>
__device__ void DecodeWriteChunk(const float* o_s, const float* p_s, const DecodeChunk& ch, int H, int num_splits,
                                 float* __restrict__ o_part, float* __restrict__ p_part) {
  using namespace device;
  const int tid = threadIdx.x;
  for (int e = tid; e < kG * kHeadDim; e += kDecodeThreads) {
    const int gi = e / kHeadDim;
    const int di = e % kHeadDim;
    float o = 0.f;
    float carry = 1.f;
#pragma unroll
    for (int w = 3; w >= 0; --w) {
      o = fmaf(o_s[(w * kG + gi) * kHeadDim + di], carry, o);
      carry *= p_s[w * kG + gi];
    }
    const int64_t idx = (static_cast<int64_t>(ch.b) * H + ch.h0 + gi) * num_splits + ch.split;
    o_part[idx * kHeadDim + di] = o;
    if (di == 0) p_part[idx] = carry;
  }
  if (ch.flag_row != nullptr) {
    __threadfence();
    __syncthreads();
    if (tid == 0) StoreReleaseGpu(ch.flag_row + ch.split, 1u);
  }
}

// Folds splits [lo, hi) of one (sequence, head) partial row (`base` = its index of split 0) into
// (o, carry), newest first, with loads issued in batches of 4 so that hundreds of splits do not
// serialise on memory latency. The loads go to L2 (ld.global.cg): in DecodeFoldInSplit the
// partials were written by other CTAs of the same grid, which this SM's L1 may hold stale lines of.
// The one fold order of the combine kernel and of DecodeFoldInSplit (the same bits either way).
template <int kHeadDim>
__device__ __forceinline__ void DecodeFoldRange(const float* o_part, const float* p_part, int64_t base, int lo,
                                                int hi, int di, float& o, float& carry) {
  o = 0.f;
  carry = 1.f;
  for (int s = hi - 1; s >= lo; s -= 4) {
    float ov[4], pv[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const bool ok = s - u >= lo;
      ov[u] = ok ? __ldcg(o_part + (base + s - u) * kHeadDim + di) : 0.f;
      pv[u] = ok ? __ldcg(p_part + base + s - u) : 1.f;
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      o = fmaf(ov[u], carry, o);
      carry *= pv[u];
    }
  }
}

// The splits [lo, hi) that fold group grp of kCombineGroups takes out of [s_lo, n_split_b).
__device__ __forceinline__ void DecodeCombineGroupRange(int s_lo, int n_split_b, int grp, int& lo, int& hi) {
  const int per = (n_split_b - s_lo + kCombineGroups - 1) / kCombineGroups;
  lo = s_lo + grp * per;
  hi = min(n_split_b, lo + per);
}

// Element di of head h's output from its folded chunks (o, carry = the product over every key):
// adds the remainder term, stores o (bf16) and rem. `cut`: the early exit dropped the older keys,
// and with them the remainder. own_v: the query token's own V row of head h's KV head (R1 only).
template <int kHeadDim>
__device__ __forceinline__ void DecodeFinishHead(const SbAttnDecodeParams& p, int b, int h, int di, float o,
                                                 float carry, bool cut, const __nv_bfloat16* own_v) {
  if (cut) carry = 0.f;
  if (p.remainder == SbRemainder::kOwnValue) {
    o = fmaf(carry, __bfloat162float(own_v[di]), o);
  } else if (p.remainder == SbRemainder::kHeadBias) {
    o = fmaf(carry, p.head_bias[static_cast<int64_t>(h) * kHeadDim + di], o);
  }
  const int qrow = p.q_rows != nullptr ? p.q_rows[b] : b;
  static_cast<__nv_bfloat16*>(p.o)[(static_cast<int64_t>(qrow) * p.num_heads + h) * kHeadDim + di] =
      __float2bfloat16(o);
  if (p.rem != nullptr && di == 0) p.rem[static_cast<int64_t>(qrow) * p.num_heads + h] = carry;
}

// The cache row of the query token's own V for KV head hk (position T - 1, appended before the call
// or by this call's split grid, which has completed by the combine kernel).
template <int kHeadDim>
__device__ __forceinline__ const __nv_bfloat16* DecodeOwnValueInCache(const SbAttnDecodeParams& p, int b, int hk,
                                                                       int log2_bs) {
  const int64_t slot = device::CacheSlot(p.cache, b, p.context_lens[b] - 1, log2_bs);
  return static_cast<const __nv_bfloat16*>(p.cache.v) + (slot * p.num_kv_heads + hk) * kHeadDim;
}

// The combine inside the split grid (no early exit): after writing its chunk's partials, each CTA
// counts itself in done[(b, head group)]; the last one of the sequence's n_split_b chunks (the only
// one, with a single chunk) folds every chunk of its kG heads exactly as the combine kernel does
// (same groups, same order: bitwise its result), finishes the heads and sets the counter back to
// zero for the next call. That saves the combine launch per layer and its wait on the split grid.
// R1's own value comes from v_new when the split grid appends it (another CTA may be writing the
// cache slot now), else from the cache.
template <int kHeadDim, int kG>
__device__ void DecodeFoldInSplit(const SbAttnDecodeParams& p, int log2_bs, const DecodeChunk& ch, int num_splits,
                                  const float* o_part, const float* p_part, unsigned* done) {
  __shared__ bool last;
  const int tid = static_cast<int>(threadIdx.x);
  if (ch.n_split_b > 1) {
    __threadfence();  // this CTA's partials are visible device-wide before it is counted
    __syncthreads();
    if (tid == 0) {
      unsigned* counter = done + static_cast<int64_t>(ch.b) * (p.num_heads / kG) + ch.h0 / kG;
      last = atomicAdd(counter, 1u) == static_cast<unsigned>(ch.n_split_b - 1);
      if (last) *counter = 0u;  // every chunk of this (sequence, head group) is counted
    }
    __syncthreads();
    if (!last) return;
    __threadfence();  // the other chunks' partials are read after their counts
  } else {
    __syncthreads();  // the CTA's own partials, written by other threads
  }
  const __nv_bfloat16* own_v = nullptr;
  if (p.remainder == SbRemainder::kOwnValue) {
    own_v = p.v_new != nullptr ? DecodeNewKvRow<kHeadDim>(p, ch.b, ch.hk, true)
                               : DecodeOwnValueInCache<kHeadDim>(p, ch.b, ch.hk, log2_bs);
  }
  for (int e = tid; e < kG * kHeadDim; e += kDecodeThreads) {
    const int h = ch.h0 + e / kHeadDim;
    const int di = e % kHeadDim;
    const int64_t base = (static_cast<int64_t>(ch.b) * p.num_heads + h) * num_splits;
    float o = 0.f;
    float carry = 1.f;
#pragma unroll
    for (int grp = kCombineGroups - 1; grp >= 0; --grp) {
      int lo, hi;
      DecodeCombineGroupRange(0, ch.n_split_b, grp, lo, hi);
      float og, cg;
      DecodeFoldRange<kHeadDim>(o_part, p_part, base, lo, hi, di, og, cg);
      o = fmaf(og, carry, o);
      carry *= cg;
    }
    DecodeFinishHead<kHeadDim>(p, ch.b, h, di, o, carry, false, own_v);
  }
}

// Partials: o_part [B, H, num_splits, d] fp32, p_part [B, H, num_splits] fp32; flags
// [B, H / kG, num_splits] (early exit only, zeroed before the launch; null otherwise); done
// [B * H / kG] (SbAttnDecodeParams::done_counters without the early exit: the last CTA of each
// (sequence, head group) folds the chunks itself, DecodeFoldInSplit; null: the combine kernel runs).
// Grid: (num_splits, H / kG, B), or with the early exit (H / kG, B, num_splits) with the chunk
// counted from the newest.
template <int kHeadDim, int kG>
__global__ void __launch_bounds__(kDecodeThreads, SbDecodeTuning<kHeadDim, kG>::kMinBlocks)
    sb_attn_decode_split_bf16_kernel(const SbAttnDecodeParams p, const int log2_bs, const int keys_per_split,
                                     const int num_splits, float* __restrict__ o_part, float* __restrict__ p_part,
                                     unsigned* __restrict__ flags, unsigned* __restrict__ done) {
  using namespace device;
  // Launched as a programmatic dependent (kernels/pdl.h): the cache and q come from the kernels
  // before. Then let the combine grid (a programmatic dependent launch) be scheduled as CTAs
  // retire; it waits for this grid's completion before reading the partials.
  PdlWait();
  PdlLaunchDependents();
  constexpr int kDpl = 8;                        // elements per lane
  constexpr int kVec = 1;                        // uint4 per lane per row
  constexpr int kLanesPerKey = kHeadDim / kDpl;  // 8 or 16
  constexpr int kSlotsPerWarp = 32 / kLanesPerKey;
  constexpr int kSlots = kSlotsPerWarp * (kDecodeThreads / 32);
  const DecodeChunk ch = DecodeChunkOfCta<kG>(p, keys_per_split, num_splits, flags);
  if (!ch.valid) return;
  DecodeAppendNewKv<kHeadDim>(p, ch, log2_bs);
  if (ch.flag_row != nullptr && DecodeChunkIsCut<kG>(p, ch, p_part, num_splits)) return;
  const int b = ch.b, hk = ch.hk, h0 = ch.h0, k_begin = ch.k_begin, k_end = ch.k_end;
  const int H = p.num_heads;
  const int Hkv = p.num_kv_heads;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int part = lane % kLanesPerKey;
  const int slot = tid / kLanesPerKey;  // 0 (oldest keys) .. kSlots - 1 (newest)
  const int slot_keys = keys_per_split / kSlots;
  const int s_begin = k_begin + slot * slot_keys;
  const int s_end = min(k_end, s_begin + slot_keys);

  const int qrow = p.q_rows != nullptr ? p.q_rows[b] : b;
  const __nv_bfloat16* q_g = static_cast<const __nv_bfloat16*>(p.q);
  const int64_t q_stride = p.q_row_stride != 0 ? p.q_row_stride : static_cast<int64_t>(H) * kHeadDim;
  const float scale_log2 = p.scale * kLog2e;
  float qf[kG][kDpl];
#pragma unroll
  for (int gi = 0; gi < kG; ++gi) {
    const uint4* src = reinterpret_cast<const uint4*>(q_g + static_cast<int64_t>(qrow) * q_stride +
                                                      static_cast<int64_t>(h0 + gi) * kHeadDim + part * kDpl);
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      Bf16x8ToFloat(src[v], &qf[gi][8 * v]);
#pragma unroll
      for (int i = 0; i < 8; ++i) qf[gi][8 * v + i] *= scale_log2;
    }
  }

  float acc[kG][kDpl];
  float P[kG];
#pragma unroll
  for (int gi = 0; gi < kG; ++gi) {
    P[gi] = 1.f;
#pragma unroll
    for (int i = 0; i < kDpl; ++i) acc[gi][i] = 0.f;
  }

  const uint4* k_cache = static_cast<const uint4*>(p.cache.k);
  const uint4* v_cache = static_cast<const uint4*>(p.cache.v);
  const int32_t* block_table = p.cache.block_tables + static_cast<int64_t>(b) * p.cache.max_blocks;
  const int bs_mask = (1 << log2_bs) - 1;

  // Every slot walks the same number of steps (the shuffles below need the whole warp); keys at
  // or past s_end are skipped without a load.
  for (int hi = s_begin + slot_keys; hi > s_begin; hi -= SbDecodeTuning<kHeadDim, kG>::kUnroll) {
    uint4 kr[SbDecodeTuning<kHeadDim, kG>::kUnroll][kVec];
    uint4 vr[SbDecodeTuning<kHeadDim, kG>::kUnroll][kVec];
#pragma unroll
    for (int u = 0; u < SbDecodeTuning<kHeadDim, kG>::kUnroll; ++u) {
      const int key = hi - 1 - u;
      if (key < s_end) {
        const int64_t slot_row = static_cast<int64_t>(block_table[key >> log2_bs]) * (bs_mask + 1) + (key & bs_mask);
        const int64_t off = ((slot_row * Hkv + hk) * kHeadDim + part * kDpl) / 8;
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          kr[u][v] = __ldg(k_cache + off + v);
          vr[u][v] = __ldg(v_cache + off + v);
        }
      } else {
#pragma unroll
        for (int v = 0; v < kVec; ++v) kr[u][v] = vr[u][v] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < SbDecodeTuning<kHeadDim, kG>::kUnroll; ++u) {
      const bool valid = hi - 1 - u < s_end;
      float kf[kDpl];
      float vf[kDpl];
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        Bf16x8ToFloat(kr[u][v], &kf[8 * v]);
        Bf16x8ToFloat(vr[u][v], &vf[8 * v]);
      }
#pragma unroll
      for (int gi = 0; gi < kG; ++gi) {
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < kDpl; ++i) dot = fmaf(qf[gi][i], kf[i], dot);
#pragma unroll
        for (int sh = 1; sh < kLanesPerKey; sh *= 2) dot += __shfl_xor_sync(0xffffffffu, dot, sh);
        // x <= 64 keeps 1 + t finite; beyond that beta rounds to 1 anyway.
        const float t = Exp2(valid ? fminf(dot, 64.f) : -INFINITY);
        const float r = Rcp(1.f + t);
        const float a = t * r * P[gi];
#pragma unroll
        for (int i = 0; i < kDpl; ++i) acc[gi][i] = fmaf(a, vf[i], acc[gi][i]);
        P[gi] *= r;
      }
    }
  }

  // Combine the slots of the warp: slot 2i (older) with 2i+1, then pairs.
#pragma unroll
  for (int sh = kLanesPerKey; sh < 32; sh *= 2) {
    const bool newer = (lane & sh) != 0;
#pragma unroll
    for (int gi = 0; gi < kG; ++gi) {
      const float p_other = __shfl_xor_sync(0xffffffffu, P[gi], sh);
#pragma unroll
      for (int i = 0; i < kDpl; ++i) {
        const float o_other = __shfl_xor_sync(0xffffffffu, acc[gi][i], sh);
        acc[gi][i] = newer ? fmaf(o_other, P[gi], acc[gi][i]) : fmaf(acc[gi][i], p_other, o_other);
      }
      P[gi] *= p_other;
    }
  }

  // Combine the 4 warps (warp 0 holds the oldest keys) through shared memory.
  __shared__ float o_s[4][kG][kHeadDim];
  __shared__ float p_s[4][kG];
  if (lane < kLanesPerKey) {
#pragma unroll
    for (int gi = 0; gi < kG; ++gi) {
#pragma unroll
      for (int i = 0; i < kDpl; ++i) o_s[warp][gi][part * kDpl + i] = acc[gi][i];
      if (lane == 0) p_s[warp][gi] = P[gi];
    }
  }
  __syncthreads();
  DecodeWriteChunk<kHeadDim, kG>(&o_s[0][0][0], &p_s[0][0], ch, H, num_splits, o_part, p_part);
  if (done != nullptr) DecodeFoldInSplit<kHeadDim, kG>(p, log2_bs, ch, num_splits, o_part, p_part, done);
}

// Combine kernel: one CTA of kCombineGroups * kHeadDim threads per (sequence, query head). Each
// group folds a contiguous range of splits (loads issued in batches of 4 so a long sequence's
// hundreds of splits do not serialise on memory latency), then the group results are folded.
template <int kHeadDim>
__global__ void __launch_bounds__(kHeadDim * kCombineGroups)
    sb_attn_decode_combine_bf16_kernel(const SbAttnDecodeParams p, const int log2_bs, const int keys_per_split,
                                       const int num_splits, const float* __restrict__ o_part,
                                       const float* __restrict__ p_part) {
  PdlWait();  // the split grid's partials are complete
  // A programmatic dependent launch after it (the small-batch output projection) may start its
  // weight prefetch.
  PdlLaunchDependents();
  const int h = blockIdx.x % p.num_heads;
  const int b = blockIdx.x / p.num_heads;
  const int di = threadIdx.x % kHeadDim;
  const int grp = threadIdx.x / kHeadDim;
  const int H = p.num_heads;
  const int ctx = p.context_lens[b];
  const int n_keys = ctx - 1;
  const int n_split_b = max(1, (n_keys + keys_per_split - 1) / keys_per_split);
  const int64_t base = (static_cast<int64_t>(b) * H + h) * num_splits;

  // Early exit: splits [0, s_lo) lie beyond the cut (the newer splits' product below e^-tau).
  int s_lo = 0;
  if (p.early_exit_log_threshold > 0.f) {
    const float exit_carry = __expf(-p.early_exit_log_threshold);
    float prod = 1.f;
    int s = n_split_b - 1;
    while (s >= 0 && prod >= exit_carry) {
      float pv[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) pv[u] = s - u >= 0 ? p_part[base + s - u] : 1.f;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (s >= 0 && prod >= exit_carry) {
          prod *= pv[u];
          --s;
        }
      }
    }
    s_lo = prod < exit_carry ? s + 1 : 0;
  }

  int g_lo, g_hi;
  DecodeCombineGroupRange(s_lo, n_split_b, grp, g_lo, g_hi);
  float o, carry;
  DecodeFoldRange<kHeadDim>(o_part, p_part, base, g_lo, g_hi, di, o, carry);
  __shared__ float o_s[kCombineGroups][kHeadDim];
  __shared__ float c_s[kCombineGroups];
  o_s[grp][di] = o;
  if (di == 0) c_s[grp] = carry;
  __syncthreads();
  if (grp != 0) return;
  o = 0.f;
  carry = 1.f;
#pragma unroll
  for (int gq = kCombineGroups - 1; gq >= 0; --gq) {
    o = fmaf(o_s[gq][di], carry, o);
    carry *= c_s[gq];
  }
  const __nv_bfloat16* own_v = p.remainder == SbRemainder::kOwnValue
                                   ? DecodeOwnValueInCache<kHeadDim>(p, b, h / (p.num_heads / p.num_kv_heads), log2_bs)
                                   : nullptr;
  DecodeFinishHead<kHeadDim>(p, b, h, di, o, carry, s_lo > 0, own_v);
}

}  // namespace sbserve::kernels
