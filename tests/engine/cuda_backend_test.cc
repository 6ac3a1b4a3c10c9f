// The CUDA backend against the fp32 CPU reference backend on the same bf16 checkpoints: every
// remainder variant, GQA, prefill, decode, and mixed decode + chunked-prefill steps; the 3B
// multipliers with layernorm/bias/untied/head_dim 128/MQA, f16 and f32 uploads, forced decode
// splits, a KV cache over 2^31 bytes used at its highest blocks, and graph re-capture.
// Skips (visibly) when no CUDA device is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/engine/gpu_test_util.h"
#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/cuda/step_graphs.h"
#include "engine/kv_cache.h"
#include "engine/model/model_writer.h"
#include "tests/engine/test_util.h"

namespace sbserve {
namespace {

namespace fs = std::filesystem;

using testing::HaveGpu;

struct Pair {
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<Backend> cpu, gpu;
};

// n token ids drawn uniformly from [0, V).
std::vector<int32_t> RandomIds(std::mt19937_64& rng, int64_t V, int n) {
  std::vector<int32_t> v(n);
  for (int32_t& t : v) t = static_cast<int32_t>(rng() % V);
  return v;
}

// A checkpoint pair (fp32 CPU reference, CUDA) for any writer options.
Pair LoadWith(const CreateOptions& o, const std::string& name, int gpu_blocks = 256,
              const CudaBackendOptions& gpu_options = {}) {
  const std::string dir = (fs::temp_directory_path() / ("sbserve_cuda_" + name + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  EXPECT_TRUE(WriteRandomCheckpoint(dir, o).ok());
  Pair p;
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  p.ckpt = std::move(*ckpt);
  auto cpu = CreateCpuBackend(*p.ckpt, {});
  auto gpu = CreateCudaBackend(*p.ckpt, gpu_options);
  EXPECT_TRUE(gpu.ok()) << gpu.status();
  p.cpu = std::move(*cpu);
  p.gpu = std::move(*gpu);
  EXPECT_TRUE(p.cpu->InitKvCache({256, 16}).ok());
  absl::Status st = p.gpu->InitKvCache({gpu_blocks, 16});
  EXPECT_TRUE(st.ok()) << st;
  return p;
}

CreateOptions Opts(const std::string& preset, const std::string& variant, const std::string& dtype = "bf16") {
  CreateOptions o;
  o.preset = preset;
  o.variant = variant;
  o.dtype = dtype;
  o.seed = 23;
  o.tokenizer = false;
  return o;
}

// The `small` preset in bf16 with a remainder variant and kv heads (0: MHA).
Pair Load(const std::string& variant, int64_t kv_heads, const std::string& name) {
  CreateOptions o = Opts("small", variant);
  o.kv_heads = kv_heads;
  o.seed = 17;
  return LoadWith(o, name);
}

// Runs `steps` (packed against the CPU's 256-block allocator) on both backends and compares the
// logits of every step; `to_gpu` maps the batch for the GPU (e.g. other block ids).
void RunSteps(Pair& p, std::vector<std::vector<testing::ChunkSpec>>& steps, KvBlockAllocator& alloc,
              const char* label, const std::function<Batch(const Batch&)>& to_gpu = nullptr) {
  const int64_t V = p.ckpt->config().vocab_size;
  for (size_t s = 0; s < steps.size(); ++s) {
    Batch b = testing::PackBatch(steps[s], alloc);
    ASSERT_FALSE(b.tokens.empty());
    std::vector<float> want(b.logit_rows.size() * V), got(b.logit_rows.size() * V, NAN);
    ASSERT_TRUE(p.cpu->Forward(b, want).ok());
    absl::Status st = p.gpu->Forward(to_gpu ? to_gpu(b) : b, got);
    ASSERT_TRUE(st.ok()) << st;
    for (float x : got) ASSERT_TRUE(std::isfinite(x)) << "step " << s;
    const double err = testing::RelL2(got.data(), want.data(), want.size());
    EXPECT_LE(err, 2e-2) << label << " " << s;
    std::printf("%s %zu: logits rel L2 vs CPU fp32 %.2e\n", label, s, err);
    std::fflush(stdout);
  }
}

// Runs the same sequence of steps on both backends, comparing logits of every step.
void CompareSteps(Pair& p, uint64_t seed) {
  const int64_t V = p.ckpt->config().vocab_size;
  std::mt19937_64 rng(seed);
  auto ids = [&](int n) { return RandomIds(rng, V, n); };
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
  RunSteps(p, steps, alloc, "step");
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

// Batch-invariant mode against the CPU reference, on mixed prefill/decode steps, MHA and GQA.
TEST(CudaBackend, DeterministicModeMatchesCpuReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  CudaBackendOptions go;
  go.deterministic = true;
  for (int64_t kv_heads : {0, 2}) {
    CreateOptions o = Opts("small", "R1");
    o.kv_heads = kv_heads;
    Pair p = LoadWith(o, "det" + std::to_string(kv_heads), 256, go);
    CompareSteps(p, 41 + kv_heads);
  }
}

// One sequence's logits, every position of its prompt (all_logits) and of 6 decode steps, with its
// prompt in chunks of `chunk` and `others` sequences in every step (their prefills of 10-40 tokens
// first, then their decodes). Keyed by position.
std::map<int, std::vector<float>> TargetLogits(Backend& gpu, const std::vector<int32_t>& prompt,
                                               const std::vector<int32_t>& decode, int chunk, int others,
                                               uint64_t seed) {
  const int64_t V = gpu.config().vocab_size;
  KvBlockAllocator alloc(gpu.kv_cache_shape().num_blocks, 16);
  std::mt19937_64 rng(seed);
  std::vector<int32_t> table;
  std::vector<std::vector<int32_t>> tables(others);
  std::vector<int32_t> lens(others, 0);
  std::map<int, std::vector<float>> out;
  int pos = 0;
  auto step = [&](const std::vector<int32_t>& mine) {
    std::vector<testing::ChunkSpec> chunks;
    for (int o = 0; o < others; ++o) {
      const int n = lens[o] == 0 ? 10 + static_cast<int>(rng() % 31) : 1;
      std::vector<int32_t> ids(n);
      for (int32_t& t : ids) t = static_cast<int32_t>(rng() % V);
      chunks.push_back({ids, lens[o], &tables[o], false});
      lens[o] += n;
    }
    chunks.push_back({mine, pos, &table, true});
    Batch b = testing::PackBatch(chunks, alloc);
    ASSERT_FALSE(b.tokens.empty());
    std::vector<float> logits(b.logit_rows.size() * V);
    absl::Status st = gpu.Forward(b, logits);
    ASSERT_TRUE(st.ok()) << st;
    const size_t first = b.logit_rows.size() - mine.size();  // the target's rows come last
    for (size_t t = 0; t < mine.size(); ++t) {
      out[pos + static_cast<int>(t)].assign(logits.begin() + (first + t) * V, logits.begin() + (first + t + 1) * V);
    }
    pos += static_cast<int>(mine.size());
  };
  for (size_t at = 0; at < prompt.size(); at += chunk) {
    step(std::vector<int32_t>(prompt.begin() + at, prompt.begin() + std::min(prompt.size(), at + chunk)));
  }
  for (int32_t t : decode) step({t});
  return out;
}

// Batch-invariant mode: a sequence's logits are bitwise the same alone in one chunk, in chunks of 7
// beside 9 other sequences, in chunks of 16 beside 120 (decode-only steps then replay graphs of
// other batch sizes, GEMMs see other row counts), and with its decoded tokens recomputed as part
// of one prefill chunk, as after a preemption. The default mode is run the same way and its
// largest differences printed.
TEST(CudaBackend, DeterministicModeLogitsDoNotDependOnTheBatch) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  CudaBackendOptions go;
  go.deterministic = true;
  Pair det = LoadWith(Opts("small", "R1"), "detbatch", 2048, go);
  const int64_t V = det.ckpt->config().vocab_size;
  std::mt19937_64 rng(5);
  std::vector<int32_t> prompt(61), decode(6);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % V);
  for (int32_t& t : decode) t = static_cast<int32_t>(rng() % V);
  const auto alone = TargetLogits(*det.gpu, prompt, decode, 61, 0, 1);
  const auto chunked = TargetLogits(*det.gpu, prompt, decode, 7, 9, 2);
  const auto crowded = TargetLogits(*det.gpu, prompt, decode, 16, 120, 3);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), decode.begin(), decode.end());
  const auto recomputed = TargetLogits(*det.gpu, all, {}, 67, 0, 4);
  ASSERT_EQ(alone.size(), 67u);
  for (const auto& [pos, want] : alone) {
    SCOPED_TRACE(pos);
    ASSERT_EQ(chunked.at(pos).size(), want.size());
    EXPECT_EQ(std::memcmp(chunked.at(pos).data(), want.data(), want.size() * 4), 0) << "chunks of 7 beside 9";
    EXPECT_EQ(std::memcmp(crowded.at(pos).data(), want.data(), want.size() * 4), 0) << "chunks of 16 beside 120";
    EXPECT_EQ(std::memcmp(recomputed.at(pos).data(), want.data(), want.size() * 4), 0) << "recomputed";
  }
  Pair def = LoadWith(Opts("small", "R1"), "defbatch", 2048);
  const auto d_alone = TargetLogits(*def.gpu, prompt, decode, 61, 0, 1);
  auto worst = [&](const std::map<int, std::vector<float>>& other) {
    float w = 0;
    for (const auto& [pos, want] : d_alone) {
      for (size_t i = 0; i < want.size(); ++i) w = std::max(w, std::fabs(other.at(pos)[i] - want[i]));
    }
    return w;
  };
  std::printf("default mode, largest logit difference from alone: chunks of 7 beside 9 %.3g, chunks of 16 "
              "beside 120 %.3g, recomputed %.3g\n",
              worst(TargetLogits(*def.gpu, prompt, decode, 7, 9, 2)),
              worst(TargetLogits(*def.gpu, prompt, decode, 16, 120, 3)), worst(TargetLogits(*def.gpu, all, {}, 67, 0, 4)));
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

// The context buckets of the decode graphs (no GPU needed): the smallest holds 512 tokens in whole
// blocks, each next one twice the last, and none is longer than the full context.
TEST(CudaGraphBuckets, PowerOfTwoBucketsFrom512TokensCappedByTheFullContext) {
  // 16-token blocks, a 4096-token model (256 blocks): 32, 64, 128 and 256 blocks.
  EXPECT_EQ(cuda::GraphContextBlocks(1, 16, 256), 32);
  EXPECT_EQ(cuda::GraphContextBlocks(32, 16, 256), 32);    // 512 tokens
  EXPECT_EQ(cuda::GraphContextBlocks(33, 16, 256), 64);    // 513..528 tokens
  EXPECT_EQ(cuda::GraphContextBlocks(64, 16, 256), 64);
  EXPECT_EQ(cuda::GraphContextBlocks(65, 16, 256), 128);
  EXPECT_EQ(cuda::GraphContextBlocks(200, 16, 256), 256);
  EXPECT_EQ(cuda::GraphContextBlocks(256, 16, 256), 256);
  // A full context that is not a power-of-two bucket caps the last one.
  EXPECT_EQ(cuda::GraphContextBlocks(90, 16, 100), 100);
  EXPECT_EQ(cuda::GraphContextBlocks(20, 16, 20), 20);
  // Other block sizes: 512 tokens in whole blocks (1-token blocks: 512; 64-token: 8; 1024-token: 1).
  EXPECT_EQ(cuda::GraphContextBlocks(3, 1, 4096), 512);
  EXPECT_EQ(cuda::GraphContextBlocks(513, 1, 4096), 1024);
  EXPECT_EQ(cuda::GraphContextBlocks(1, 64, 64), 8);
  EXPECT_EQ(cuda::GraphContextBlocks(9, 64, 64), 16);
  EXPECT_EQ(cuda::GraphContextBlocks(1, 1024, 8), 1);
  EXPECT_EQ(cuda::GraphContextBlocks(3, 1024, 8), 4);
}

// The token counts of piecewise graphs: exact up to the small-GEMM rows, else multiples of 16, none
// above kPiecewiseMaxTokens.
TEST(CudaGraphBuckets, PiecewiseTokensPadToSixteenUpTo256) {
  EXPECT_EQ(cuda::kPiecewiseMaxTokens, 256);
  EXPECT_EQ(cuda::PiecewiseTokens(0, 2), 0);
  EXPECT_EQ(cuda::PiecewiseTokens(1, 2), 1);
  EXPECT_EQ(cuda::PiecewiseTokens(2, 2), 2);
  EXPECT_EQ(cuda::PiecewiseTokens(3, 2), 16);
  EXPECT_EQ(cuda::PiecewiseTokens(3, 0), 16);
  EXPECT_EQ(cuda::PiecewiseTokens(16, 2), 16);
  EXPECT_EQ(cuda::PiecewiseTokens(17, 2), 32);
  EXPECT_EQ(cuda::PiecewiseTokens(241, 2), 256);
  EXPECT_EQ(cuda::PiecewiseTokens(256, 2), 256);
  EXPECT_EQ(cuda::PiecewiseTokens(257, 2), 0);
  EXPECT_EQ(cuda::PiecewiseTokens(4096, 2), 0);
}

// A second CUDA backend on p's checkpoint that runs every step kernel by kernel
// (SBSERVE_CUDA_GRAPHS=0), with a 256 x 16 KV cache: the eager side of the graph tests.
absl::StatusOr<std::unique_ptr<Backend>> EagerBackend(const Pair& p) {
  setenv("SBSERVE_CUDA_GRAPHS", "0", 1);
  auto eager = CreateCudaBackend(*p.ckpt, {});
  unsetenv("SBSERVE_CUDA_GRAPHS");
  if (!eager.ok()) return eager.status();
  if (absl::Status s = (*eager)->InitKvCache({256, 16}); !s.ok()) return s;
  return eager;
}

// Decode step b twice on p's graph backend (the second rewrites the same cache slot) and once on
// `eager`: the replay must be bitwise repeatable and agree with eager execution within rounding.
void ExpectReplayRepeatsAndMatchesEager(Pair& p, Backend& eager, const Batch& b) {
  const int64_t V = p.ckpt->config().vocab_size;
  std::vector<float> g1(V), g2(V), e1(V);
  ASSERT_TRUE(p.gpu->Forward(b, g1).ok());
  ASSERT_TRUE(p.gpu->Forward(b, g2).ok());
  ASSERT_TRUE(eager.Forward(b, e1).ok());
  EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.size() * 4)) << "graph replay is not deterministic";
  EXPECT_LE(testing::RelL2(g1.data(), e1.data(), e1.size()), 1e-3);
}

