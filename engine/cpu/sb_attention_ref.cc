#include "engine/cpu/sb_attention_ref.h"

#include <cmath>
#include <vector>

#include "engine/cpu/thread_pool.h"

namespace sbserve {
namespace {

inline float Softplus(float z) { return z > 0.f ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z)); }

}  // namespace

void SbAttentionRef(const SbAttnRefParams& p, ThreadPool* pool) {
  const int H = p.num_heads, Hkv = p.num_kv_heads, d = p.head_dim, bs = p.block_size;
  const int group = H / Hkv;
  // Work items: (query row, head). Row r belongs to the sequence b with cu[b] <= r < cu[b+1].
  const int64_t total_q = p.cu_seqlens_q[p.batch];
  std::vector<int32_t> seq_of_row(static_cast<size_t>(total_q));
  for (int b = 0; b < p.batch; ++b) {
    for (int32_t r = p.cu_seqlens_q[b]; r < p.cu_seqlens_q[b + 1]; ++r) seq_of_row[r] = b;
  }
  auto key_ptr = [&](const float* cache, int b, int pos, int kvh) {
    const int32_t block = p.block_tables[static_cast<int64_t>(b) * p.max_blocks + pos / bs];
    return cache + ((static_cast<int64_t>(block) * bs + pos % bs) * Hkv + kvh) * d;
  };
  ParallelFor(pool, total_q * H, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> acc_o(static_cast<size_t>(d));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / H;
      const int h = static_cast<int>(item % H);
      const int kvh = h / group;
      const int b = seq_of_row[row];
      const int q_len = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
      const int pos = p.context_lens[b] - q_len + static_cast<int>(row - p.cu_seqlens_q[b]);
      const float* q = p.q + (row * H + h) * d;
      std::fill(acc_o.begin(), acc_o.end(), 0.f);
      // Walk keys from the newest (pos-1) to the oldest, carrying acc = sum of softplus to the right.
      float acc = 0.f;
      for (int j = pos - 1; j >= 0; --j) {
        const float* k = key_ptr(p.k_cache, b, j, kvh);
        float dot = 0.f;
        for (int c = 0; c < d; ++c) dot += q[c] * k[c];
        const float z = p.scale * dot;
        const float sp = Softplus(z);
        const float w = std::exp(z - (acc + sp));
        acc += sp;
        if (w != 0.f) {
          const float* v = key_ptr(p.v_cache, b, j, kvh);
          for (int c = 0; c < d; ++c) acc_o[c] += w * v[c];
        }
      }
      const float rem = std::exp(-acc);
      float* o = p.o + (row * H + h) * d;
      if (p.remainder == Remainder::kR1 && pos >= 0) {
        const float* v = key_ptr(p.v_cache, b, pos, kvh);
        for (int c = 0; c < d; ++c) o[c] = acc_o[c] + rem * v[c];
      } else if (p.remainder == Remainder::kR2) {
        const float* hb = p.head_bias + static_cast<int64_t>(h) * d;
        for (int c = 0; c < d; ++c) o[c] = acc_o[c] + rem * hb[c];
      } else {
        for (int c = 0; c < d; ++c) o[c] = acc_o[c];
      }
      if (p.rem != nullptr) p.rem[row * H + h] = rem;
    }
  });
}

}  // namespace sbserve
