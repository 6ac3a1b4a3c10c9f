// The engine and scheduler over the CUDA backend: a KV cache too small for the offered load forces
// preemption (blocks freed, the sequence recomputed later); every request must still finish with
// the tokens it gets when the cache is large enough for all of them. And automatic prefix
// caching: a prompt whose leading blocks come from the cache gives the logits and tokens of the
// prompt computed in full, within the GPU tolerance. Skips without a device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "tests/engine/gpu_test_util.h"
#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/engine.h"
#include "engine/model/model_writer.h"
#include "tests/engine/test_util.h"
#include "tests/server/collector.h"

namespace sbserve {
namespace {


using testing::HaveGpu;

// The 3B-shaped random checkpoint of these tests, written once per process.
const Checkpoint& SmallCheckpoint() {
  CreateOptions co;
  co.preset = "small-3b";
  co.variant = "R1";
  co.dtype = "bf16";
  co.seed = 31;
  return testing::SharedRandomCheckpoint("cuda_engine", co);
}

struct Result {
  std::vector<int32_t> ids;
  GenerateEvent final;
  bool done = false;
};

// Runs `n` greedy requests concurrently through a CUDA engine with `kv_blocks` blocks; returns
// each request's tokens and the engine's preemption count.
// Waits until every collector's request has finished, at most `timeout` in all.
std::map<std::string, Result> WaitAll(std::map<std::string, testing::Collector>& events, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::map<std::string, Result> results;
  bool all = true;
  for (auto& [id, c] : events) {
    Result& r = results[id];
    r.done = c.WaitUntil(deadline);
    all = all && r.done;
    r.ids = c.ids();
    r.final = c.final();
  }
  EXPECT_TRUE(all) << "requests did not finish";
  return results;
}

// A CUDA engine over `ckpt`: `kv_blocks` blocks of 16 tokens, steps of `max_batch_tokens`, the
// draws on the engine thread.
absl::StatusOr<std::unique_ptr<Engine>> TestEngine(const Checkpoint& ckpt, int kv_blocks, int max_batch_tokens,
                                                   bool deterministic = false) {
  CudaBackendOptions bo;
  bo.deterministic = deterministic;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(ckpt, bo);
  if (!backend.ok()) return backend.status();
  EngineOptions o;
  o.kv_num_blocks = kv_blocks;
  o.kv_block_size = 16;
  o.max_batch_tokens = max_batch_tokens;
  o.sampling_threads = 1;
  return Engine::CreateWithCodec(o, *std::move(backend), nullptr);
}

std::map<std::string, Result> RunAll(const Checkpoint& ckpt, int kv_blocks, int n, uint64_t* preemptions) {
  std::map<std::string, testing::Collector> events;  // outlives the engine
  auto engine = TestEngine(ckpt, kv_blocks, 256);
  EXPECT_TRUE(engine.ok()) << engine.status();
  std::mt19937_64 rng(99);
  for (int i = 0; i < n; ++i) {
    GenerateRequest r;
    r.request_id = "r" + std::to_string(i);
    const int len = 30 + static_cast<int>(rng() % 40);
    for (int t = 0; t < len; ++t) r.prompt_ids.push_back(1 + static_cast<int32_t>(rng() % 2000));
    r.max_tokens = 80;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    testing::Collector& c = events[r.request_id];
    absl::Status st = (*engine)->Submit(std::move(r), c.Sink());
    EXPECT_TRUE(st.ok()) << st;
  }
  std::map<std::string, Result> results = WaitAll(events, absl::Seconds(120));
  *preemptions = (*engine)->Stats().preemptions;
  return results;
}

TEST(CudaEngine, PreemptedRequestsFinishWithTheSameGreedyTokens) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const Checkpoint& ckpt = SmallCheckpoint();
  const int n = 12;
  // Each request needs up to 69 + 80 = 149 tokens (10 blocks): 12 of them need ~110 blocks.
  uint64_t pre_big = 0, pre_small = 0;
  auto roomy = RunAll(ckpt, 512, n, &pre_big);
  auto tight = RunAll(ckpt, 24, n, &pre_small);
  EXPECT_EQ(pre_big, 0u);
  EXPECT_GT(pre_small, 0u) << "the small cache did not force a preemption";
  std::printf("preemptions with 24 blocks: %llu\n", static_cast<unsigned long long>(pre_small));
  int differing = 0;
  for (int i = 0; i < n; ++i) {
    const std::string id = "r" + std::to_string(i);
    SCOPED_TRACE(id);
    ASSERT_TRUE(roomy[id].done && tight[id].done);
    EXPECT_TRUE(tight[id].final.status.ok()) << tight[id].final.status;
    EXPECT_EQ(tight[id].final.finish_reason, FinishReason::kLength);
    ASSERT_EQ(roomy[id].ids.size(), 80u);
    ASSERT_EQ(tight[id].ids.size(), 80u);
    if (roomy[id].ids != tight[id].ids) ++differing;
    EXPECT_EQ(roomy[id].ids, tight[id].ids);
    std::printf("%s: preemptions %d\n", id.c_str(), tight[id].final.timings.preemptions);
  }
  EXPECT_EQ(differing, 0);
}

// Auto sizing on the device (engine/capacity.h): after Create, the process's share of the device
// stays within --gpu-memory-utilization (plus the slack of one KV block and allocation rounding),
// the cache holds more than a context, the warm-up measured a prefill rate, and a second engine
// on the same device at a lower utilization gets a smaller cache, not an out-of-memory error.
TEST(CudaEngine, AutoKvCacheFillsTheDeviceUpToTheUtilization) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const Checkpoint& ckpt = SmallCheckpoint();
  size_t free0 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  const double util = 0.5;
  auto backend = CreateCudaBackend(ckpt, {});
  ASSERT_TRUE(backend.ok()) << backend.status();
  EngineOptions o;
  o.gpu_memory_utilization = util;
  auto engine = Engine::CreateWithCodec(o, *std::move(backend), nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const CapacityPlan& plan = (*engine)->capacity();
  std::printf("%s\n", plan.summary.c_str());
  size_t free1 = 0;
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  const double used = static_cast<double>(total - free1);
  const int64_t per_block = (*engine)->backend().KvBytesPerToken() * 16;
  EXPECT_LE(used, util * total + per_block + (64 << 20)) << plan.summary;
  EXPECT_GE(used, util * total - 2.0 * per_block - (256 << 20)) << plan.summary;  // it did use the budget
  EXPECT_GT(int64_t{plan.num_blocks} * 16, (*engine)->model_config().n_positions);
  EXPECT_GT(plan.prefill_tokens_per_s, 0);
  EXPECT_GT(plan.activation_bytes, 0);
  EXPECT_EQ((*engine)->options().max_batch_tokens, 2048);
  EXPECT_GE((*engine)->options().max_queued_tokens, int64_t{plan.num_blocks} * 16);

  // Another engine on the same device at 0.7: it sees the first one's memory as in use.
  auto backend2 = CreateCudaBackend(ckpt, {});
  ASSERT_TRUE(backend2.ok()) << backend2.status();
  EngineOptions o2;
  o2.gpu_memory_utilization = 0.7;
  auto engine2 = Engine::CreateWithCodec(o2, *std::move(backend2), nullptr);
  ASSERT_TRUE(engine2.ok()) << engine2.status();
  std::printf("%s\n", (*engine2)->capacity().summary.c_str());
  EXPECT_LT((*engine2)->capacity().num_blocks, plan.num_blocks);
  // And one at 0.5 does not fit at all: refused with the numbers, not an out-of-memory crash.
  auto backend3 = CreateCudaBackend(ckpt, {});
  ASSERT_TRUE(backend3.ok()) << backend3.status();
  auto engine3 = Engine::CreateWithCodec(o, *std::move(backend3), nullptr);
  ASSERT_FALSE(engine3.ok());
  EXPECT_NE(engine3.status().message().find("--gpu-memory-utilization"), std::string::npos) << engine3.status();
}

double RelL2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

size_t ArgMax(const std::vector<float>& v) {
  return static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// The backend as the prefix cache drives it: the last-token logits of a 100-token prompt computed
// in one chunk, against a chunk of its last 4 tokens whose block table starts with the 6 blocks
// (96 tokens) the first pass wrote, as a cache hit hands them over, and ends in a fresh block.
TEST(CudaEngine, LogitsAfterACachedPrefixMatchTheFullPrompt) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const Checkpoint& ckpt = SmallCheckpoint();
  auto backend = CreateCudaBackend(ckpt, {});
  ASSERT_TRUE(backend.ok()) << backend.status();
  ASSERT_TRUE((*backend)->InitKvCache({64, 16}).ok());
  const int64_t V = ckpt.config().vocab_size;
  std::mt19937_64 rng(5);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 100; ++t) prompt.push_back(1 + static_cast<int32_t>(rng() % 2000));

