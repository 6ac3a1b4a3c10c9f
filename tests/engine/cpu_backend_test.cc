// Whole-model checks on checkpoints the test writes: prefill vs incremental decode, packed batches
// vs sequences alone, every remainder variant, GQA/MQA, layernorm with biases, sharded files.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/kv_cache.h"
#include "engine/model/model_writer.h"
#include "engine/model/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_util.h"

namespace sbserve {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("sbserve_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p.string();
}

struct Model {
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<Backend> backend;
};

Model Load(const CreateOptions& o, const std::string& name) {
  auto ckpt = testing::OpenRandomCheckpoint("cpu_" + name, o);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto backend = CreateCpuBackend(**ckpt, {.num_threads = 2});
  EXPECT_TRUE(backend.ok());
  EXPECT_TRUE((*backend)->InitKvCache({256, 16}).ok());
  return {std::move(*ckpt), std::move(*backend)};
}

std::vector<int32_t> RandomIds(std::mt19937_64& rng, int n, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (int32_t& t : ids) t = static_cast<int32_t>(rng() % vocab);
  return ids;
}

// Logits of every position: one prefill, or token-by-token decode.
std::vector<float> RunSequence(Backend& be, const std::vector<int32_t>& ids, bool decode) {
  KvBlockAllocator alloc(be.kv_cache_shape().num_blocks, be.kv_cache_shape().block_size);
  std::vector<int32_t> table;
  const int64_t V = be.config().vocab_size;
  std::vector<float> out;
  if (!decode) {
    std::vector<testing::ChunkSpec> chunks = {{ids, 0, &table, true}};
    Batch b = testing::PackBatch(chunks, alloc);
    out.resize(ids.size() * V);
    EXPECT_TRUE(be.Forward(b, out).ok());
    return out;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    std::vector<testing::ChunkSpec> chunks = {{{ids[i]}, static_cast<int32_t>(i), &table, true}};
    Batch b = testing::PackBatch(chunks, alloc);
    std::vector<float> step(V);
    EXPECT_TRUE(be.Forward(b, step).ok());
    out.insert(out.end(), step.begin(), step.end());
  }
  return out;
}

class VariantTest : public ::testing::TestWithParam<CreateOptions> {};

TEST_P(VariantTest, PrefillEqualsDecodeAndPackingIsTransparent) {
  const CreateOptions o = GetParam();
  Model m = Load(o, "variant_" + o.variant + std::to_string(o.kv_heads) + o.norm);
  Backend& be = *m.backend;
  const int64_t V = be.config().vocab_size;
  std::mt19937_64 rng(11);

  const std::vector<int32_t> ids = RandomIds(rng, 37, V);
  const std::vector<float> prefill = RunSequence(be, ids, false);
  const std::vector<float> decode = RunSequence(be, ids, true);
  for (float x : prefill) ASSERT_TRUE(std::isfinite(x));
  EXPECT_LE(testing::RelL2(decode.data(), prefill.data(), prefill.size()), 1e-5);

  // Three sequences packed in one batch, one of them as a chunk after a cached prefix,
  // must equal each sequence alone.
  const std::vector<int32_t> a = RandomIds(rng, 20, V), b = RandomIds(rng, 33, V), c = RandomIds(rng, 9, V);
  const std::vector<float> a_alone = RunSequence(be, a, false), b_alone = RunSequence(be, b, false),
                           c_alone = RunSequence(be, c, false);
  KvBlockAllocator alloc(be.kv_cache_shape().num_blocks, be.kv_cache_shape().block_size);
  std::vector<int32_t> ta, tb, tc;
  // First step: a whole, the first 17 tokens of b.
  std::vector<testing::ChunkSpec> step1 = {{a, 0, &ta, true},
                                           {std::vector<int32_t>(b.begin(), b.begin() + 17), 0, &tb, true}};
  Batch b1 = testing::PackBatch(step1, alloc);
  std::vector<float> l1(b1.logit_rows.size() * V);
  ASSERT_TRUE(be.Forward(b1, l1).ok());
  // Second step: the rest of b after its cached prefix, all of c.
  std::vector<testing::ChunkSpec> step2 = {{std::vector<int32_t>(b.begin() + 17, b.end()), 17, &tb, true},
                                           {c, 0, &tc, true}};
  Batch b2 = testing::PackBatch(step2, alloc);
  std::vector<float> l2(b2.logit_rows.size() * V);
  ASSERT_TRUE(be.Forward(b2, l2).ok());

  EXPECT_LE(testing::RelL2(l1.data(), a_alone.data(), a.size() * V), 1e-5);
  EXPECT_LE(testing::RelL2(l1.data() + a.size() * V, b_alone.data(), 17 * V), 1e-5);
  EXPECT_LE(testing::RelL2(l2.data(), b_alone.data() + 17 * V, (b.size() - 17) * V), 1e-5);
  EXPECT_LE(testing::RelL2(l2.data() + (b.size() - 17) * V, c_alone.data(), c.size() * V), 1e-5);
}

CreateOptions Opt(std::string variant, int64_t kv_heads = 0, std::string norm = "", bool bias = false,
                  bool untied = false, std::string dtype = "f32", int64_t shards = 1) {
  CreateOptions o;
  o.preset = "tiny";
  o.variant = std::move(variant);
  o.kv_heads = kv_heads;
  o.norm = std::move(norm);
  o.add_bias = bias;
  o.untied = untied;
  o.dtype = std::move(dtype);
  o.shards = shards;
  o.seed = 3;
  return o;
}

INSTANTIATE_TEST_SUITE_P(Variants, VariantTest,
                         ::testing::Values(Opt("R0"), Opt("R1"), Opt("R2"), Opt("R1", 2), Opt("R2", 1),
                                           Opt("R1", 0, "layernorm", true, true),
                                           Opt("R1", 0, "", false, false, "bf16", 3),
                                           Opt("R0", 2, "", false, false, "f16")));

TEST(CpuBackend, RemainderVariantsChangeTheOutput) {
  // Same weights except the remainder: R0 and R1 must differ (R1 adds rem·v_i), proving the flag is honoured.
  Model r0 = Load(Opt("R0"), "rem_r0");
  Model r1 = Load(Opt("R1"), "rem_r1");
  EXPECT_EQ(r0.ckpt->config().remainder, Remainder::kR0);
  EXPECT_EQ(r1.ckpt->config().remainder, Remainder::kR1);
  std::mt19937_64 rng(5);
  const std::vector<int32_t> ids = RandomIds(rng, 12, r0.ckpt->config().vocab_size);
  const std::vector<float> l0 = RunSequence(*r0.backend, ids, false);
  const std::vector<float> l1 = RunSequence(*r1.backend, ids, false);
  EXPECT_GT(testing::RelL2(l1.data(), l0.data(), l0.size()), 1e-4);
}

// Copies the single-file checkpoint `src` to `dst` with every attn.head_bias either dropped or
// replaced by zeros, and config.json's sb_remainder set as given; all other bytes are unchanged.
void DeriveCheckpoint(const std::string& src, const std::string& dst, bool keep_zero_head_bias,
                      bool sb_remainder) {
  fs::remove_all(dst);
  fs::create_directories(dst);
  std::ifstream in(src + "/config.json");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json cfg = nlohmann::json::parse(text.str());
  cfg["sb_remainder"] = sb_remainder;
  std::ofstream(dst + "/config.json") << cfg.dump(2);
  auto file = SafetensorsFile::Open(src + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<TensorSpec> specs;
  std::vector<const TensorInfo*> infos;
  for (const auto& [name, info] : (*file)->tensors()) {
    const bool head_bias = name.find(".attn.head_bias") != std::string::npos;
    if (head_bias && !keep_zero_head_bias) continue;
    specs.push_back({name, info.dtype, info.shape});
    infos.push_back(head_bias ? nullptr : &info);
  }
  ASSERT_TRUE(WriteSafetensors(dst + "/model.safetensors", specs,
                               [&](size_t i, std::vector<unsigned char>& bytes) {
                                 if (infos[i] == nullptr) std::fill(bytes.begin(), bytes.end(), 0);
                                 else std::memcpy(bytes.data(), infos[i]->data, bytes.size());
                               })
                  .ok());
}

Model OpenModel(const std::string& dir) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto backend = CreateCpuBackend(**ckpt, {.num_threads = 2});
  EXPECT_TRUE(backend.ok());
  EXPECT_TRUE((*backend)->InitKvCache({256, 16}).ok());
  return {std::move(*ckpt), std::move(*backend)};
}

TEST(CpuBackend, R2AddsRemainderTimesHeadBias) {
  // R2's o_i = Σ_j A_ij v_j + rem_i · head_bias[h], against models with the same other weights:
  // with head_bias zeroed it must be R0 exactly (no R1 term, nothing else moved), and with the real
  // head_bias it must differ from R0. The float64 reference checks R2's numbers themselves.
  const std::string src = TempDir("r2_src");
  CreateOptions o = Opt("R2");
  o.tokenizer = false;
  ASSERT_TRUE(WriteRandomCheckpoint(src, o).ok());
  const std::string zero = TempDir("r2_zero"), as_r0 = TempDir("r2_as_r0"), as_r1 = TempDir("r2_as_r1");
  DeriveCheckpoint(src, zero, /*keep_zero_head_bias=*/true, /*sb_remainder=*/true);
  DeriveCheckpoint(src, as_r0, false, false);
  DeriveCheckpoint(src, as_r1, false, true);
  Model r2 = OpenModel(src), r2_zero = OpenModel(zero), r0 = OpenModel(as_r0), r1 = OpenModel(as_r1);
  ASSERT_EQ(r2.ckpt->config().remainder, Remainder::kR2);
  ASSERT_EQ(r2_zero.ckpt->config().remainder, Remainder::kR2);
  ASSERT_EQ(r0.ckpt->config().remainder, Remainder::kR0);
  ASSERT_EQ(r1.ckpt->config().remainder, Remainder::kR1);

  std::mt19937_64 rng(6);
  const std::vector<int32_t> ids = RandomIds(rng, 24, r2.ckpt->config().vocab_size);
  for (bool decode : {false, true}) {
    SCOPED_TRACE(decode ? "decode" : "prefill");
    const std::vector<float> l2 = RunSequence(*r2.backend, ids, decode);
    const std::vector<float> lz = RunSequence(*r2_zero.backend, ids, decode);
    const std::vector<float> l0 = RunSequence(*r0.backend, ids, decode);
    const std::vector<float> l1 = RunSequence(*r1.backend, ids, decode);
    const size_t n = l0.size();
    EXPECT_LE(testing::RelL2(lz.data(), l0.data(), n), 1e-6) << "R2 with zero head_bias is not R0";
    EXPECT_GT(testing::RelL2(lz.data(), l1.data(), n), 1e-3) << "R2 with zero head_bias acts as R1";
    EXPECT_GT(testing::RelL2(l2.data(), l0.data(), n), 1e-3) << "head_bias has no effect";
  }
  for (const std::string& d : {src, zero, as_r0, as_r1}) fs::remove_all(d);
}

TEST(CpuBackend, RejectsInconsistentBatches) {
  Model m = Load(Opt("R1"), "bad_batch");
  Batch b;
  b.tokens = {1, 2};
  b.positions = {0, 1};
  b.cu_seqlens_q = {0, 2};
  b.context_lens = {2};
  b.block_tables = {0};
  b.max_blocks_per_seq = 1;
  b.logit_rows = {1};
  std::vector<float> logits(m.ckpt->config().vocab_size);
  EXPECT_TRUE(m.backend->Forward(b, logits).ok());
  Batch bad = b;
  bad.tokens[0] = static_cast<int32_t>(m.ckpt->config().vocab_size);
  EXPECT_EQ(m.backend->Forward(bad, logits).code(), absl::StatusCode::kInvalidArgument);
  bad = b;
  bad.block_tables = {9999};
  EXPECT_EQ(m.backend->Forward(bad, logits).code(), absl::StatusCode::kInvalidArgument);
  bad = b;
  bad.positions = {1, 2};
  EXPECT_EQ(m.backend->Forward(bad, logits).code(), absl::StatusCode::kInvalidArgument);
  bad = b;
  bad.logit_rows = {5};
  EXPECT_EQ(m.backend->Forward(bad, logits).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sbserve