// Decode steps replay captured graphs; the same step run twice must give bitwise equal logits, and
// the graph path must agree with eager execution (SBSERVE_CUDA_GRAPHS=0) within rounding.
TEST(CudaBackend, GraphReplayIsDeterministicAndMatchesEager) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  Pair p = Load("R1", 0, "graph");
  auto eager = EagerBackend(p);
  ASSERT_TRUE(eager.ok()) << eager.status();
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
  ASSERT_NO_FATAL_FAILURE(ExpectReplayRepeatsAndMatchesEager(p, **eager, b));
}

// Steps with prefill chunks of up to 256 tokens replay piecewise graphs captured for their token count
// padded to 16 (the attention between them runs eagerly on the exact chunks); larger steps run kernel
// by kernel. Each step's logits must agree with eager execution and the CPU reference, its replay
// (the same step again, rewriting the same cache slots) must be bitwise repeatable, and the step paths
// must be the expected ones: piecewise for 2, 18, 150 and 256 tokens (mixed with decodes, and after
// the buffers grew for a 300-token step, which drops every graph), eager for 257 and 300.
TEST(CudaBackend, PiecewiseGraphsOfPrefillStepsMatchEager) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  setenv("SBSERVE_PIECEWISE_GRAPHS", "1", 1);
  Pair p = Load("R1", 2, "piecewise");
  unsetenv("SBSERVE_PIECEWISE_GRAPHS");
  auto eager = EagerBackend(p);
  ASSERT_TRUE(eager.ok()) << eager.status();
  const int64_t V = p.ckpt->config().vocab_size;
  std::mt19937_64 rng(29);
  auto ids = [&](int n) { return RandomIds(rng, V, n); };
  KvBlockAllocator alloc(256, 16);
  std::vector<int32_t> ta, tb, tc, td, te, tf;
  struct Step {
    std::vector<testing::ChunkSpec> chunks;
    bool piecewise;
  };
  std::vector<Step> steps;
  steps.push_back({{{ids(2), 0, &ta, true}}, true});                                           // 2 tokens: exact
  steps.push_back({{{ids(1), 2, &ta, false}, {ids(17), 0, &tb, true}}, true});                // 18 -> 32
  steps.push_back({{{ids(1), 3, &ta, false}, {ids(1), 17, &tb, false}, {ids(40), 0, &tc, false},
                    {ids(50), 0, &td, true}, {ids(58), 0, &te, false}}, true});               // 150 -> 160
  steps.push_back({{{ids(1), 4, &ta, false}, {ids(255), 40, &tc, false}}, true});             // 256
  steps.push_back({{{ids(1), 5, &ta, false}, {ids(256), 50, &td, false}}, false});            // 257: eager
  steps.push_back({{{ids(300), 0, &tf, true}}, false});                                        // grows the buffers
  steps.push_back({{{ids(1), 6, &ta, false}, {ids(1), 18, &tb, false}, {ids(20), 295, &tc, true}}, true});
  for (size_t s = 0; s < steps.size(); ++s) {
    SCOPED_TRACE(absl::StrCat("step ", s));
    Batch b = testing::PackBatch(steps[s].chunks, alloc);
    const size_t n = b.logit_rows.size() * V;
    std::vector<float> want(n), got(n, NAN), again(n, NAN), eag(n, NAN);
    ASSERT_TRUE(p.cpu->Forward(b, want).ok());
    const Backend::StepPaths before = p.gpu->step_paths();
    ASSERT_TRUE(p.gpu->Forward(b, got).ok());
    const Backend::StepPaths after = p.gpu->step_paths();
    EXPECT_EQ(after.piecewise_graph - before.piecewise_graph, steps[s].piecewise ? 1 : 0);
    EXPECT_EQ(after.eager - before.eager, steps[s].piecewise ? 0 : 1);
    ASSERT_TRUE(p.gpu->Forward(b, again).ok());
    ASSERT_TRUE((*eager)->Forward(b, eag).ok());
    EXPECT_EQ(0, std::memcmp(got.data(), again.data(), n * 4)) << "replay is not bitwise repeatable";
    const double err = testing::RelL2(got.data(), want.data(), n);
    const double err_eager = testing::RelL2(got.data(), eag.data(), n);
    EXPECT_LE(err, 2e-2);
    EXPECT_LE(err_eager, 5e-3);  // padded rows may change the cuBLAS kernel, not more
    std::printf("piecewise step %zu (%zu tokens): vs CPU %.2e, vs eager %.2e\n", s, b.tokens.size(), err, err_eager);
  }
  EXPECT_EQ((*eager)->step_paths().piecewise_graph, 0);
  EXPECT_EQ((*eager)->step_paths().decode_graph, 0);
}