  Batch full;
  full.tokens = prompt;
  for (int p = 0; p < 100; ++p) full.positions.push_back(p);
  full.cu_seqlens_q = {0, 100};
  full.context_lens = {100};
  full.max_blocks_per_seq = 7;
  full.block_tables = {0, 1, 2, 3, 4, 5, 6};
  full.logit_rows = {99};
  std::vector<float> want(static_cast<size_t>(V));
  ASSERT_TRUE((*backend)->Forward(full, want).ok());

  Batch cached;
  cached.tokens.assign(prompt.begin() + 96, prompt.end());
  cached.positions = {96, 97, 98, 99};
  cached.cu_seqlens_q = {0, 4};
  cached.context_lens = {100};
  cached.max_blocks_per_seq = 7;
  cached.block_tables = {0, 1, 2, 3, 4, 5, 10};  // blocks 0-5 shared, block 10 its own
  cached.logit_rows = {3};
  std::vector<float> got(static_cast<size_t>(V), NAN);
  ASSERT_TRUE((*backend)->Forward(cached, got).ok());
  for (float x : got) ASSERT_TRUE(std::isfinite(x));
  const double err = RelL2(got, want);
  std::printf("cached-prefix logits rel L2 vs full prompt: %.2e\n", err);
  EXPECT_LE(err, 2e-2);  // the GPU tolerance of tests/engine/cuda_backend_test.cc
  EXPECT_EQ(ArgMax(got), ArgMax(want));

