#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <numeric>
#include <map>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

// The draw is keyed by (seed, position) only: a sampler that drew other tokens from other logits
// before gives the same token at the same position as a fresh one started there, and the draws of
// different positions differ.
TEST(Sampler, DrawDependsOnlyOnSeedAndPosition) {
  SamplingParams p;
  p.temperature = 1.3f;
  p.top_k = 40;
  p.seed = 99;
  p.has_seed = true;
  const std::vector<int32_t> prompt(10, 3);
  SequenceSampler walked(p, prompt);
  std::vector<int32_t> drawn;
  for (int i = 0; i < 30; ++i) {
    std::vector<float> l = Logits(500 + i);
    drawn.push_back(walked.Sample(l));
  }
  EXPECT_EQ(walked.position(), 40);
  // Position 10 + 30 from fresh samplers whose history is different tokens.
  std::vector<float> probe = Logits(777);
  std::vector<float> l1 = probe;
  const int32_t a = walked.Sample(l1);
  std::vector<int32_t> other_prompt(25, 8);
  SequenceSampler fresh(p, other_prompt);
  for (int i = 0; i < 15; ++i) fresh.Record(i);
  ASSERT_EQ(fresh.position(), 40);
  std::vector<float> l2 = probe;
  EXPECT_EQ(fresh.Sample(l2), a);
  // DrawToken with the same seed and position, directly.
  RowSampling row;
  std::vector<LogitAdjust> adjust;
  SequenceSampler(p, std::vector<int32_t>(40, 1)).Describe({}, -1, &row, &adjust);
  EXPECT_EQ(row.position, 40);
  SamplingScratch scratch;
  EXPECT_EQ(DrawToken(row, probe, scratch), a);
  // Over positions the draws of one row vary (a sampler that ignores the position would repeat).
  std::set<int32_t> seen;
  for (int64_t pos = 0; pos < 200; ++pos) {
    row.position = pos;
    seen.insert(DrawToken(row, probe, scratch));
  }
  EXPECT_GT(seen.size(), 5u);
  // Different seeds at the same position differ somewhere.
  int differ = 0;
  for (int64_t pos = 0; pos < 50; ++pos) {
    row.position = pos;
    row.seed = 99;
    const int32_t x = DrawToken(row, probe, scratch);
    row.seed = 100;
    differ += DrawToken(row, probe, scratch) != x;
  }
  EXPECT_GT(differ, 5);
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
  // logit_bias: biases in [-100, 100] and finite, ids non-negative and listed once, at most 1024.
  p.logit_bias = {{5, 100.f}, {0, -100.f}, {7, 0.25f}};
  EXPECT_TRUE(p.Validate().ok());
  for (const std::vector<std::pair<int32_t, float>>& bad :
       {std::vector<std::pair<int32_t, float>>{{5, 100.5f}}, {{5, -101.f}}, {{5, NAN}}, {{5, INFINITY}}, {{-1, 1.f}},
        {{4, 1.f}, {4, 2.f}}}) {
    p.logit_bias = bad;
    const absl::Status s = p.Validate();
    // A negative id is outside the vocabulary: OUT_OF_RANGE, as an id past its end is.
    EXPECT_EQ(s.code(), bad[0].first < 0 ? absl::StatusCode::kOutOfRange : absl::StatusCode::kInvalidArgument)
        << bad[0].first;
    EXPECT_TRUE(absl::StartsWith(s.message(), "logit_bias: ")) << s.message();
  }
  p.logit_bias.clear();
  for (int i = 0; i < kMaxLogitBias; ++i) p.logit_bias.emplace_back(i, -1.f);
  EXPECT_TRUE(p.Validate().ok());
  p.logit_bias.emplace_back(kMaxLogitBias, -1.f);
  EXPECT_NE(p.Validate().message().find("at most 1024"), absl::string_view::npos) << p.Validate();
}

// The bias is added before the penalties (vLLM's order): a prompt token with logit -1 and bias
// +1.5 is positive when the repetition penalty sees it, so it is divided, not multiplied.
TEST(Sampler, LogitBiasIsAddedBeforeThePenalties) {
  SamplingParams p;
  p.temperature = 0.f;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.logit_bias = {{1, 1.5f}, {2, -3.f}, {7, 2.f}};
  SequenceSampler s(p, std::vector<int32_t>{1});
  std::vector<float> l(10, 0.f);
  l[7] = 100.f;
  ASSERT_EQ(s.Sample(l), 7);  // output token 7 once
  std::vector<float> x = {1, -1, 4, 1, 1, 1, 1, 4, 1, 1};
  s.ApplyPenalties(x);
  EXPECT_FLOAT_EQ(x[1], (-1.0f + 1.5f) / 2.0f);  // biased, then a seen positive logit is divided
  EXPECT_FLOAT_EQ(x[2], 4.0f - 3.0f);            // biased only
  EXPECT_FLOAT_EQ(x[7], (4.0f + 2.0f) / 2.0f - 0.5f);  // biased, repetition, frequency
  EXPECT_FLOAT_EQ(x[0], 1.0f);
}

