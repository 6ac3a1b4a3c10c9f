// The fp32 attention reference against a float64 brute force of the product formula
// A_ij = β_ij · Π_{j<k<i} (1 − β_ik), with paged keys, ragged batches and chunked prefixes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/sb_attention_ref.h"
#include "engine/thread_pool.h"
#include "tests/engine/test_util.h"

namespace sbserve {
namespace {

struct Case {
  std::vector<int> q_lens;
  std::vector<int> prefixes;
  int H, Hkv, d, bs;
  Remainder rem;
  float scale_mult;  // multiplies 1/sqrt(d): larger gives peaked β
};

struct Double64Result {
  std::vector<double> o, rem, sum_a;
};

// Brute force in float64 over the logical (unpaged) K/V.
Double64Result BruteForce(const Case& c, const std::vector<float>& q, const std::vector<std::vector<float>>& k,
                          const std::vector<std::vector<float>>& v, const std::vector<float>& head_bias,
                          float scale) {
  Double64Result r;
  const int H = c.H, d = c.d, G = c.H / c.Hkv;
  int row = 0;
  for (size_t b = 0; b < c.q_lens.size(); ++b) {
    for (int t = 0; t < c.q_lens[b]; ++t, ++row) {
      const int pos = c.prefixes[b] + t;
      for (int h = 0; h < H; ++h) {
        const int kvh = h / G;
        std::vector<double> beta(pos);
        for (int j = 0; j < pos; ++j) {
          double dot = 0;
          for (int e = 0; e < d; ++e) dot += static_cast<double>(q[(row * H + h) * d + e]) * k[b][(j * c.Hkv + kvh) * d + e];
          beta[j] = 1.0 / (1.0 + std::exp(-static_cast<double>(scale) * dot));
        }
        std::vector<double> o(d, 0.0);
        double sum_a = 0, prod = 1.0;
        for (int j = pos - 1; j >= 0; --j) {  // prod = Π_{j<k<pos} (1-β_k)
          const double a = beta[j] * prod;
          sum_a += a;
          for (int e = 0; e < d; ++e) o[e] += a * v[b][(j * c.Hkv + kvh) * d + e];
          prod *= 1.0 - beta[j];
        }
        const double rem = prod;
        for (int e = 0; e < d; ++e) {
          if (c.rem == Remainder::kR1) o[e] += rem * v[b][(pos * c.Hkv + kvh) * d + e];
          if (c.rem == Remainder::kR2) o[e] += rem * head_bias[h * d + e];
          r.o.push_back(o[e]);
        }
        r.rem.push_back(rem);
        r.sum_a.push_back(sum_a);
      }
    }
  }
  return r;
}

void RunCase(const Case& c, uint64_t seed, ThreadPool* pool) {
  std::mt19937_64 rng(seed);
  const int B = static_cast<int>(c.q_lens.size());
  const float scale = c.scale_mult / std::sqrt(static_cast<float>(c.d));
  std::vector<int32_t> cu(1, 0), ctx;
  for (int b = 0; b < B; ++b) {
    cu.push_back(cu.back() + c.q_lens[b]);
    ctx.push_back(c.prefixes[b] + c.q_lens[b]);
  }
  const int total_q = cu.back();
  // Logical K/V per sequence, then scattered into shuffled blocks.
  std::vector<std::vector<float>> k(B), v(B);
  int max_blocks = 0, total_blocks = 0;
  for (int b = 0; b < B; ++b) {
    k[b] = testing::RandomVector(rng, static_cast<size_t>(ctx[b]) * c.Hkv * c.d);
    v[b] = testing::RandomVector(rng, static_cast<size_t>(ctx[b]) * c.Hkv * c.d);
    const int nb = (ctx[b] + c.bs - 1) / c.bs;
    max_blocks = std::max(max_blocks, nb);
    total_blocks += nb;
  }
  std::vector<int32_t> perm(total_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(B) * max_blocks, -1);
  const size_t block_elems = static_cast<size_t>(c.bs) * c.Hkv * c.d;
  std::vector<float> kc(total_blocks * block_elems, NAN), vc(total_blocks * block_elems, NAN);
  int next = 0;
  for (int b = 0; b < B; ++b) {
    for (int i = 0; i < (ctx[b] + c.bs - 1) / c.bs; ++i) tables[b * max_blocks + i] = perm[next++];
    for (int p = 0; p < ctx[b]; ++p) {
      const int32_t blk = tables[b * max_blocks + p / c.bs];
      for (int e = 0; e < c.Hkv * c.d; ++e) {
        kc[(blk * c.bs + p % c.bs) * c.Hkv * c.d + e] = k[b][p * c.Hkv * c.d + e];
        vc[(blk * c.bs + p % c.bs) * c.Hkv * c.d + e] = v[b][p * c.Hkv * c.d + e];
      }
    }
  }
  std::vector<float> q = testing::RandomVector(rng, static_cast<size_t>(total_q) * c.H * c.d);
  std::vector<float> hb = testing::RandomVector(rng, static_cast<size_t>(c.H) * c.d);
  std::vector<float> o(static_cast<size_t>(total_q) * c.H * c.d, NAN), rem(static_cast<size_t>(total_q) * c.H, NAN);

  SbAttnRefParams p;
  p.q = q.data();
  p.k_cache = kc.data();
  p.v_cache = vc.data();
  p.cu_seqlens_q = cu.data();
  p.context_lens = ctx.data();
  p.block_tables = tables.data();
  p.head_bias = hb.data();
  p.o = o.data();
  p.rem = rem.data();
  p.batch = B;
  p.num_heads = c.H;
  p.num_kv_heads = c.Hkv;
  p.head_dim = c.d;
  p.block_size = c.bs;
  p.max_blocks = max_blocks;
  p.scale = scale;
  p.remainder = c.rem;
  SbAttentionRef(p, pool);

  const Double64Result want = BruteForce(c, q, k, v, hb, scale);
  // Per-sequence relative L2, plus rem + ΣA = 1 from the reference's own outputs.
  for (int b = 0; b < B; ++b) {
    const size_t o_begin = static_cast<size_t>(cu[b]) * c.H * c.d, o_n = static_cast<size_t>(c.q_lens[b]) * c.H * c.d;
    const size_t r_begin = static_cast<size_t>(cu[b]) * c.H, r_n = static_cast<size_t>(c.q_lens[b]) * c.H;
    for (size_t i = 0; i < o_n; ++i) ASSERT_TRUE(std::isfinite(o[o_begin + i])) << "o[" << o_begin + i << "] not written";
    EXPECT_LE(testing::RelL2(o.data() + o_begin, want.o.data() + o_begin, o_n), 1e-5) << "seq " << b;
    EXPECT_LE(testing::RelL2(rem.data() + r_begin, want.rem.data() + r_begin, r_n), 1e-5) << "seq " << b;
  }
  for (size_t i = 0; i < want.rem.size(); ++i) {
    ASSERT_NEAR(want.rem[i] + want.sum_a[i], 1.0, 1e-9);
    // rem_0 = 1 for position 0 (it attends nothing).
  }
  for (int b = 0; b < B; ++b) {
    if (c.prefixes[b] == 0 && c.q_lens[b] > 0) {
      for (int h = 0; h < c.H; ++h) EXPECT_EQ(rem[cu[b] * c.H + h], 1.0f);
    }
  }
}

TEST(SbAttentionRef, SingleSequencesOfEdgeLengths) {
  ThreadPool pool(2);
  uint64_t seed = 1;
  for (int len : {1, 2, 15, 16, 17, 63, 64, 65, 127, 200}) {
    for (Remainder r : {Remainder::kR0, Remainder::kR1, Remainder::kR2}) {
      SCOPED_TRACE("len " + std::to_string(len));
      RunCase({{len}, {0}, 4, 4, 16, 16, r, 1.0f}, seed++, &pool);
    }
  }
}

TEST(SbAttentionRef, RaggedGqaBatchesWithPrefixes) {
  ThreadPool pool(2);
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 12; ++trial) {
    Case c;
    const int B = 1 + static_cast<int>(rng() % 6);
    for (int b = 0; b < B; ++b) {
      c.q_lens.push_back(1 + static_cast<int>(rng() % 40));
      c.prefixes.push_back(trial % 2 ? static_cast<int>(rng() % 70) : 0);
    }
    const int ratios[] = {1, 2, 4};
    c.Hkv = 2;
    c.H = c.Hkv * ratios[trial % 3];
    c.d = trial % 4 == 0 ? 64 : 32;
    c.bs = trial % 2 ? 16 : 8;
    c.rem = static_cast<Remainder>(trial % 3);
    c.scale_mult = trial % 4 == 3 ? 8.0f : 1.0f;  // peaked β too
    SCOPED_TRACE("trial " + std::to_string(trial));
    RunCase(c, 100 + trial, trial % 2 ? &pool : nullptr);
  }
}

TEST(SbAttentionRef, DecodeStepsOverLongContext) {
  ThreadPool pool(2);
  // Eight sequences each decoding one token over contexts up to 700.
  Case c{{1, 1, 1, 1, 1, 1, 1, 1}, {0, 1, 2, 31, 64, 255, 500, 699}, 6, 2, 32, 16, Remainder::kR1, 1.0f};
  RunCase(c, 4242, &pool);
}

}  // namespace
}  // namespace sbserve