// Decode graphs are captured per power-of-two context bucket (512, 1024, ... tokens), each with its
// own block-table width and decode split. A sequence decoded across the 512 and 1024 boundaries
// replays a new graph at each; every step must agree with eager execution, and its replay must be
// bitwise repeatable.
TEST(CudaBackend, DecodeGraphsPerContextBucketMatchEager) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  Pair p = Load("R1", 0, "bucket");
  auto eager = EagerBackend(p);
  ASSERT_TRUE(eager.ok()) << eager.status();
  const int64_t V = p.ckpt->config().vocab_size;
  ASSERT_GE(p.ckpt->config().n_positions, 1030);
  std::mt19937_64 rng(11);
  for (const int start : {509, 1021}) {
    std::vector<int32_t> prompt(start);
    for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % V);
    KvBlockAllocator alloc(256, 16);
    std::vector<int32_t> table;
    std::vector<testing::ChunkSpec> pre = {{prompt, 0, &table, false}};
    Batch pb = testing::PackBatch(pre, alloc);
    std::vector<float> l(V);
    for (Backend* be : {p.gpu.get(), eager->get()}) ASSERT_TRUE(be->Forward(pb, l).ok());
    // Contexts start - 1 + 2 .. start + 5: across the bucket boundary at 512 or 1024 tokens.
    for (int pos = start; pos < start + 6; ++pos) {
      SCOPED_TRACE(absl::StrCat("decode at position ", pos));
      ASSERT_TRUE(alloc.EnsureCapacity(table, pos + 1).ok());
      std::vector<testing::ChunkSpec> step = {{{static_cast<int32_t>(rng() % V)}, pos, &table, false}};
      Batch b = testing::PackBatch(step, alloc);
      ASSERT_NO_FATAL_FAILURE(ExpectReplayRepeatsAndMatchesEager(p, **eager, b));
    }
  }
}

}  // namespace
}  // namespace sbserve

