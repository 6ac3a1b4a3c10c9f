// fp32 CPU reference of stick-breaking attention (DESIGN.md section 1) over a paged KV cache.
//
// Glossary: B = sequences, total_q = packed query tokens, H = query heads, Hkv = key/value heads
// (H % Hkv == 0; query head h reads kv head h / (H / Hkv)), d = head dim, nb = cache blocks,
// bs = tokens per block, mb = max blocks per sequence.
//
// Sequence b's queries are rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]; its keys are positions
// 0 .. context_lens[b]-1 in the cache; query t of the chunk is position
// context_lens[b] - q_len + t and attends keys 0 .. position - 1 (never itself).
#pragma once

#include <cstdint>

#include "engine/model/config.h"

namespace sbserve {

class ThreadPool;

struct SbAttnRefParams {
  const float* q;              // [total_q, H, d]
  const float* k_cache;        // [nb, bs, Hkv, d]
  const float* v_cache;        // [nb, bs, Hkv, d]
  const int32_t* cu_seqlens_q; // [B+1]
  const int32_t* context_lens; // [B]
  const int32_t* block_tables; // [B, mb]
  const float* head_bias;      // [H, d], only for Remainder::kR2
  float* o;                    // [total_q, H, d]
  float* rem;                  // [total_q, H]; may be null
  int batch = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 0;
  int max_blocks = 0;
  float scale = 0.f;           // logit multiplier s
  Remainder remainder = Remainder::kR0;  // R1 adds rem * v_i (the query's own value), R2 rem * head_bias[h]
};

// Exact log-space computation in float32 (softplus sums accumulated right to left).
// `pool` may be null (single thread).
void SbAttentionRef(const SbAttnRefParams& p, ThreadPool* pool);

}  // namespace sbserve