  // The same 4-token chunk after the prefix of another prompt (fully written blocks 20-25) is
  // further off: the comparison above can tell a wrong prefix.
  Batch other = full;
  for (int p = 0; p < 100; ++p) other.tokens[p] = 1 + static_cast<int32_t>(rng() % 2000);
  other.block_tables = {20, 21, 22, 23, 24, 25, 26};
  std::vector<float> unused(static_cast<size_t>(V));
  ASSERT_TRUE((*backend)->Forward(other, unused).ok());
  cached.block_tables = {20, 21, 22, 23, 24, 25, 11};
  std::vector<float> wrong(static_cast<size_t>(V), NAN);
  ASSERT_TRUE((*backend)->Forward(cached, wrong).ok());
  const double wrong_err = RelL2(wrong, want);
  std::printf("another prompt's prefix: rel L2 %.2e\n", wrong_err);
  EXPECT_GT(wrong_err, 4 * err);
  EXPECT_GT(wrong_err, 1e-3);
}

// The engine with prefix caching: the same greedy request computed in full (cache_prefix off),
// then twice with the cache (the second run finds all but its last block cached) gives the same
// tokens and, within the GPU tolerance, the same logprobs.
TEST(CudaEngine, ACachedPrefixGivesTheSameGreedyTokens) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const Checkpoint& ckpt = SmallCheckpoint();
  auto engine = TestEngine(ckpt, 256, 256);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::mt19937_64 rng(8);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 100; ++t) prompt.push_back(1 + static_cast<int32_t>(rng() % 2000));

  auto run = [&](const std::string& id, bool cache) {
    GenerateRequest r;
    r.request_id = id;
    r.prompt_ids = prompt;
    r.max_tokens = 40;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    r.logprobs = 0;
    r.cache_prefix = cache;
    testing::Collector c;
    EXPECT_TRUE((*engine)->Submit(std::move(r), c.Sink()).ok());
    Result res;
    res.done = c.Wait(absl::Seconds(60));
    EXPECT_TRUE(res.done);
    res.ids = c.ids();
    res.final = c.final();
    return std::make_pair(res, c.logprobs());
  };
  const auto [full, full_lp] = run("full", false);
  const auto [first, first_lp] = run("first", true);
  const uint64_t hits_before = (*engine)->Stats().prefix_cache_hits;
  const auto [again, again_lp] = run("again", true);
  EXPECT_EQ((*engine)->Stats().prefix_cache_hits - hits_before, 96u);
  ASSERT_EQ(full.ids.size(), 40u);
  EXPECT_EQ(first.ids, full.ids);
  EXPECT_EQ(again.ids, full.ids);
  ASSERT_EQ(again_lp.size(), full_lp.size());
  double worst = 0;
  for (size_t i = 0; i < full_lp.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::fabs(again_lp[i].logprob - full_lp[i].logprob)));
  }
  std::printf("cached-prefix greedy run: max |logprob difference| %.3e\n", worst);
  EXPECT_LE(worst, 5e-2);
  EXPECT_EQ((*engine)->Stats().kv_blocks_used, 0);
}

}  // namespace
}  // namespace sbserve

