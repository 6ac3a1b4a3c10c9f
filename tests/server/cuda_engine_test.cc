// The engine and scheduler over the CUDA backend: a KV cache too small for the offered load forces
// preemption (blocks freed, the sequence recomputed later); every request must still finish with
// the tokens it gets when the cache is large enough for all of them. Skips without a device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "engine/engine.h"
#include "engine/model_writer.h"

namespace sbserve {
namespace {

namespace fs = std::filesystem;

bool HaveGpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

struct Result {
  std::vector<int32_t> ids;
  GenerateEvent final;
  bool done = false;
};

// Runs `n` greedy requests concurrently through a CUDA engine with `kv_blocks` blocks; returns
// each request's tokens and the engine's preemption count.
std::map<std::string, Result> RunAll(const Checkpoint& ckpt, int kv_blocks, int n, uint64_t* preemptions) {
  auto backend = CreateCudaBackend(ckpt, {});
  EXPECT_TRUE(backend.ok()) << backend.status();
  EngineOptions o;
  o.kv_num_blocks = kv_blocks;
  o.kv_block_size = 16;
  o.max_batch_tokens = 256;
  o.sampling_threads = 1;
  auto engine = Engine::CreateWithCodec(o, *std::move(backend), nullptr);
  EXPECT_TRUE(engine.ok()) << engine.status();
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, Result> results;
  std::mt19937_64 rng(99);
  for (int i = 0; i < n; ++i) {
    GenerateRequest r;
    r.request_id = "r" + std::to_string(i);
    const int len = 30 + static_cast<int>(rng() % 40);
    for (int t = 0; t < len; ++t) r.prompt_ids.push_back(1 + static_cast<int32_t>(rng() % 2000));
    r.max_tokens = 80;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    const std::string id = r.request_id;
    results[id];
    absl::Status st = (*engine)->Submit(std::move(r), [&, id](GenerateEvent e) {
      std::lock_guard<std::mutex> lock(mu);
      Result& res = results[id];
      res.ids.insert(res.ids.end(), e.token_ids.begin(), e.token_ids.end());
      if (e.finished) {
        res.final = std::move(e);
        res.done = true;
        cv.notify_all();
      }
    });
    EXPECT_TRUE(st.ok()) << st;
  }
  std::unique_lock<std::mutex> lock(mu);
  const bool all = cv.wait_for(lock, std::chrono::seconds(120), [&] {
    for (auto& [id, r] : results) {
      if (!r.done) return false;
    }
    return true;
  });
  EXPECT_TRUE(all) << "requests did not finish";
  lock.unlock();
  *preemptions = (*engine)->Stats().preemptions;
  return results;
}

TEST(CudaEngine, PreemptedRequestsFinishWithTheSameGreedyTokens) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const std::string dir = (fs::temp_directory_path() / ("sbserve_cuda_engine" + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  CreateOptions co;
  co.preset = "small-3b";
  co.variant = "R1";
  co.dtype = "bf16";
  co.seed = 31;
  co.tokenizer = false;
  ASSERT_TRUE(WriteRandomCheckpoint(dir, co).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const int n = 12;
  // Each request needs up to 69 + 80 = 149 tokens (10 blocks): 12 of them need ~110 blocks.
  uint64_t pre_big = 0, pre_small = 0;
  auto roomy = RunAll(**ckpt, 512, n, &pre_big);
  auto tight = RunAll(**ckpt, 24, n, &pre_small);
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
  const std::string dir = (fs::temp_directory_path() / ("sbserve_cuda_cap" + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  CreateOptions co;
  co.preset = "small-3b";
  co.variant = "R1";
  co.dtype = "bf16";
  co.seed = 5;
  co.tokenizer = false;
  ASSERT_TRUE(WriteRandomCheckpoint(dir, co).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  size_t free0 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  const double util = 0.5;
  auto backend = CreateCudaBackend(**ckpt, {});
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
  auto backend2 = CreateCudaBackend(**ckpt, {});
  ASSERT_TRUE(backend2.ok()) << backend2.status();
  EngineOptions o2;
  o2.gpu_memory_utilization = 0.7;
  auto engine2 = Engine::CreateWithCodec(o2, *std::move(backend2), nullptr);
  ASSERT_TRUE(engine2.ok()) << engine2.status();
  std::printf("%s\n", (*engine2)->capacity().summary.c_str());
  EXPECT_LT((*engine2)->capacity().num_blocks, plan.num_blocks);
  // And one at 0.5 does not fit at all: refused with the numbers, not an out-of-memory crash.
  auto backend3 = CreateCudaBackend(**ckpt, {});
  ASSERT_TRUE(backend3.ok()) << backend3.status();
  auto engine3 = Engine::CreateWithCodec(o, *std::move(backend3), nullptr);
  ASSERT_FALSE(engine3.ok());
  EXPECT_NE(engine3.status().message().find("--gpu-memory-utilization"), std::string::npos) << engine3.status();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sbserve
