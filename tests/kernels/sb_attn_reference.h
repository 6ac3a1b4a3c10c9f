// Float64 brute-force stick-breaking attention (DESIGN.md section 1) for the kernel tests, and
// the host-side test problem (random bf16 inputs in a shuffled paged cache).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "kernels/sb_attn_params.h"

namespace sbserve::kernels::testing {

uint16_t FloatToBf16(float f);
float Bf16ToFloat(uint16_t h);

struct ProblemSpec {
  int head_dim = 64;
  int num_heads = 4;
  int num_kv_heads = 4;
  int block_size = 16;
  std::vector<int> q_lens;       // per sequence
  std::vector<int> prefix_lens;  // per sequence, cached keys before the chunk (empty: all 0)
  float scale = 0.f;             // 0: 1/sqrt(d)
  // Mean shift m: q ~ N(-m, 1), k ~ N(m, 1), so logits average -m^2 * d * scale and the break
  // probabilities stay small (long-range weights and rem stay meaningful).
  float shift = 0.f;
  SbRemainder remainder = SbRemainder::kNone;
  uint64_t seed = 1;
};

// Host copy of one problem. Cache slots no sequence owns hold NaN, so a read outside a context
// shows up in the output.
struct Problem {
  ProblemSpec spec;
  int batch = 0;
  int total_q = 0;
  int max_q = 0;
  int max_ctx = 0;
  int num_blocks = 0;
  int max_blocks = 0;
  std::vector<int32_t> cu_seqlens;    // [B+1]
  std::vector<int32_t> context_lens;  // [B]
  std::vector<int32_t> block_tables;  // [B, mb]
  std::vector<uint16_t> q;            // [total_q, H, d]
  std::vector<uint16_t> k_new, v_new; // [total_q, Hkv, d] the chunk's keys/values
  std::vector<uint16_t> k_cache, v_cache;  // [nb, bs, Hkv, d] prefix only (chunk appended on device)
  std::vector<uint16_t> k_full, v_full;    // same, with the chunk appended (expected cache)
  std::vector<float> head_bias;       // [H, d]
  float scale = 0.f;

  int64_t SlotOf(int b, int pos) const;  // cache row of position pos of sequence b
};

Problem MakeProblem(const ProblemSpec& spec);

// Calls fn(i) for i in [0, n) on up to 32 threads (thread t takes i = t, t + threads, ...). fn must
// not depend on which thread runs it.
void ParallelFor(size_t n, const std::function<void(size_t)>& fn);

// Float64 reference for query row `row` (packed index) and head h: o[d] and rem.
void ReferenceRow(const Problem& pb, int b, int row, int h, double* o, double* rem);

}  // namespace sbserve::kernels::testing