namespace sbserve {
namespace {

// The GPU's block ids for a batch packed against the CPU's 256-block allocator: id b -> top - b,
// so the GPU sequences live in the highest blocks of its cache.
Batch MirrorBlocks(Batch b, int gpu_blocks) {
  for (int32_t& id : b.block_tables) {
    if (id >= 0) id = gpu_blocks - 1 - id;
  }
  return b;
}

// Prefill of three long sequences (so decode runs several key splits), then decode steps; every
// step's logits on the GPU against the CPU reference.
void CompareLongSteps(Pair& p, uint64_t seed, int gpu_blocks = 256, bool mirror = false) {
  const int64_t V = p.ckpt->config().vocab_size;
  std::mt19937_64 rng(seed);
  auto ids = [&](int n) { return RandomIds(rng, V, n); };
  KvBlockAllocator alloc(256, 16);
  std::vector<int32_t> ta, tb, tc;
  std::vector<std::vector<testing::ChunkSpec>> steps;
  steps.push_back({{ids(300), 0, &ta, false}, {ids(700), 0, &tb, false}, {ids(1000), 0, &tc, false}});
  for (int s = 0; s < 4; ++s) {
    steps.push_back({{ids(1), 300 + s, &ta, false}, {ids(1), 700 + s, &tb, false}, {ids(1), 1000 + s, &tc, false}});
  }
  if (mirror) {
    RunSteps(p, steps, alloc, "long step", [&](const Batch& b) { return MirrorBlocks(b, gpu_blocks); });
  } else {
    RunSteps(p, steps, alloc, "long step");
  }
}

// The released models' multipliers (m_emb 12, m_residual 0.22, m_width 8) and the config variants
// the `small` preset never takes: layernorm with biases, an untied head, head_dim 128, MQA.
TEST(CudaBackend, MatchesCpuReferenceWith3bMultipliersAndVariants) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  struct Case {
    const char* name;
    CreateOptions o;
  };
  std::vector<Case> cases;
  cases.push_back({"m3b_R1", Opts("small-3b", "R1")});
  {
    CreateOptions o = Opts("small-3b", "R2");
    o.norm = "layernorm";
    o.add_bias = true;
    o.untied = true;
    cases.push_back({"m3b_ln_bias_untied_R2", o});
  }
  cases.push_back({"m3b_d128_R1", Opts("small-3b-d128", "R1")});
  {
    CreateOptions o = Opts("small-3b-d128", "R0");
    o.kv_heads = 1;
    o.norm = "layernorm";
    o.add_bias = true;
    o.untied = true;
    cases.push_back({"m3b_d128_mqa_ln_bias_untied_R0", o});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Pair p = LoadWith(c.o, c.name);
    ASSERT_EQ(p.ckpt->config().m_emb, 12.0);
    CompareSteps(p, 11);
    CompareLongSteps(p, 12);
  }
}

// f16 and f32 checkpoints are converted to bf16 on upload; the CPU reads them exactly.
TEST(CudaBackend, F16AndF32CheckpointsUploadAsBf16) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  for (const char* dtype : {"f16", "f32"}) {
    SCOPED_TRACE(dtype);
    Pair p = LoadWith(Opts("small-3b", "R1", dtype), std::string("dtype_") + dtype);
    CompareSteps(p, 13);
  }
}

