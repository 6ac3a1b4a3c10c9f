// The fp32 attention reference against a float64 brute force of the product formula
// A_ij = β_ij · Π_{j<k<i} (1 − β_ik), with paged keys, ragged batches and chunked prefixes; both
// against weights worked out by hand, so a misreading of the formula they shared would still fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/cpu/sb_attention_ref.h"
#include "engine/cpu/thread_pool.h"
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
  std::vector<double> o, rem;
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
        double prod = 1.0;
        for (int j = pos - 1; j >= 0; --j) {  // prod = Π_{j<k<pos} (1-β_k)
          const double a = beta[j] * prod;
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
  // Per-sequence relative L2; rem of a sequence's first position is exactly 1 (it attends nothing).
  for (int b = 0; b < B; ++b) {
    const size_t o_begin = static_cast<size_t>(cu[b]) * c.H * c.d, o_n = static_cast<size_t>(c.q_lens[b]) * c.H * c.d;
    const size_t r_begin = static_cast<size_t>(cu[b]) * c.H, r_n = static_cast<size_t>(c.q_lens[b]) * c.H;
    for (size_t i = 0; i < o_n; ++i) ASSERT_TRUE(std::isfinite(o[o_begin + i])) << "o[" << o_begin + i << "] not written";
    EXPECT_LE(testing::RelL2(o.data() + o_begin, want.o.data() + o_begin, o_n), 1e-5) << "seq " << b;
    EXPECT_LE(testing::RelL2(rem.data() + r_begin, want.rem.data() + r_begin, r_n), 1e-5) << "seq " << b;
  }
  for (int b = 0; b < B; ++b) {
    if (c.prefixes[b] == 0 && c.q_lens[b] > 0) {
      for (int h = 0; h < c.H; ++h) EXPECT_EQ(rem[cu[b] * c.H + h], 1.0f);
    }
  }
}

// Four positions, one head, d = 4, s = 1, every query (1, 0, 0, 0) and key j (z_j, 0, 0, 0) with
// z = (0, ln 3, -ln 3, 0), so β_ij = σ(z_j) = (1/2, 3/4, 1/4, 1/2) whatever the query, and v_j = e_j.
// By hand, A_ij = β_j Π_{j<k<i} (1 − β_k) and rem_i = Π_{k<i} (1 − β_k):
//   i = 1: A_10 = 1/2;                                   rem = 1/2
//   i = 2: A_20 = 1/2 · 1/4 = 1/8,   A_21 = 3/4;         rem = 1/2 · 1/4 = 1/8
//   i = 3: A_30 = 1/2 · 1/4 · 3/4 = 3/32, A_31 = 3/4 · 3/4 = 9/16, A_32 = 1/4;  rem = 3/32
// o_i = Σ_j A_ij e_j, plus rem_i e_i (R1) or rem_i · head_bias (R2). The same numbers are asked of
// the whole sequence at once and of positions 2..3 as a chunk after a cached prefix.
TEST(SbAttentionRef, HandComputedWeights) {
  const double kA[4][4] = {{0, 0, 0, 0}, {0.5, 0, 0, 0}, {0.125, 0.75, 0, 0}, {3.0 / 32, 9.0 / 16, 0.25, 0}};
  const double kRem[4] = {1, 0.5, 0.125, 3.0 / 32};
  const std::vector<float> hb = {10, 20, 30, 40};
  const float ln3 = std::log(3.0f);
  const float z[4] = {0, ln3, -ln3, 0};
  std::vector<float> k(16, 0.f), v(16, 0.f);
  for (int j = 0; j < 4; ++j) {
    k[j * 4] = z[j];
    v[j * 4 + j] = 1.f;
  }
  for (Remainder r : {Remainder::kR0, Remainder::kR1, Remainder::kR2}) {
    SCOPED_TRACE(RemainderName(r));
    auto expected = [&](int i, int e) {
      double o = kA[i][e];
      if (r == Remainder::kR1 && e == i) o += kRem[i];
      if (r == Remainder::kR2) o += kRem[i] * hb[e];
      return o;
    };
    // Sequence 0: positions 0..3 in one chunk; sequence 1: positions 2..3 after a cached prefix of 2.
    // Block size 2; sequence 0 in blocks 3, 0 and sequence 1 in blocks 1, 2.
    const Case c{{4, 2}, {0, 2}, 1, 1, 4, 2, r, 1.0f};
    const std::vector<int32_t> cu = {0, 4, 6}, ctx = {4, 4}, tables = {3, 0, 1, 2};
    std::vector<float> kc(4 * 2 * 4, NAN), vc(4 * 2 * 4, NAN);
    for (int b = 0; b < 2; ++b) {
      for (int pos = 0; pos < 4; ++pos) {
        const int slot = (tables[b * 2 + pos / 2] * 2 + pos % 2) * 4;
        std::copy_n(k.begin() + pos * 4, 4, kc.begin() + slot);
        std::copy_n(v.begin() + pos * 4, 4, vc.begin() + slot);
      }
    }
    std::vector<float> q(6 * 4, 0.f);
    for (int row = 0; row < 6; ++row) q[row * 4] = 1.f;
    std::vector<float> o(6 * 4, NAN), rem(6, NAN);
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
    p.batch = 2;
    p.num_heads = 1;
    p.num_kv_heads = 1;
    p.head_dim = 4;
    p.block_size = 2;
    p.max_blocks = 2;
    p.scale = 1.f;
    p.remainder = r;
    SbAttentionRef(p, nullptr);
    const Double64Result brute = BruteForce(c, q, {k, k}, {v, v}, hb, 1.f);
    const int row_pos[6] = {0, 1, 2, 3, 2, 3};
    for (int row = 0; row < 6; ++row) {
      const int i = row_pos[row];
      SCOPED_TRACE("row " + std::to_string(row) + " position " + std::to_string(i));
      EXPECT_NEAR(rem[row], kRem[i], 1e-6);
      EXPECT_NEAR(brute.rem[row], kRem[i], 1e-7);
      for (int e = 0; e < 4; ++e) {
        EXPECT_NEAR(o[row * 4 + e], expected(i, e), 1e-5 * (1 + std::fabs(expected(i, e)))) << "e " << e;
        EXPECT_NEAR(brute.o[row * 4 + e], expected(i, e), 1e-6 * (1 + std::fabs(expected(i, e)))) << "e " << e;
      }
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
