// Which tokens the filters keep, checked by what gets drawn: a token of the kept set with a
// large share must show up, a token outside it never. Written against mutants of the campaign
// in tests/mutants/ that draw only from a subset of the right set, which the membership checks
// of sampler_test.cc cannot see.
#include <cmath>
#include <set>
#include <vector>

#include "engine/sampler.h"
#include "gtest/gtest.h"

namespace sbserve {
namespace {

std::vector<float> LogWeights(const std::vector<float>& w) {
  std::vector<float> l;
  for (float x : w) l.push_back(std::log(x));
  return l;
}

std::multiset<int32_t> Draw(const SamplingParams& p, const std::vector<float>& logits, int n) {
  SequenceSampler s(p, {});
  std::multiset<int32_t> seen;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    seen.insert(s.Sample(l));
  }
  return seen;
}

// Probabilities 0.5, 0.3, 0.2 and top_p = 0.6: the nucleus is the smallest set with mass >= 0.6,
// {0, 1}. Token 1 is drawn with probability 0.375 each time: 400 draws all missing it happen
// with probability 0.625^400 < 1e-80.
TEST(SamplerSets, TopPKeepsTheTokenThatCrossesTheTarget) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.6f;
  p.seed = 11;
  p.has_seed = true;
  const auto seen = Draw(p, LogWeights({5, 3, 2}), 400);
  EXPECT_GT(seen.count(1), 0u) << "token 1 completes the 0.6 nucleus";
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_EQ(seen.count(0) + seen.count(1), 400u);
}

// Probabilities 0.4, 0.3, 0.2, 0.1 and min_p = 0.3: the floor is 0.3 * 0.4 = 0.12, so tokens
// 0, 1 and 2 stay and token 3 goes. Token 2 has probability 0.2 / 0.9 per draw: 400 draws
// without it happen with probability below 1e-40.
TEST(SamplerSets, MinPIsRelativeToTheMostLikelyToken) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.min_p = 0.3f;
  p.seed = 12;
  p.has_seed = true;
  const auto seen = Draw(p, LogWeights({4, 3, 2, 1}), 400);
  EXPECT_GT(seen.count(1), 0u);
  EXPECT_GT(seen.count(2), 0u) << "0.2 >= 0.3 * 0.4: token 2 is above the min-p floor";
  EXPECT_EQ(seen.count(3), 0u);
  EXPECT_EQ(seen.count(0) + seen.count(1) + seen.count(2), 400u);
}

}  // namespace
}  // namespace sbserve