namespace sbserve {
namespace {

// Batch-invariant mode (CudaBackendOptions::deterministic). Two probe requests, one greedy and one
// seeded with temperature 0.9 / top_p 0.95, run alone, beside 40 concurrent sampled streams, and
// beside 12 streams in a cache small enough to force preemptions with 32-token prefill chunks.
// Their tokens must be bitwise the same in all three. The default mode is run alone and under load
// too, and how many probe tokens differ there is printed (not asserted: it depends on the rounding).
struct ProbeRun {
  std::map<std::string, std::vector<int32_t>> ids;
  std::map<std::string, Result> all;  // every request, probes and others
  uint64_t preemptions = 0;
};

ProbeRun RunProbes(const Checkpoint& ckpt, bool deterministic, int kv_blocks, int max_batch_tokens, int others,
                   bool overlap = true) {
  std::map<std::string, testing::Collector> events;  // outlives the engine
  CudaBackendOptions bo;
  bo.deterministic = deterministic;
  auto backend = CreateCudaBackend(ckpt, bo);
  EXPECT_TRUE(backend.ok()) << backend.status();
  EngineOptions o;
  o.kv_num_blocks = kv_blocks;
  o.kv_block_size = 16;
  o.max_batch_tokens = max_batch_tokens;
  o.max_queued_tokens = 1 << 20;
  o.enable_prefix_caching = false;
  o.overlap_steps = overlap;
  auto engine = Engine::CreateWithCodec(o, *std::move(backend), nullptr);
  EXPECT_TRUE(engine.ok()) << engine.status();
  std::mt19937_64 rng(7);
  auto submit = [&](const std::string& id, std::vector<int32_t> prompt, float temperature, uint64_t seed) {
    GenerateRequest r;
    r.request_id = id;
    r.prompt_ids = std::move(prompt);
    r.max_tokens = 64;
    r.sampling.temperature = temperature;
    r.sampling.top_p = temperature > 0 ? 0.95f : 1.0f;
    r.sampling.seed = seed;
    r.sampling.has_seed = true;
    r.ignore_eos = true;
    if (id[0] == 'o' && seed % 3 == 1) {  // some others stop early, with logprobs
      r.stop_token_ids = {7, 11, 13, 17, 19, 23, 29, 31};
      r.logprobs = 2;
    }
    absl::Status st = (*engine)->Submit(std::move(r), events[id].Sink());
    EXPECT_TRUE(st.ok()) << st;
  };
  auto prompt = [&](int len, uint64_t salt) {
    std::mt19937_64 g(salt);
    std::vector<int32_t> p;
    for (int t = 0; t < len; ++t) p.push_back(1 + static_cast<int32_t>(g() % 2000));
    return p;
  };
  // Others first and in the middle, so that the probes share steps with them from the start.
  for (int i = 0; i < others / 2; ++i) submit("o" + std::to_string(i), prompt(20 + rng() % 90, 100 + i), 0.8f, i);
  submit("greedy", prompt(75, 1), 0.f, 0);
  submit("seeded", prompt(53, 2), 0.9f, 1234);
  for (int i = others / 2; i < others; ++i) submit("o" + std::to_string(i), prompt(20 + rng() % 90, 100 + i), 0.8f, i);
  std::map<std::string, Result> results = WaitAll(events, absl::Seconds(180));
  ProbeRun run;
  for (const char* id : {"greedy", "seeded"}) {
    EXPECT_TRUE(results[id].final.status.ok()) << results[id].final.status;
    EXPECT_EQ(results[id].ids.size(), 64u) << id;
    run.ids[id] = results[id].ids;
  }
  run.preemptions = (*engine)->Stats().preemptions;
  run.all = std::move(results);
  return run;
}

int Differing(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  int n = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += a[i] != b[i];
  return n;
}

TEST(CudaEngine, DeterministicModeGivesTheSameTokensAloneUnderLoadAndAfterPreemption) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const Checkpoint& ckpt = SmallCheckpoint();
  const ProbeRun alone = RunProbes(ckpt, true, 1024, 256, 0);
  const ProbeRun loaded = RunProbes(ckpt, true, 1024, 256, 40);
  const ProbeRun preempted = RunProbes(ckpt, true, 40, 32, 12);
  EXPECT_EQ(alone.preemptions, 0u);
  EXPECT_GT(preempted.preemptions, 0u) << "the small cache did not force a preemption";
  for (const char* id : {"greedy", "seeded"}) {
    SCOPED_TRACE(id);
    EXPECT_EQ(loaded.ids.at(id), alone.ids.at(id));
    EXPECT_EQ(preempted.ids.at(id), alone.ids.at(id));
  }
  const ProbeRun d_alone = RunProbes(ckpt, false, 1024, 256, 0);
  const ProbeRun d_loaded = RunProbes(ckpt, false, 1024, 256, 40);
  const ProbeRun d_preempted = RunProbes(ckpt, false, 40, 32, 12);
  std::printf("default mode, tokens of 64 that differ from alone: under 40 streams greedy %d, seeded %d; "
              "preempted greedy %d, seeded %d\n",
              Differing(d_alone.ids.at("greedy"), d_loaded.ids.at("greedy")),
              Differing(d_alone.ids.at("seeded"), d_loaded.ids.at("seeded")),
              Differing(d_alone.ids.at("greedy"), d_preempted.ids.at("greedy")),
              Differing(d_alone.ids.at("seeded"), d_preempted.ids.at("seeded")));
}

// Prompt logprobs on the CUDA backend (logit rows inside prefill chunks, forced rows in the device
// sampler): each entry is the logprob that a request for the tokens before it reports when its
// first token is forced to that one by a +100 logit bias. In batch-invariant mode bitwise (a
// position's logits do not depend on the chunk it is computed in); by default within 2e-2 (bf16
// GEMMs picked by row count).
TEST(CudaEngine, PromptLogprobsMatchTheForcedFirstTokenOfEachPrefix) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const Checkpoint& ckpt = SmallCheckpoint();
  std::mt19937_64 g(5);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 300; ++t) prompt.push_back(1 + static_cast<int32_t>(g() % 2000));
  const std::vector<int> probes = {1, 63, 64, 65, 200, 256, 257, 299};
  for (bool deterministic : {true, false}) {
    SCOPED_TRACE(deterministic ? "deterministic" : "default");
    std::map<std::string, testing::Collector> events;  // outlives the engine
    auto engine = TestEngine(ckpt, 512, 96, deterministic);
    ASSERT_TRUE(engine.ok()) << engine.status();
    GenerateRequest r;
    r.request_id = "p";
    r.prompt_ids = prompt;
    r.max_tokens = 2;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    r.prompt_logprobs = 3;
    ASSERT_TRUE((*engine)->Submit(r, events["p"].Sink()).ok());
    for (int t : probes) {
      GenerateRequest f = r;
      f.request_id = "f" + std::to_string(t);
      f.prompt_ids.assign(prompt.begin(), prompt.begin() + t);
      f.prompt_logprobs = -1;
      f.logprobs = 0;
      f.max_tokens = 1;
      f.sampling.logit_bias = {{prompt[t], 100.f}};
      ASSERT_TRUE((*engine)->Submit(f, events[f.request_id].Sink()).ok());
    }
    std::map<std::string, Result> results = WaitAll(events, absl::Seconds(120));
    const std::vector<StepLogprobs> lps = events["p"].prompt_logprobs();
    ASSERT_EQ(lps.size(), prompt.size() - 1);
    for (size_t t = 1; t < prompt.size(); ++t) {
      ASSERT_EQ(lps[t - 1].token_id, prompt[t]);
      ASSERT_EQ(lps[t - 1].top.size(), 3u);
      EXPECT_LE(lps[t - 1].logprob, lps[t - 1].top[0].logprob + 1e-6f);
    }
    for (int t : probes) {
      const std::string id = "f" + std::to_string(t);
      ASSERT_EQ(results[id].ids, std::vector<int32_t>{prompt[t]}) << id;
      const float want = events[id].logprobs().at(0).logprob;
      if (deterministic) {
        EXPECT_EQ(lps[t - 1].logprob, want) << "prompt token " << t;
      } else {
        EXPECT_NEAR(lps[t - 1].logprob, want, 2e-2) << "prompt token " << t;
      }
    }
  }
}