// +100 all but forces a token, -100 all but bans one; the reported logprobs stay the raw row's.
TEST(Sampler, LogitBiasForcesAndBansTokensAndLeavesLogprobsRaw) {
  for (uint64_t seed = 0; seed < 50; ++seed) {
    const std::vector<float> raw = Logits(seed);
    const int32_t argmax = static_cast<int32_t>(std::max_element(raw.begin(), raw.end()) - raw.begin());
    const int32_t forced = (argmax + 1 + static_cast<int32_t>(seed)) % static_cast<int32_t>(raw.size());
    SamplingParams p;
    p.temperature = 1.0f;
    p.seed = seed;
    p.has_seed = true;
    p.logit_bias = {{forced, 100.f}};
    SequenceSampler s(p, {});
    std::vector<float> row = raw;
    const RowDraw d = s.Draw({}, 2, row);
    EXPECT_EQ(d.token, forced);
    std::vector<float> lp;
    SequenceSampler::LogSoftmax(raw, lp);
    EXPECT_FLOAT_EQ(d.logprob, lp[forced]);
    ASSERT_EQ(d.top.size(), 2u);
    EXPECT_EQ(d.top[0].first, argmax);
    // Greedy with the argmax biased down by 100 picks the runner-up.
    p.temperature = 0.f;
    p.logit_bias = {{argmax, -100.f}};
    SequenceSampler g(p, {});
    row = raw;
    EXPECT_EQ(g.Sample(row), d.top[1].first);
  }
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

// The distribution of drawn tokens against an independent float64 model of the sampling order
// (logit bias, penalties, temperature, top-k, top-p over the top-k renormalised, min-p, renormalise): a
// Pearson chi-square over the kept tokens, and exactly zero draws of every filtered-out token.
// Small vocabularies and temperatures != 1, so a sampler that ignores temperature, keeps the wrong
// set or weights it wrongly fails. Seeds are fixed; the chi-square bound is the Wilson-Hilferty
// quantile at z = 6, whose tail probability is below 5e-10 for every df used here.
namespace sbserve {
namespace {

// 12 distinct logits, positive and negative, at least 0.1 apart.
const std::vector<float> kBase = {1.1f, 0.2f, -0.7f, 0.9f, -0.3f, 0.5f, -1.0f, 0.0f, 0.7f, -0.5f, 0.3f, -0.1f};

struct DistCase {
  SamplingParams params;
  std::vector<int32_t> prompt;
  std::vector<int32_t> history;  // output tokens recorded before the measured draw
  int draws = 40000;
};

// The kept tokens' probabilities (0 for filtered-out ones), computed from scratch in float64.
std::vector<double> ExpectedDistribution(const std::vector<float>& logits, const DistCase& c) {
  const SamplingParams& p = c.params;
  const int V = static_cast<int>(logits.size());
  std::vector<double> l(logits.begin(), logits.end());
  std::map<int32_t, int> counts;
  for (int32_t t : c.history) counts[t]++;
  std::set<int32_t> seen(c.prompt.begin(), c.prompt.end());
  for (const auto& [t, n] : counts) seen.insert(t);
  for (const auto& [t, b] : p.logit_bias) l[t] += b;
  for (int32_t t : seen) l[t] = l[t] > 0 ? l[t] / p.repetition_penalty : l[t] * p.repetition_penalty;
  for (const auto& [t, n] : counts) l[t] -= p.frequency_penalty * n + p.presence_penalty;
  std::vector<double> prob(V);
  const double mx = *std::max_element(l.begin(), l.end());
  double z = 0;
  for (int i = 0; i < V; ++i) z += prob[i] = std::exp((l[i] - mx) / p.temperature);
  for (double& x : prob) x /= z;
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  int keep = p.top_k > 0 ? std::min(p.top_k, V) : V;
  if (p.top_p < 1.0f) {
    double kept_mass = 0;
    for (int i = 0; i < keep; ++i) kept_mass += prob[order[i]];
    const double target = p.top_p * kept_mass;
    double cum = 0;
    int n = 0;
    while (n < keep && cum < target) cum += prob[order[n++]];
    // The cut is not a near tie, so float rounding inside the sampler cannot move it.
    EXPECT_GT(cum - target, 1e-4);
    EXPECT_GT(target - (cum - prob[order[n - 1]]), 1e-4);
    keep = n;
  }
  if (p.min_p > 0.f) {
    const double floor = p.min_p * prob[order[0]];
    int n = 0;
    for (int i = 0; i < keep; ++i) {
      EXPECT_GT(std::fabs(prob[order[i]] - floor), 1e-4 * floor);
      if (prob[order[i]] >= floor) n++;  // sorted, so the kept ones are a prefix
    }
    keep = n;
  }
  std::vector<double> out(V, 0.0);
  double mass = 0;
  for (int i = 0; i < keep; ++i) mass += prob[order[i]];
  for (int i = 0; i < keep; ++i) out[order[i]] = prob[order[i]] / mass;
  return out;
}

// Draw counts. Without penalties one seeded sampler draws them all (its recorded outputs do not
// matter); with penalties every draw uses a fresh sampler (seed + i) that first records `history`
// through rows where that token is certain, so each draw sees the same penalty state.
std::vector<int> DrawCounts(const std::vector<float>& logits, const DistCase& c, uint64_t seed) {
  const int V = static_cast<int>(logits.size());
  std::vector<int> counts(V, 0);
  SamplingParams p = c.params;
  p.has_seed = true;
  const bool stateful = p.repetition_penalty != 1.0f || p.frequency_penalty != 0.f || p.presence_penalty != 0.f;
  p.seed = seed;
  SequenceSampler shared(p, c.prompt);
  for (int i = 0; i < c.draws; ++i) {
    if (!stateful) {
      std::vector<float> row = logits;
      counts[shared.Sample(row)]++;
      continue;
    }
    p.seed = seed + static_cast<uint64_t>(i);
    SequenceSampler s(p, c.prompt);
    for (int32_t t : c.history) {
      std::vector<float> forced(V, -50.f);
      forced[t] = 50.f;
      const int32_t got = s.Sample(forced);
      if (got != t) {
        ADD_FAILURE() << "a certain token was not drawn: " << got << " != " << t;
        return counts;
      }
    }
    std::vector<float> row = logits;
    counts[s.Sample(row)]++;
  }
  return counts;
}

double ChiSquareBound(int df) {  // Wilson-Hilferty quantile at z = 6
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + 6.0 * std::sqrt(a), 3);
}

void ExpectDistribution(const std::vector<float>& logits, const DistCase& c, uint64_t seed) {
  const std::vector<double> want = ExpectedDistribution(logits, c);
  const std::vector<int> got = DrawCounts(logits, c, seed);
  std::string table;
  double chi2 = 0;
  int kept = 0;
  for (size_t t = 0; t < want.size(); ++t) {
    const double e = want[t] * c.draws;
    absl::StrAppend(&table, "\n  token ", t, ": expected ", e, ", drawn ", got[t]);
    if (want[t] == 0) {
      EXPECT_EQ(got[t], 0) << "token " << t << " is filtered out but was drawn";
      continue;
    }
    kept++;
    ASSERT_GE(e, 20.0) << "test design: too few expected draws of token " << t;
    EXPECT_GT(got[t], 0) << "token " << t << " is kept but never drawn";
    chi2 += (got[t] - e) * (got[t] - e) / e;
  }
  if (kept > 1) {
    EXPECT_LT(chi2, ChiSquareBound(kept - 1)) << "chi-square over " << kept << " kept tokens" << table;
  } else {
    EXPECT_EQ(got[std::max_element(want.begin(), want.end()) - want.begin()], c.draws) << table;
  }
}

// The kept set of a case, for checking that a case really filters what it means to.
int KeptCount(const DistCase& c) {
  const std::vector<double> w = ExpectedDistribution(kBase, c);
  return static_cast<int>(std::count_if(w.begin(), w.end(), [](double x) { return x > 0; }));
}

TEST(SamplerDistribution, UnfilteredFollowsTheTemperedSoftmax) {
  for (float t : {0.5f, 1.7f}) {
    SCOPED_TRACE(t);
    DistCase c;
    c.params.temperature = t;
    ExpectDistribution(kBase, c, 11);
  }
}

TEST(SamplerDistribution, TopKKeepsExactlyTheKMostLikelyWithTemperedWeights) {
  for (float t : {0.5f, 1.7f}) {
    SCOPED_TRACE(t);
    DistCase c;
    c.params.temperature = t;
    c.params.top_k = 5;
    ASSERT_EQ(KeptCount(c), 5);
    ExpectDistribution(kBase, c, 12);
  }
}

TEST(SamplerDistribution, TopPKeepsExactlyTheNucleusWithTemperedWeights) {
  for (auto [t, top_p] : {std::pair{0.5f, 0.7f}, std::pair{1.7f, 0.8f}, std::pair{1.7f, 0.3f}}) {
    SCOPED_TRACE(absl::StrCat("T=", t, " top_p=", top_p));
    DistCase c;
    c.params.temperature = t;
    c.params.top_p = top_p;
    const int kept = KeptCount(c);
    ASSERT_GT(kept, 1);
    ASSERT_LT(kept, static_cast<int>(kBase.size()));
    ExpectDistribution(kBase, c, 13);
  }
}

TEST(SamplerDistribution, MinPKeepsEveryTokenAboveTheFloorWithTemperedWeights) {
  for (auto [t, min_p] : {std::pair{0.5f, 0.15f}, std::pair{1.7f, 0.5f}, std::pair{1.7f, 0.75f}}) {
    SCOPED_TRACE(absl::StrCat("T=", t, " min_p=", min_p));
    DistCase c;
    c.params.temperature = t;
    c.params.min_p = min_p;
    const int kept = KeptCount(c);
    ASSERT_GT(kept, 1);
    ASSERT_LT(kept, static_cast<int>(kBase.size()));
    ExpectDistribution(kBase, c, 14);
  }
}

TEST(SamplerDistribution, TopKTopPAndMinPTogether) {
  // Top-p over the top-k renormalised: the top 5 at T = 1.7 hold 57% of the mass, so
  // top_p = 0.75 of the full distribution would keep all 5 but of the top 5 keeps 4.
  DistCase c;
  c.params.temperature = 1.7f;
  c.params.top_k = 5;
  c.params.top_p = 0.75f;
  ASSERT_EQ(KeptCount(c), 4);
  ExpectDistribution(kBase, c, 15);
  c.params.temperature = 0.5f;
  c.params.top_k = 3;
  c.params.top_p = 0.6f;
  ASSERT_EQ(KeptCount(c), 2);
  ExpectDistribution(kBase, c, 16);
  c.params.temperature = 1.7f;
  c.params.top_k = 8;
  c.params.top_p = 0.8f;
  c.params.min_p = 0.6f;
  const int kept = KeptCount(c);
  ASSERT_GT(kept, 1);
  ASSERT_LT(kept, 8);
  ExpectDistribution(kBase, c, 17);
}

// Prompt tokens 0 (positive logit), 3 (positive, also an output) and 6 (negative); outputs 5
// twice, 9 (negative) once and 3 once.
TEST(SamplerDistribution, PenaltiesThenTemperatureThenFilters) {
  DistCase base;
  base.prompt = {0, 3, 6};
  base.history = {5, 9, 5, 3};
  base.draws = 30000;
  base.params.repetition_penalty = 1.3f;
  base.params.frequency_penalty = 0.5f;
  base.params.presence_penalty = 0.3f;
  for (float t : {0.5f, 1.7f}) {
    SCOPED_TRACE(absl::StrCat("T=", t));
    DistCase c = base;
    c.params.temperature = t;
    ExpectDistribution(kBase, c, 100);
    c.params.top_k = 6;
    ASSERT_EQ(KeptCount(c), 6);
    ExpectDistribution(kBase, c, 200);
    c.params.top_k = 0;
    c.params.top_p = 0.75f;
    ExpectDistribution(kBase, c, 300);
    c.params.top_p = 1.0f;
    c.params.min_p = 0.3f;
    ExpectDistribution(kBase, c, 400);
  }
  // Each penalty alone, so one that is skipped is not hidden behind the others.
  for (int which = 0; which < 3; ++which) {
    DistCase c;
    c.prompt = base.prompt;
    c.history = base.history;
    c.draws = 30000;
    c.params.temperature = 0.5f;
    if (which == 0) c.params.repetition_penalty = 1.3f;
    if (which == 1) c.params.frequency_penalty = 0.5f;
    if (which == 2) c.params.presence_penalty = 0.3f;
    SCOPED_TRACE(which);
    ExpectDistribution(kBase, c, 500 + 100000 * which);
  }
}

// Biases on a prompt token with a negative logit that the bias makes positive (6), an output token
// (5) and two untouched by penalties (1, 11), with the repetition penalty and the filters after them.
TEST(SamplerDistribution, LogitBiasThenPenaltiesThenTemperatureThenFilters) {
  DistCase c;
  c.prompt = {0, 3, 6};
  c.history = {5, 9};
  c.draws = 30000;
  c.params.temperature = 0.7f;
  c.params.repetition_penalty = 1.3f;
  c.params.frequency_penalty = 0.2f;
  c.params.logit_bias = {{1, 0.8f}, {5, -0.4f}, {6, 1.35f}, {11, -0.9f}};
  ExpectDistribution(kBase, c, 700);
  c.params.top_k = 5;
  ASSERT_EQ(KeptCount(c), 5);
  ExpectDistribution(kBase, c, 800);
}

}  // namespace
}  // namespace sbserve
