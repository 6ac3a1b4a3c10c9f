#include "tests/kernels/sb_attn_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <thread>

namespace sbserve::kernels::testing {

uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);                      // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  const size_t threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 32);
  std::vector<std::thread> pool;
  for (size_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (size_t i = t; i < n; i += threads) fn(i);
    });
  for (auto& th : pool) th.join();
}

int64_t Problem::SlotOf(int b, int pos) const {
  const int bs = spec.block_size;
  return static_cast<int64_t>(block_tables[static_cast<size_t>(b) * max_blocks + pos / bs]) * bs + pos % bs;
}

Problem MakeProblem(const ProblemSpec& spec) {
  Problem pb;
  pb.spec = spec;
  const int d = spec.head_dim, H = spec.num_heads, Hkv = spec.num_kv_heads, bs = spec.block_size;
  pb.batch = static_cast<int>(spec.q_lens.size());
  pb.scale = spec.scale > 0.f ? spec.scale : 1.f / std::sqrt(static_cast<float>(d));
  pb.cu_seqlens.assign(1, 0);
  int needed_blocks = 0;
  for (int b = 0; b < pb.batch; ++b) {
    const int prefix = spec.prefix_lens.empty() ? 0 : spec.prefix_lens[b];
    const int ctx = prefix + spec.q_lens[b];
    pb.cu_seqlens.push_back(pb.cu_seqlens.back() + spec.q_lens[b]);
    pb.context_lens.push_back(ctx);
    pb.max_q = std::max(pb.max_q, spec.q_lens[b]);
    pb.max_ctx = std::max(pb.max_ctx, ctx);
    needed_blocks += (ctx + bs - 1) / bs;
  }
  pb.total_q = pb.cu_seqlens.back();
  pb.max_blocks = (pb.max_ctx + bs - 1) / bs + 1;
  pb.num_blocks = needed_blocks + 3;  // a few blocks nobody owns

  std::mt19937_64 rng(spec.seed);
  std::vector<int32_t> ids(pb.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  // Table entries past a sequence's blocks point at an arbitrary block: kernels must not read them.
  pb.block_tables.assign(static_cast<size_t>(pb.batch) * pb.max_blocks, pb.num_blocks - 1);
  size_t next = 0;
  for (int b = 0; b < pb.batch; ++b) {
    const int nblk = (pb.context_lens[b] + bs - 1) / bs;
    for (int i = 0; i < nblk; ++i) pb.block_tables[static_cast<size_t>(b) * pb.max_blocks + i] = ids[next++];
  }

  std::normal_distribution<float> normal(0.f, 1.f);
  auto rnd = [&](float mean) { return FloatToBf16(normal(rng) + mean); };
  const size_t cache_elems = static_cast<size_t>(pb.num_blocks) * bs * Hkv * d;
  pb.k_cache.assign(cache_elems, 0x7fc0);  // NaN wherever no sequence owns the slot
  pb.v_cache.assign(cache_elems, 0x7fc0);
  pb.q.resize(static_cast<size_t>(pb.total_q) * H * d);
  for (auto& x : pb.q) x = rnd(-spec.shift);
  pb.k_new.resize(static_cast<size_t>(pb.total_q) * Hkv * d);
  pb.v_new.resize(pb.k_new.size());
  for (auto& x : pb.k_new) x = rnd(spec.shift);
  for (auto& x : pb.v_new) x = rnd(0.f);
  // The cached prefixes (by far the largest part: ~1.3e9 values for B = 64 contexts up to 8000
  // at 36 x 64) are drawn in units of kUnit positions of one sequence, each from its own generator
  // seeded by (seed, sequence, unit), on all cores: the values do not depend on the thread count.
  constexpr int kUnit = 256;
  struct Unit {
    int b, pos0, pos1;
  };
  std::vector<Unit> units;
  for (int b = 0; b < pb.batch; ++b) {
    const int prefix = pb.context_lens[b] - spec.q_lens[b];
    for (int p0 = 0; p0 < prefix; p0 += kUnit) units.push_back({b, p0, std::min(prefix, p0 + kUnit)});
  }
  ParallelFor(units.size(), [&](size_t u) {
    const Unit& un = units[u];
    std::seed_seq seq{static_cast<uint32_t>(spec.seed), static_cast<uint32_t>(spec.seed >> 32),
                      static_cast<uint32_t>(un.b), static_cast<uint32_t>(un.pos0)};
    std::mt19937_64 urng(seq);
    std::normal_distribution<float> unit_normal(0.f, 1.f);
    for (int pos = un.pos0; pos < un.pos1; ++pos) {
      const int64_t slot = pb.SlotOf(un.b, pos);
      for (int i = 0; i < Hkv * d; ++i) {
        pb.k_cache[slot * Hkv * d + i] = FloatToBf16(unit_normal(urng) + spec.shift);
        pb.v_cache[slot * Hkv * d + i] = FloatToBf16(unit_normal(urng));
      }
    }
  });
  pb.k_full = pb.k_cache;
  pb.v_full = pb.v_cache;
  for (int b = 0; b < pb.batch; ++b) {
    const int q_len = spec.q_lens[b];
    const int prefix = pb.context_lens[b] - q_len;
    for (int t = 0; t < q_len; ++t) {
      const int64_t slot = pb.SlotOf(b, prefix + t);
      const int64_t row = pb.cu_seqlens[b] + t;
      std::copy_n(&pb.k_new[row * Hkv * d], Hkv * d, &pb.k_full[slot * Hkv * d]);
      std::copy_n(&pb.v_new[row * Hkv * d], Hkv * d, &pb.v_full[slot * Hkv * d]);
    }
  }
  pb.head_bias.resize(static_cast<size_t>(H) * d);
  for (auto& x : pb.head_bias) x = normal(rng);
  return pb;
}

void ReferenceRow(const Problem& pb, int b, int row, int h, double* o, double* rem) {
  const int d = pb.spec.head_dim, H = pb.spec.num_heads, Hkv = pb.spec.num_kv_heads;
  const int hk = h / (H / Hkv);
  const int q_len = pb.cu_seqlens[b + 1] - pb.cu_seqlens[b];
  const int pos = pb.context_lens[b] - q_len + (row - pb.cu_seqlens[b]);
  std::vector<double> q(d);
  for (int c = 0; c < d; ++c) q[c] = Bf16ToFloat(pb.q[(static_cast<size_t>(row) * H + h) * d + c]);
  std::fill(o, o + d, 0.0);
  double acc = 0.0;  // sum of softplus(z) over keys newer than j
  for (int j = pos - 1; j >= 0; --j) {
    const int64_t base = (pb.SlotOf(b, j) * Hkv + hk) * d;
    double dot = 0.0;
    for (int c = 0; c < d; ++c) dot += q[c] * Bf16ToFloat(pb.k_full[base + c]);
    const double z = pb.scale * dot;
    const double sp = z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
    acc += sp;
    const double a = std::exp(z - acc);
    if (a != 0.0)
      for (int c = 0; c < d; ++c) o[c] += a * Bf16ToFloat(pb.v_full[base + c]);
  }
  *rem = std::exp(-acc);
  if (pb.spec.remainder == SbRemainder::kOwnValue) {
    const int64_t base = (pb.SlotOf(b, pos) * Hkv + hk) * d;
    for (int c = 0; c < d; ++c) o[c] += *rem * Bf16ToFloat(pb.v_full[base + c]);
  } else if (pb.spec.remainder == SbRemainder::kHeadBias) {
    for (int c = 0; c < d; ++c) o[c] += *rem * pb.head_bias[static_cast<size_t>(h) * d + c];
  }
}

}  // namespace sbserve::kernels::testing