// Forced decode split sizes (CudaBackendOptions::decode_keys_per_split) against the reference: the
// split-K partials and their combine must not depend on how the keys are cut.
TEST(CudaBackend, ForcedDecodeSplitsMatchReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  for (int kps : {64, 128, 320, 1024}) {
    SCOPED_TRACE(kps);
    CudaBackendOptions go;
    go.decode_keys_per_split = kps;
    Pair p = LoadWith(Opts("small-3b", "R1"), "splits" + std::to_string(kps), 256, go);
    CompareLongSteps(p, 14);
  }
  CudaBackendOptions bad;
  bad.decode_keys_per_split = 100;  // not a multiple of 64
  Pair p = LoadWith(Opts("small", "R1"), "splits_bad");
  auto gpu = CreateCudaBackend(*p.ckpt, bad);
  EXPECT_FALSE(gpu.ok());
}

// A KV cache over 2^31 bytes with the sequences in its highest blocks: byte offsets of those
// blocks do not fit in 32 bits.
TEST(CudaBackend, KvCacheOver2GiBUsesItsHighestBlocks) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  const CreateOptions o = Opts("small-3b", "R1");
  // small-3b: 4 layers x (K + V) x 256 values x 2 bytes x 16 tokens = 64 KiB per block.
  const int64_t block_bytes = int64_t{4} * 2 * 256 * 2 * 16;
  const int blocks = static_cast<int>((int64_t{5} << 30) / block_bytes);  // 5 GiB
  ASSERT_GT(int64_t{blocks} * block_bytes, int64_t{1} << 32);
  Pair p = LoadWith(o, "bigkv", blocks);
  CompareLongSteps(p, 15, blocks, /*mirror=*/true);
}

