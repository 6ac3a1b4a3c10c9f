// The CUDA backend against the fp32 CPU reference backend on the same bf16 checkpoints: every
// remainder variant, GQA, prefill, decode, and mixed decode + chunked-prefill steps.
// Skips (visibly) when no CUDA device is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "engine/kv_cache.h"
#include "engine/model_writer.h"
#include "tests/engine/test_util.h"

namespace sbserve {
namespace {

namespace fs = std::filesystem;

bool HaveGpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

struct Pair {
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<Backend> cpu, gpu;
};

Pair Load(const std::string& variant, int64_t kv_heads, const std::string& name) {
  const std::string dir = (fs::temp_directory_path() / ("sbserve_cuda_" + name + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  CreateOptions o;
  o.preset = "small";
  o.variant = variant;
  o.kv_heads = kv_heads;
  o.dtype = "bf16";
  o.seed = 17;
  o.tokenizer = false;
  EXPECT_TRUE(WriteRandomCheckpoint(dir, o).ok());
  Pair p;
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  p.ckpt = std::move(*ckpt);
  auto cpu = CreateCpuBackend(*p.ckpt, {});
  auto gpu = CreateCudaBackend(*p.ckpt, {});
  EXPECT_TRUE(gpu.ok()) << gpu.status();
  p.cpu = std::move(*cpu);
  p.gpu = std::move(*gpu);
  EXPECT_TRUE(p.cpu->InitKvCache({256, 16}).ok());
  EXPECT_TRUE(p.gpu->InitKvCache({256, 16}).ok());
  return p;
}

// Runs the same sequence of steps on both backends, comparing logits of every step.
void CompareSteps(Pair& p, uint64_t seed) {
  const int64_t V = p.ckpt->config().vocab_size;
  std::mt19937_64 rng(seed);
  auto ids = [&](int n) {
    std::vector<int32_t> v(n);
    for (int32_t& t : v) t = static_cast<int32_t>(rng() % V);
    return v;
  };
  KvBlockAllocator alloc(256, 16);
  std::vector<int32_t> ta, tb, tc;
  // Step 1: prefill a (70 tokens) and the first 33 of b.
  // Step 2: decode a, then chunked prefill of b's next 40 and c's 5.
  // Steps 3..10: decode all three.
  std::vector<std::vector<testing::ChunkSpec>> steps;
  steps.push_back({{ids(70), 0, &ta, true}, {ids(33), 0, &tb, true}});
  steps.push_back({{ids(1), 70, &ta, true}, {ids(40), 33, &tb, true}, {ids(5), 0, &tc, true}});
  for (int s = 0; s < 8; ++s) {
    steps.push_back({{ids(1), 71 + s, &ta, false}, {ids(1), 73 + s, &tb, false}, {ids(1), 5 + s, &tc, false}});
  }
  for (size_t s = 0; s < steps.size(); ++s) {
    Batch b = testing::PackBatch(steps[s], alloc);
    ASSERT_FALSE(b.tokens.empty());
    std::vector<float> want(b.logit_rows.size() * V), got(b.logit_rows.size() * V, NAN);
    ASSERT_TRUE(p.cpu->Forward(b, want).ok());
    absl::Status st = p.gpu->Forward(b, got);
    ASSERT_TRUE(st.ok()) << st;
    for (float x : got) ASSERT_TRUE(std::isfinite(x)) << "step " << s;
    const double err = testing::RelL2(got.data(), want.data(), want.size());
    EXPECT_LE(err, 2e-2) << "step " << s;
    std::printf("step %zu: logits rel L2 vs CPU fp32 %.2e\n", s, err);
    std::fflush(stdout);
  }
}

TEST(CudaBackend, MatchesCpuReferenceAllVariants) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  for (const char* v : {"R0", "R1", "R2"}) {
    SCOPED_TRACE(v);
    Pair p = Load(v, 0, v);
    CompareSteps(p, 7);
  }
}

TEST(CudaBackend, MatchesCpuReferenceGqa) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  Pair p = Load("R1", 2, "gqa");
  CompareSteps(p, 8);
}

TEST(CudaBackend, RefusesUnsupportedHeadDim) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const std::string dir = (fs::temp_directory_path() / ("sbserve_cuda_tiny" + std::to_string(::getpid()))).string();
  CreateOptions o;
  o.preset = "tiny";  // head_dim 16
  o.tokenizer = false;
  ASSERT_TRUE(WriteRandomCheckpoint(dir, o).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  auto gpu = CreateCudaBackend(**ckpt, {});
  ASSERT_FALSE(gpu.ok());
  EXPECT_NE(gpu.status().message().find("supported: 64, 128"), absl::string_view::npos);
}

}  // namespace
}  // namespace sbserve

namespace sbserve {
namespace {

// Decode steps replay captured graphs; the same step run twice must give bitwise equal logits, and
// the graph path must agree with eager execution (SBSERVE_CUDA_GRAPHS=0) within rounding.
TEST(CudaBackend, GraphReplayIsDeterministicAndMatchesEager) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  Pair p = Load("R1", 0, "graph");
  setenv("SBSERVE_CUDA_GRAPHS", "0", 1);
  auto eager = CreateCudaBackend(*p.ckpt, {});
  unsetenv("SBSERVE_CUDA_GRAPHS");
  ASSERT_TRUE(eager.ok());
  ASSERT_TRUE((*eager)->InitKvCache({256, 16}).ok());
  const int64_t V = p.ckpt->config().vocab_size;
  std::mt19937_64 rng(3);
  std::vector<int32_t> prompt(50);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % V);
  for (Backend* be : {p.gpu.get(), eager->get()}) {
    KvBlockAllocator alloc(256, 16);
    std::vector<int32_t> table;
    std::vector<testing::ChunkSpec> pre = {{prompt, 0, &table, false}};
    Batch b = testing::PackBatch(pre, alloc);
    std::vector<float> l(V);
    ASSERT_TRUE(be->Forward(b, l).ok());
  }
  // Same decode step (position 50) three times on each backend: it rewrites the same cache slot.
  KvBlockAllocator alloc(256, 16);
  std::vector<int32_t> table;
  ASSERT_TRUE(alloc.EnsureCapacity(table, 50).ok());
  std::vector<testing::ChunkSpec> step = {{{7}, 50, &table, false}};
  Batch b = testing::PackBatch(step, alloc);
  std::vector<float> g1(V), g2(V), e1(V);
  ASSERT_TRUE(p.gpu->Forward(b, g1).ok());
  ASSERT_TRUE(p.gpu->Forward(b, g2).ok());
  ASSERT_TRUE((*eager)->Forward(b, e1).ok());
  EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.size() * 4)) << "graph replay is not deterministic";
  EXPECT_LE(testing::RelL2(g1.data(), e1.data(), e1.size()), 1e-3);
}

}  // namespace
}  // namespace sbserve
