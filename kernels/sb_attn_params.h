// Parameter blocks of the stick-breaking attention kernels (DESIGN.md section 1).
// Plain data, no CUDA includes: the engine fills these and calls the entry points of
// kernels/sb_attn.h.
//
// Glossary
//   B       sequences in the batch
//   total_q packed query tokens over all sequences (sum of q_len)
//   H       query heads;  Hkv key/value heads, H % Hkv == 0, G = H / Hkv query heads per kv head;
//           query head h reads kv head h / G
//   d       head dim (64 or 128)
//   nb      blocks in the paged KV cache;  bs tokens per block (a power of two, e.g. 16 or 64)
//   mb      max blocks per sequence (row length of the block table)
//   T       context_lens[b]: keys of sequence b after this step (cached prefix + this chunk)
//
// Positions: chunk token t of sequence b (q_len = cu_seqlens_q[b+1] - cu_seqlens_q[b]) sits at
// position T - q_len + t and attends keys 0 .. position - 1 (strictly causal, never itself).
// Key position p of sequence b lives in cache row block_tables[b * mb + p / bs] * bs + p % bs.
//
// Numerics: bf16 inputs, fp32 logits, break probabilities, products and accumulators.
// Weights are computed in linear space as products of (1 - beta) = 1 / (1 + 2^x), with
// x = scale * log2(e) * (q . k). Prefill clamps x at 20: a key with x > 20 then passes
// 1 / (1 + 2^20) < 1e-6 of the older keys' weight instead of 1 / (1 + 2^x), an absolute error
// below 1e-6 * max |v| (see sb_attn_prefill_kernel.cuh). Products that underflow fp32 stand for
// weights below 2^-46 and are flushed to zero; rem likewise (rem < 2^-126 reads 0).
//
// Early exit (opt-in, early_exit_log_threshold = tau > 0). Weights only shrink with distance:
// once the keys already visited (all newer than the rest) have acc = sum softplus(z) > tau, every
// older key j has A_j = e^-acc * beta_j * prod_{older k > j} (1 - beta_k), so the older keys and
// the remainder together carry exactly e^-acc < e^-tau of weight:
//   sum_{j older} A_j + rem = e^-acc.
// The kernels drop that mass: they skip the older keys and report rem = 0. Hence, on top of the
// error of the full computation, per output component c
//   |o_c - o_c(exact)| < e^-tau * max(|v_jc| over the skipped keys j, |r_c|),
// r = the remainder vector (v_i for R1, head_bias[h] for R2, 0 for R0), and
//   0 <= rem(exact) - rem < e^-tau,
// up to the fp32 rounding of the running product that decides (the prefill clamp of x at 20 only
// makes it larger, i.e. the test more conservative).
// Prefill decides per CTA tile (every row of the tile past tau), decode per key chunk (the chunks
// newer than it past tau for every query head of the CTA; decided deterministically in the
// combine, so results never depend on timing). With tau = 0 results are bitwise those of the
// full computation.
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t without the CUDA headers