// Decode graphs are captured for a batch shape; a later step that grows the step buffers (a big
// prefill) invalidates them, and the next decode of that shape must re-capture, not replay stale
// pointers. Checked against the CPU reference and against eager execution.
TEST(CudaBackend, GraphsRecapturedAfterBuffersGrow) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  Pair p = LoadWith(Opts("small-3b", "R1"), "recapture");
  auto eager = EagerBackend(p);
  ASSERT_TRUE(eager.ok()) << eager.status();
  const int64_t V = p.ckpt->config().vocab_size;
  std::mt19937_64 rng(5);
  auto ids = [&](int n) { return RandomIds(rng, V, n); };
  KvBlockAllocator alloc(256, 16);
  std::vector<int32_t> ta, tb, tbig;
  std::vector<std::vector<testing::ChunkSpec>> steps;
  steps.push_back({{ids(20), 0, &ta, false}, {ids(30), 0, &tb, false}});
  for (int s = 0; s < 3; ++s) steps.push_back({{ids(1), 20 + s, &ta, false}, {ids(1), 30 + s, &tb, false}});
  // 2000 tokens with every row's logits: activations and the logits buffer grow many times over.
  steps.push_back({{ids(2000), 0, &tbig, true}});
  for (int s = 3; s < 7; ++s) steps.push_back({{ids(1), 20 + s, &ta, false}, {ids(1), 30 + s, &tb, false}});
  for (size_t s = 0; s < steps.size(); ++s) {
    Batch b = testing::PackBatch(steps[s], alloc);
    ASSERT_FALSE(b.tokens.empty());
    std::vector<float> want(b.logit_rows.size() * V), got(want.size(), NAN), eag(want.size(), NAN);
    ASSERT_TRUE(p.cpu->Forward(b, want).ok());
    ASSERT_TRUE(p.gpu->Forward(b, got).ok());
    ASSERT_TRUE((*eager)->Forward(b, eag).ok());
    const double err = testing::RelL2(got.data(), want.data(), want.size());
    const double err_eager = testing::RelL2(got.data(), eag.data(), eag.size());
    EXPECT_LE(err, 2e-2) << "step " << s;
    EXPECT_LE(err_eager, 1e-3) << "step " << s;
    std::printf("recapture step %zu: vs CPU %.2e, vs eager %.2e\n", s, err, err_eager);
  }
}

}  // namespace
}  // namespace sbserve

