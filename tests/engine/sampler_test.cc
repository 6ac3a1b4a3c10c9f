#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <numeric>
#include <set>

#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "tests/engine/test_util.h"

namespace sbserve {
namespace {

std::vector<float> Logits(uint64_t seed, int V = 200) {
  std::mt19937_64 rng(seed);
  return testing::RandomVector(rng, V, 2.0f);
}

TEST(Sampler, GreedyIsArgmax) {
  for (uint64_t s = 0; s < 20; ++s) {
    std::vector<float> l = Logits(s);
    const int32_t want = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    SamplingParams p;
    p.temperature = 0.f;
    SequenceSampler sampler(p, {});
    EXPECT_EQ(sampler.Sample(l), want);
  }
}

TEST(Sampler, SeededDeterminism) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.9f;
  p.seed = 1234;
  p.has_seed = true;
  std::vector<int32_t> a, b;
  SequenceSampler s1(p, {}), s2(p, {});
  for (int i = 0; i < 50; ++i) {
    std::vector<float> l1 = Logits(i), l2 = Logits(i);
    a.push_back(s1.Sample(l1));
    b.push_back(s2.Sample(l2));
  }
  EXPECT_EQ(a, b);
  // A different seed gives a different stream.
  p.seed = 4321;
  SequenceSampler s3(p, {});
  std::vector<int32_t> c;
  for (int i = 0; i < 50; ++i) {
    std::vector<float> l = Logits(i);
    c.push_back(s3.Sample(l));
  }
  EXPECT_NE(a, c);
}

TEST(Sampler, TopKNeverLeavesTheTopK) {
  SamplingParams p;
  p.temperature = 2.0f;
  p.top_k = 5;
  p.seed = 7;
  p.has_seed = true;
  SequenceSampler s(p, {});
  const std::vector<float> base = Logits(3);
  std::vector<int32_t> order(base.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return base[a] > base[b]; });
  const std::set<int32_t> allowed(order.begin(), order.begin() + 5);
  std::set<int32_t> seen;
  for (int i = 0; i < 500; ++i) {
    std::vector<float> l = base;
    const int32_t t = s.Sample(l);
    EXPECT_TRUE(allowed.count(t)) << t;
    seen.insert(t);
  }
  EXPECT_GT(seen.size(), 1u);  // it does sample, not argmax
}

TEST(Sampler, TopPAndMinPStayInTheirSets) {
  const std::vector<float> base = Logits(9);
  // The softmax at temperature 1.
  std::vector<double> prob(base.size());
  double mx = *std::max_element(base.begin(), base.end()), z = 0;
  for (size_t i = 0; i < base.size(); ++i) z += prob[i] = std::exp(base[i] - mx);
  for (double& x : prob) x /= z;
  std::vector<int32_t> order(base.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  std::set<int32_t> nucleus;
  double cum = 0;
  for (int32_t t : order) {
    nucleus.insert(t);
    cum += prob[t];
    if (cum >= 0.5) break;
  }
  std::set<int32_t> min_p_set;
  for (size_t i = 0; i < prob.size(); ++i) {
    if (prob[i] >= 0.2 * prob[order[0]]) min_p_set.insert(static_cast<int32_t>(i));
  }
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 1;
  p.has_seed = true;
  p.top_p = 0.5f;
  SequenceSampler sp(p, {});
  p.top_p = 1.0f;
  p.min_p = 0.2f;
  SequenceSampler sm(p, {});
  for (int i = 0; i < 500; ++i) {
    std::vector<float> l1 = base, l2 = base;
    EXPECT_TRUE(nucleus.count(sp.Sample(l1)));
    EXPECT_TRUE(min_p_set.count(sm.Sample(l2)));
  }
}

TEST(Sampler, PenaltiesChangeLogitsAsSpecified) {
  SamplingParams p;
  p.temperature = 0.f;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  const std::vector<int32_t> prompt = {3, 4};
  SequenceSampler s(p, prompt);
  // Make token 7 the output twice.
  std::vector<float> l(10, 0.f);
  l[7] = 100.f;
  ASSERT_EQ(s.Sample(l), 7);
  l.assign(10, 0.f);
  l[7] = 100.f;
  ASSERT_EQ(s.Sample(l), 7);
  std::vector<float> x = {1, 1, 1, 2, -2, 1, 1, 4, 1, 1};
  s.ApplyPenalties(x);
  EXPECT_FLOAT_EQ(x[3], 1.0f);   // prompt token, positive: divided by 2
  EXPECT_FLOAT_EQ(x[4], -4.0f);  // prompt token, negative: multiplied by 2
  // Output token 7 seen twice: 4/2 (repetition) - 0.5*2 (frequency) - 0.25 (presence).
  EXPECT_FLOAT_EQ(x[7], 2.0f - 1.0f - 0.25f);
  EXPECT_FLOAT_EQ(x[0], 1.0f);  // untouched
}

TEST(Sampler, ValidateNamesTheField) {
  SamplingParams p;
  p.top_p = 0.f;
  EXPECT_NE(p.Validate().message().find("top_p"), absl::string_view::npos);
  p = {};
  p.temperature = -1;
  EXPECT_NE(p.Validate().message().find("temperature"), absl::string_view::npos);
  p = {};
  p.min_p = 2;
  EXPECT_NE(p.Validate().message().find("min_p"), absl::string_view::npos);
  p = {};
  EXPECT_TRUE(p.Validate().ok());
}

TEST(KvBlockAllocator, AllocatesFreesAndRefusesWhenFull) {
  KvBlockAllocator a(10, 16);
  std::vector<int32_t> t1, t2;
  ASSERT_TRUE(a.EnsureCapacity(t1, 33).ok());  // 3 blocks
  EXPECT_EQ(t1.size(), 3u);
  ASSERT_TRUE(a.EnsureCapacity(t1, 48).ok());  // still 3
  EXPECT_EQ(t1.size(), 3u);
  ASSERT_TRUE(a.EnsureCapacity(t2, 16 * 7).ok());
  EXPECT_EQ(a.num_free(), 0);
  std::vector<int32_t> t3;
  EXPECT_EQ(a.EnsureCapacity(t3, 1).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(t3.empty());
  std::set<int32_t> all(t1.begin(), t1.end());
  all.insert(t2.begin(), t2.end());
  EXPECT_EQ(all.size(), 10u);  // no block handed out twice
  a.Free(t1);
  EXPECT_EQ(a.num_free(), 3);
  EXPECT_TRUE(t1.empty());
  EXPECT_TRUE(a.EnsureCapacity(t3, 40).ok());
  EXPECT_EQ(a.num_used(), 10);
}

}  // namespace
}  // namespace sbserve