// Overlapped steps (the CUDA backend feeds pending tokens from the previous step's draws on the
// device) give exactly the streams of steps run one at a time. In batch-invariant mode that is
// bitwise, for every request: 40 sampled streams beside the probes, and 12 in a cache that forces
// preemption with 32-token chunks.
TEST(CudaEngine, OverlappedStepsGiveTheStreamsOfStepsInOrder) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const Checkpoint& ckpt = SmallCheckpoint();
  for (auto [blocks, chunk, others] : {std::tuple{1024, 256, 40}, std::tuple{40, 32, 12}}) {
    SCOPED_TRACE(::testing::PrintToString(blocks));
    const ProbeRun in_order = RunProbes(ckpt, true, blocks, chunk, others, /*overlap=*/false);
    const ProbeRun overlapped = RunProbes(ckpt, true, blocks, chunk, others, /*overlap=*/true);
    ASSERT_EQ(in_order.all.size(), overlapped.all.size());
    int stopped = 0;
    for (const auto& [id, r] : in_order.all) {
      const Result& o = overlapped.all.at(id);
      EXPECT_EQ(o.ids, r.ids) << id;
      EXPECT_EQ(o.final.finish_reason, r.final.finish_reason) << id;
      stopped += r.final.finish_reason == FinishReason::kStop;
    }
    std::printf("kv blocks %d: %zu requests, %d ended by a stop id, preemptions %llu / %llu (in order / overlapped)\n",
                blocks, in_order.all.size(), stopped, static_cast<unsigned long long>(in_order.preemptions),
                static_cast<unsigned long long>(overlapped.preemptions));
  }
}

}  // namespace
}  // namespace sbserve