namespace sbserve::kernels {

// Remainder term added to the output in the epilogue (DESIGN.md section 2).
enum class SbRemainder : int {
  kNone = 0,       // R0: o unchanged
  kOwnValue = 1,   // R1: o += rem * v_i (the query token's own value, kv head of the query head)
  kHeadBias = 2,   // R2: o += rem * head_bias[h]
};

// Paged KV cache of one layer, shared by every kernel here.
struct SbKvCache {
  void* k = nullptr;                     // [nb, bs, Hkv, d] bf16
  void* v = nullptr;                     // [nb, bs, Hkv, d] bf16
  const int32_t* block_tables = nullptr; // [B, mb]
  int num_blocks = 0;                    // nb
  int block_size = 0;                    // bs, power of two
  int max_blocks = 0;                    // mb
};

// Appends the K/V of every packed batch token to its sequence's cache slot (position
// T - q_len + t). Run it before the attention kernels of the same step.
struct SbKvAppendParams {
  const void* k = nullptr;               // [total_q, Hkv, d] bf16, row t at k + t * kv_row_stride
  const void* v = nullptr;               // [total_q, Hkv, d] bf16, row t at v + t * kv_row_stride
  int64_t kv_row_stride = 0;             // elements between token rows of k and v; 0: Hkv * d (a multiple of 8)
  const int32_t* cu_seqlens_q = nullptr; // [B+1]
  const int32_t* context_lens = nullptr; // [B]
  SbKvCache cache;
  int batch = 0;                         // B
  int total_q = 0;
  int num_kv_heads = 0;                  // Hkv
  int head_dim = 0;                      // d
};

// Which prefill kernel runs (sb_attn_prefill_kernel.cuh, sb_attn_prefill_sm90_kernel.cuh).
enum class SbPrefillKernel : int {
  kAuto = 0,       // the default for the device and shape (SbAttnPrefillKernelFor)
  kMma = 1,        // mma.sync m16n8k16 (sm_80 and later; every head dim)
  kWgmma = 2,      // Hopper warpgroup MMAs (sm_90a build on an sm_90 device, head_dim 64)
  kWgmmaWide = 3,  // the same with 3 warpgroups (192 query rows) sharing each K/V tile, one CTA per
                   // SM: a third of the K/V reads. Without early exit (asked with it: kWgmma runs).
  kWgmmaTma = 4,      // kWgmma with the K/V tiles loaded by TMA from one warp (sb_attn_prefill_sm90_kernel.cuh;
                      // measured 1.7-2.1x slower: 2-key boxes, tests/bench/kernels.md);
  kWgmmaWideTma = 5,  // kWgmmaWide the same way. Both without early exit (asked with it: kWgmma
                      // runs), for block sizes >= 2 and a set num_blocks (the tensor maps span
                      // num_blocks * block_size slots; otherwise kWgmma / kWgmmaWide).
};

// Varlen prefill (any q_len >= 1, chunked prefill with a cached prefix included). Keys, the
// chunk's own included, are read from the cache, so append the chunk first.
struct SbAttnPrefillParams {
  const void* q = nullptr;               // [total_q, H, d] bf16, row t at q + t * q_row_stride
  int64_t q_row_stride = 0;              // elements between query rows; 0: H * d (a multiple of 8)
  const int32_t* cu_seqlens_q = nullptr; // [B+1] device
  const int32_t* context_lens = nullptr; // [B] device
  SbKvCache cache;
  const float* head_bias = nullptr;      // [H, d] fp32, only for SbRemainder::kHeadBias
  void* o = nullptr;                     // [total_q, H, d] bf16
  float* rem = nullptr;                  // [total_q, H] fp32; may be null
  int batch = 0;                         // B
  int total_q = 0;
  int max_seqlen_q = 0;                  // max over b of q_len (host value; sizes the grid)
  int num_heads = 0;                     // H
  int num_kv_heads = 0;                  // Hkv
  int head_dim = 0;                      // d
  float scale = 0.f;                     // logit multiplier s (> 0)
  SbRemainder remainder = SbRemainder::kNone;
  float early_exit_log_threshold = 0.f;  // tau in nats (see above); 0: off
  // Optional counters [2] (null: none): += key tiles of 64 skipped by the early exit, += key
  // tiles the CTAs would visit without it.
  unsigned long long* early_exit_stats = nullptr;
  SbPrefillKernel kernel = SbPrefillKernel::kAuto;  // tuning and tests; kAuto in the engine
};

// Which decode split kernel runs (sb_attn_decode_kernel.cuh, sb_attn_decode_mma_kernel.cuh).
enum class SbDecodeKernel : int {
  kAuto = 0,        // the default for the shape (SbAttnDecodeUsesTensorCores)
  kCudaCore = 1,    // per-lane dot products and sums; one kernel pass per group of query heads
  kTensorCore = 2,  // MMAs over the query heads of a KV head, K/V staged through shared memory
};

// Paged decode: one query per sequence at position T - 1, over keys 0 .. T - 2, split over key
// chunks (flash-decoding style) and then combined. The query's own K/V must be in the cache at
// position T - 1 by the combine (R1 reads its value from there): appended before the call, or by
// the split kernel itself from k_new / v_new.
struct SbAttnDecodeParams {
  const void* q = nullptr;               // [*, H, d] bf16; sequence b's query is row q_rows[b] (or b)
  int64_t q_row_stride = 0;              // elements between query rows; 0: H * d (a multiple of 8)
  const int32_t* q_rows = nullptr;       // [B] row of each sequence in q / o / rem; null: row b
  const int32_t* context_lens = nullptr; // [B] device, T >= 1
  SbKvCache cache;
  const float* head_bias = nullptr;      // [H, d] fp32, only for SbRemainder::kHeadBias
  void* o = nullptr;                     // [*, H, d] bf16
  float* rem = nullptr;                  // [*, H] fp32; may be null
  void* workspace = nullptr;             // SbAttnDecodeWorkspaceBytes(...) bytes, any content
  int batch = 0;                         // B
  int max_context = 0;                   // host upper bound of max_b T (sizes the split grid)
  int num_heads = 0;                     // H
  int num_kv_heads = 0;                  // Hkv
  int head_dim = 0;                      // d
  float scale = 0.f;                     // logit multiplier s (> 0)
  SbRemainder remainder = SbRemainder::kNone;
  int num_sms = 0;                       // SMs of the device (0: queried); sizes the split count
  float early_exit_log_threshold = 0.f;  // tau in nats (see above); 0: off
  // Optional counters [2] (null: none): += key-chunk CTAs skipped by the early exit, += CTAs
  // with keys.
  unsigned long long* early_exit_stats = nullptr;
  int keys_per_split = 0;                // 0: chosen here; else forced (a multiple of 64; tuning)
  SbDecodeKernel kernel = SbDecodeKernel::kAuto;  // tuning and tests; kAuto in the engine
  // Optional (both or neither): the step's new K and V rows, [Hkv, d] bf16 per sequence in row
  // q_rows[b] (or b), kv_row_stride elements apart. The split kernel then writes them into the cache
  // at position T - 1 in place of a SbKvAppend launch before it: no CTA of this call reads that
  // slot before the combine, which runs after the split grid. null: the cache already holds them.
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  int64_t kv_row_stride = 0;             // elements between rows of k_new / v_new; 0: Hkv * d
  // Optional [B * H] counters, zero before the call and left zero after it (zero them once when
  // allocated). Given them and without the early exit, the last split CTA of each (sequence, group
  // of query heads) folds the chunks and writes o and rem itself, bitwise what the combine kernel
  // writes, and no combine kernel is launched. null: the combine kernel (always with the early exit).
  unsigned* done_counters = nullptr;
};

}  // namespace sbserve::kernels