namespace sbserve {
namespace {

// Top-p after top-k works on the top-k renormalised: with k = 2 and p = 0.55, a top-2 of
// probabilities (0.214, 0.143) renormalises to (0.6, 0.4), so only the first survives
// (on the full distribution 0.55 would keep both).
TEST(Sampler, TopPAppliesToTheTopKRenormalised) {
  std::vector<float> base(20, 0.f);
  base[4] = std::log(6.f);  // the other 18 tokens have weight 1
  base[9] = std::log(4.f);
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  p.top_p = 0.55f;
  p.seed = 5;
  p.has_seed = true;
  SequenceSampler s(p, {});
  for (int i = 0; i < 200; ++i) {
    std::vector<float> l = base;
    EXPECT_EQ(s.Sample(l), 4);
  }
  p.top_p = 0.7f;  // now both survive
  SequenceSampler s2(p, {});
  std::set<int32_t> seen;
  for (int i = 0; i < 200; ++i) {
    std::vector<float> l = base;
    seen.insert(s2.Sample(l));
  }
  EXPECT_EQ(seen, (std::set<int32_t>{4, 9}));
}

// A flat 49k-token row (the selection's worst case) still gives exactly the nucleus.
TEST(Sampler, TopPOnAFlatLargeVocabularyKeepsTheNucleus) {
  std::mt19937_64 rng(21);
  const std::vector<float> base = testing::RandomVector(rng, 49152, 0.5f);
  std::vector<double> prob(base.size());
  double z = 0;
  for (size_t i = 0; i < base.size(); ++i) z += prob[i] = std::exp(static_cast<double>(base[i]));
  std::vector<int32_t> order(base.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  std::set<int32_t> nucleus;
  double cum = 0;
  for (int32_t t : order) {
    nucleus.insert(t);
    cum += prob[t] / z;
    if (cum >= 0.9) break;
  }
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.9f;
  p.seed = 2;
  p.has_seed = true;
  SequenceSampler s(p, {});
  for (int i = 0; i < 300; ++i) {
    std::vector<float> l = base;
    EXPECT_TRUE(nucleus.count(s.Sample(l)));
  }
  // The excluded tail is large here, so the check above is not vacuous.
  EXPECT_LT(nucleus.size(), base.size() * 95 / 100);
}

}  // namespace
}  // namespace sbserve