namespace sbserve {
namespace {

// --device N: the backend lives on device 1 and is driven from another thread, whose current device
// is the default 0 (the engine thread is not the loading thread). Needs two GPUs; skips otherwise.
TEST(CudaBackend, SecondDeviceDrivenFromAnotherThread) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 2) {
    cudaGetLastError();
    GTEST_SKIP() << "needs two CUDA devices (found " << n << "): multi-GPU test skipped";
  }
  CudaBackendOptions go;
  go.device = 1;
  Pair p;
  std::thread([&] { p = LoadWith(Opts("small-3b", "R1"), "device1", 256, go); }).join();
  ASSERT_TRUE(p.gpu);
  size_t free0 = 0, total0 = 0;
  std::thread([&] {
    cudaSetDevice(0);
    cudaMemGetInfo(&free0, &total0);
  }).join();
  // Every step from a fresh thread.
  const int64_t V = p.ckpt->config().vocab_size;
  std::mt19937_64 rng(21);
  KvBlockAllocator alloc(256, 16);
  std::vector<int32_t> ta, tb;
  std::vector<std::vector<testing::ChunkSpec>> steps;
  std::vector<int32_t> pa(40), pb(25);
  for (int32_t& t : pa) t = static_cast<int32_t>(rng() % V);
  for (int32_t& t : pb) t = static_cast<int32_t>(rng() % V);
  steps.push_back({{pa, 0, &ta, false}, {pb, 0, &tb, false}});
  for (int s = 0; s < 4; ++s) steps.push_back({{{7 + s}, 40 + s, &ta, false}, {{9 + s}, 25 + s, &tb, false}});
  for (size_t s = 0; s < steps.size(); ++s) {
    Batch b = testing::PackBatch(steps[s], alloc);
    std::vector<float> want(b.logit_rows.size() * V), got(want.size(), NAN);
    ASSERT_TRUE(p.cpu->Forward(b, want).ok());
    absl::Status st;
    std::thread([&] { st = p.gpu->Forward(b, got); }).join();
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_LE(testing::RelL2(got.data(), want.data(), want.size()), 2e-2) << "step " << s;
  }
  // Device 0 got none of the backend's buffers: its free memory did not move (cudaMalloc takes at
  // least 2 MiB pages; the test is alone on the machine).
  size_t free0_after = 0;
  std::thread([&] {
    cudaSetDevice(0);
    cudaMemGetInfo(&free0_after, &total0);
  }).join();
  EXPECT_GE(static_cast<double>(free0_after), static_cast<double>(free0) - 1e6)
      << "device 0 lost " << (static_cast<double>(free0) - free0_after) / 1e6 << " MB";
}

}  // namespace
}  // namespace sbserve
