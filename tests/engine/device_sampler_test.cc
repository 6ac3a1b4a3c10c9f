// The device sampler against the CPU sampler (engine/sampler.h) on identical logits: the same ids
// for greedy, tempered and filtered draws with logit biases, penalties and bans, at every
// parameter's edges, and the same logprobs; and the device's seeded draws against the tempered softmax (chi-square).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/engine/gpu_test_util.h"
#include "engine/cuda/device_sampler.h"
#include "engine/sampler.h"

namespace sbserve {
namespace {

using testing::HaveGpu;

// One row's request: parameters, prompt, output so far, banned ids and logprobs.
struct RowCase {
  SamplingParams params;
  std::vector<int32_t> prompt;
  std::vector<int32_t> history;
  std::vector<int32_t> banned;
  int logprobs = -1;
  int forced = -1;  // >= 0: a prompt-logprob row, no draw (RowSampling::forced_token = forced % V)
  std::string name;
};

// What the scheduler does on the host (DrawRow), from the sampler's description of its next draw.
RowDraw CpuSample(const RowCase& c, const SequenceSampler& s, std::vector<float> row) {
  RowSampling rs;
  std::vector<LogitAdjust> adjust;
  s.Describe(c.banned, c.logprobs, &rs, &adjust);
  if (c.forced >= 0) rs.forced_token = c.forced % static_cast<int32_t>(row.size());
  SamplingScratch scratch;
  return DrawRow(rs, adjust, row, scratch);
}

// A bias for token t unless it has one already (on a small vocabulary several picks are one token).
void AddBias(SamplingParams& p, int32_t t, float bias) {
  for (const auto& [id, b] : p.logit_bias) {
    if (id == t) return;
  }
  p.logit_bias.emplace_back(t, bias);
}

std::vector<RowCase> Cases(int V) {
  std::vector<RowCase> cases;
  auto add = [&](std::string name, auto set) {
    RowCase c;
    c.params.seed = 1000 + cases.size();
    c.params.has_seed = true;
    set(c);
    c.name = std::move(name);
    cases.push_back(std::move(c));
  };
  add("greedy", [](RowCase& c) { c.params.temperature = 0.f; });
  add("greedy+logprobs", [](RowCase& c) { c.params.temperature = 0.f; c.logprobs = 5; });
  for (float t : {1e-3f, 0.3f, 1.0f, 2.5f, 100.f}) {
    add(absl::StrCat("T=", t), [t](RowCase& c) { c.params.temperature = t; });
  }
  for (int k : {1, 2, 5, 50, V - 1, V, V + 10}) {
    add(absl::StrCat("top_k=", k), [k](RowCase& c) { c.params.temperature = 0.8f; c.params.top_k = k; });
  }
  for (float p : {1e-6f, 0.01f, 0.5f, 0.9f, 0.999f}) {
    add(absl::StrCat("top_p=", p), [p](RowCase& c) { c.params.temperature = 1.2f; c.params.top_p = p; });
  }
  for (float m : {1e-4f, 0.05f, 0.3f, 1.0f}) {
    add(absl::StrCat("min_p=", m), [m](RowCase& c) { c.params.temperature = 0.9f; c.params.min_p = m; });
  }
  add("top_k+top_p+min_p", [](RowCase& c) {
    c.params.temperature = 1.1f;
    c.params.top_k = 40;
    c.params.top_p = 0.8f;
    c.params.min_p = 0.02f;
  });
  add("top_k=V top_p=0.95", [V](RowCase& c) {
    c.params.temperature = 0.7f;
    c.params.top_k = V;
    c.params.top_p = 0.95f;
  });
  for (float rp : {0.5f, 1.3f, 10.f}) {
    add(absl::StrCat("repetition=", rp), [rp, V](RowCase& c) {
      c.params.temperature = 0.f;
      c.params.repetition_penalty = rp;
      for (int i = 0; i < 30; ++i) c.prompt.push_back((i * 7919) % V);
      for (int i = 0; i < 10; ++i) c.history.push_back((i * 104729 + 3) % V);
    });
  }
  add("frequency+presence", [V](RowCase& c) {
    c.params.temperature = 0.6f;
    c.params.frequency_penalty = 1.5f;
    c.params.presence_penalty = -0.7f;
    for (int i = 0; i < 40; ++i) c.history.push_back((i % 5) * 11 % V);
  });
  add("all penalties + filters + logprobs", [V](RowCase& c) {
    c.params.temperature = 0.9f;
    c.params.top_p = 0.9f;
    c.params.min_p = 0.01f;
    c.params.repetition_penalty = 1.2f;
    c.params.frequency_penalty = 0.4f;
    c.params.presence_penalty = 0.3f;
    for (int i = 0; i < 50; ++i) c.prompt.push_back((i * 31) % V);
    for (int i = 0; i < 20; ++i) c.history.push_back((i * 17) % V);
    c.logprobs = 20;
  });
  // Logit biases: forcing (+100) and banning (-100) in sampled and greedy rows, and small biases
  // under the penalties and filters (a bias is added before the penalties).
  add("logit_bias +100 sampled", [V](RowCase& c) {
    c.params.temperature = 1.3f;
    c.params.logit_bias = {{V / 3, 100.f}};
    c.logprobs = 2;
  });
  add("logit_bias -100 greedy", [V](RowCase& c) {
    c.params.temperature = 0.f;
    for (int32_t t : {0, V / 7, V / 5, V - 1}) AddBias(c.params, t, -100.f);
  });
  add("logit_bias + penalties + filters", [V](RowCase& c) {
    c.params.temperature = 0.8f;
    c.params.top_k = 20;
    c.params.top_p = 0.9f;
    c.params.repetition_penalty = 1.3f;
    c.params.frequency_penalty = 0.5f;
    for (int i = 0; i < 20; ++i) c.prompt.push_back((i * 13) % V);
    for (int i = 0; i < 12; ++i) c.history.push_back((i * 29 + 1) % V);
    for (int i = 0; i < 40 && i < V; ++i) AddBias(c.params, (i * 37) % V, 0.25f * static_cast<float>(i % 9) - 1.0f);
    c.logprobs = 4;
  });
  // Prompt-logprob rows: the token is given, only its logprob and the top n are computed, whatever
  // the request's own sampling parameters say (the scheduler describes these rows as greedy).
  add("forced token + logprobs", [](RowCase& c) {
    c.params.temperature = 0.f;
    c.forced = 12345;
    c.logprobs = 4;
  });
  add("forced token, tempered and filtered parameters", [](RowCase& c) {
    c.params.temperature = 0.9f;
    c.params.top_p = 0.5f;
    c.forced = 777;
    c.logprobs = 0;
  });
  add("banned greedy", [V](RowCase& c) {
    c.params.temperature = 0.f;
    c.banned = {0, 1, 2, V / 2, V - 1, V + 5};
    c.logprobs = 3;
  });
  add("banned sampled", [V](RowCase& c) {
    c.params.temperature = 1.f;
    c.params.top_k = 3;
    c.banned = {0, V / 3, V - 1};
    c.logprobs = 0;
  });
  return cases;
}

// Rows of N(0, 3) logits; some rows quantised to 0.5 (many exact ties), one spiky row.
std::vector<float> RowLogits(std::mt19937_64& rng, int V, int kind) {
  std::normal_distribution<float> n(0.f, 3.f);
  std::vector<float> row(V);
  for (float& x : row) x = n(rng);
  if (kind == 1) {
    for (float& x : row) x = std::round(x * 2.f) / 2.f;
  } else if (kind == 2) {
    for (float& x : row) x -= 20.f;
    row[V / 7] = 15.f;
    row[V / 5] = 14.5f;
  }
  return row;
}

void CompareOnVocabulary(int V, int steps) {
  std::mt19937_64 rng(V);
  const std::vector<RowCase> cases = Cases(V);
  const int R = static_cast<int>(cases.size()) * 3;  // every case on every logit kind
  std::vector<SequenceSampler> samplers;
  for (int r = 0; r < R; ++r) {
    const RowCase& c = cases[r % cases.size()];
    samplers.emplace_back(c.params, c.prompt);
    for (int32_t t : c.history) samplers.back().Record(t);
  }
  float* d_logits = nullptr;
  ASSERT_EQ(cudaMalloc(&d_logits, static_cast<size_t>(R) * V * 4), cudaSuccess);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cuda::DeviceSampler sampler;
  int compared = 0, sampled_differs_from_greedy = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<float> logits;
    SamplingBatch batch;
    std::vector<RowDraw> want;
    for (int r = 0; r < R; ++r) {
      const RowCase& c = cases[r % cases.size()];
      const std::vector<float> row = RowLogits(rng, V, r / static_cast<int>(cases.size()));
      logits.insert(logits.end(), row.begin(), row.end());
      batch.rows.emplace_back();
      samplers[r].Describe(c.banned, c.logprobs, &batch.rows.back(), &batch.adjust);
      if (c.forced >= 0) batch.rows.back().forced_token = c.forced % V;
      want.push_back(CpuSample(c, samplers[r], row));
      if (c.forced >= 0) EXPECT_EQ(want.back().token, c.forced % V) << "the CPU sampler drew on a forced row";
      const int32_t argmax = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
      if (c.params.temperature > 0 && c.forced < 0 && want.back().token != argmax) sampled_differs_from_greedy++;
    }
    ASSERT_EQ(cudaMemcpy(d_logits, logits.data(), logits.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
    SampledRows got;
    ASSERT_TRUE(sampler.Sample(d_logits, V, batch, &got, stream).ok());
    for (int r = 0; r < R; ++r) {
      const RowCase& c = cases[r % cases.size()];
      SCOPED_TRACE(absl::StrCat("V=", V, " step ", step, " row ", r, " (", c.name, ", logits kind ",
                                r / cases.size(), ")"));
      ASSERT_EQ(got.tokens[r], want[r].token);
      compared++;
      if (c.logprobs >= 0) {
        EXPECT_NEAR(got.logprobs[r], want[r].logprob, 1e-5f * std::max(1.f, std::fabs(want[r].logprob)));
        for (size_t j = 0; j < want[r].top.size(); ++j) {
          const size_t at = static_cast<size_t>(r) * got.top_n + j;
          EXPECT_EQ(got.top_ids[at], want[r].top[j].first) << "top " << j;
          EXPECT_NEAR(got.top_logprobs[at], want[r].top[j].second,
                      1e-5f * std::max(1.f, std::fabs(want[r].top[j].second)));
        }
      }
      for (int32_t b : c.banned) EXPECT_NE(got.tokens[r], b) << "a banned token was drawn";
      samplers[r].Record(got.tokens[r]);
    }
  }
  cudaStreamDestroy(stream);
  cudaFree(d_logits);
  EXPECT_EQ(compared, R * steps);
  // The sampled rows really sample: many draws are not the argmax.
  EXPECT_GT(sampled_differs_from_greedy, R * steps / 10);
}

TEST(DeviceSampler, SameIdsAndLogprobsAsTheCpuSamplerOnAModelSizedVocabulary) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  CompareOnVocabulary(49152, 12);
}

TEST(DeviceSampler, SameIdsAndLogprobsAsTheCpuSamplerOnSmallVocabularies) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  CompareOnVocabulary(1000, 20);
  CompareOnVocabulary(7, 50);
}

// Draws at 40000 positions of one seeded row against the tempered softmax (and its top-p nucleus).
TEST(DeviceSampler, SeededDrawsFollowTheTemperedDistribution) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const std::vector<float> base = {1.1f, 0.2f, -0.7f, 0.9f, -0.3f, 0.5f, -1.0f, 0.0f, 0.7f, -0.5f, 0.3f, -0.1f};
  const int V = static_cast<int>(base.size());
  const int kRows = 4000, kCalls = 10;
  for (float top_p : {1.0f, 0.6f}) {
    SCOPED_TRACE(top_p);
    const float T = 0.7f;
    std::vector<double> p(V);
    double z = 0;
    for (int i = 0; i < V; ++i) z += p[i] = std::exp(base[i] / T);
    for (double& x : p) x /= z;
    std::vector<int> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    std::vector<double> want(V, 0.0);
    double cum = 0, kept = 0;
    for (int j = 0; j < V && cum < top_p; ++j) {
      cum += p[order[j]];
      want[order[j]] = p[order[j]];
      kept += p[order[j]];
    }
    for (double& x : want) x /= kept;

    float* d = nullptr;
    ASSERT_EQ(cudaMalloc(&d, static_cast<size_t>(kRows) * V * 4), cudaSuccess);
    std::vector<float> logits;
    for (int r = 0; r < kRows; ++r) logits.insert(logits.end(), base.begin(), base.end());
    std::vector<int> counts(V, 0);
    cuda::DeviceSampler sampler;
    for (int call = 0; call < kCalls; ++call) {
      ASSERT_EQ(cudaMemcpy(d, logits.data(), logits.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
      SamplingBatch batch;
      for (int r = 0; r < kRows; ++r) {
        RowSampling rs;
        rs.temperature = T;
        rs.inv_temperature = 1.0f / T;
        rs.top_p = top_p;
        rs.seed = 77;
        rs.position = static_cast<int64_t>(call) * kRows + r;
        batch.rows.push_back(rs);
      }
      SampledRows got;
      ASSERT_TRUE(sampler.Sample(d, V, batch, &got, nullptr).ok());
      for (int32_t t : got.tokens) counts[t]++;
    }
    cudaFree(d);
    const int n = kRows * kCalls;
    double chi2 = 0;
    int df = -1;
    for (int t = 0; t < V; ++t) {
      if (want[t] == 0) {
        EXPECT_EQ(counts[t], 0) << "token " << t << " is outside the nucleus but was drawn";
        continue;
      }
      const double e = want[t] * n;
      chi2 += (counts[t] - e) * (counts[t] - e) / e;
      df++;
    }
    ASSERT_GT(df, 1);
    const double a = 2.0 / (9.0 * df);  // Wilson-Hilferty quantile at z = 6
    EXPECT_LT(chi2, df * std::pow(1.0 - a + 6.0 * std::sqrt(a), 3)) << "df " << df;
  }
}

// The edges where the kept set is known: top_k = 1, a tiny top_p and min_p = 1 keep only the most
// likely token; an empty batch returns nothing; a bad adjustment range is refused.
TEST(DeviceSampler, EdgesKeepOnlyTheArgmaxAndBadInputIsRefused) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const int V = 5000;
  std::mt19937_64 rng(3);
  std::vector<float> row = RowLogits(rng, V, 0);
  const int32_t argmax = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, static_cast<size_t>(V) * 4 * 3), cudaSuccess);
  cuda::DeviceSampler sampler;
  for (int64_t pos = 0; pos < 50; ++pos) {
    std::vector<float> logits;
    SamplingBatch batch;
    for (int r = 0; r < 3; ++r) {
      logits.insert(logits.end(), row.begin(), row.end());
      RowSampling rs;
      rs.temperature = 2.0f;
      rs.inv_temperature = 0.5f;
      rs.seed = 9;
      rs.position = pos;
      if (r == 0) rs.top_k = 1;
      if (r == 1) rs.top_p = 1e-7f;
      if (r == 2) rs.min_p = 1.0f;
      batch.rows.push_back(rs);
    }
    ASSERT_EQ(cudaMemcpy(d, logits.data(), logits.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
    SampledRows got;
    ASSERT_TRUE(sampler.Sample(d, V, batch, &got, nullptr).ok());
    for (int r = 0; r < 3; ++r) EXPECT_EQ(got.tokens[r], argmax) << "row " << r << " position " << pos;
  }
  SampledRows none;
  EXPECT_TRUE(sampler.Sample(d, V, SamplingBatch{}, &none, nullptr).ok());
  EXPECT_TRUE(none.tokens.empty());
  SamplingBatch bad;
  bad.rows.emplace_back();
  bad.rows[0].adjust_end = 4;  // no adjustments exist
  EXPECT_FALSE(sampler.Sample(d, V, bad, &none, nullptr).ok());
  cudaFree(d);
}

}  // namespace
}  // namespace sbserve
