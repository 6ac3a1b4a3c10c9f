// The embedded demo model is a trained model, not random weights: its perplexity on held-out text
// of this repository (engine/demo_model/heldout.txt, never trained on) must be far below the
// uniform baseline (= the vocabulary size, 2048), and a random-weight model of the same shapes must
// fail the same bound. Its tokenizer has no block of reserved ids. CPU backend (runs in CI).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/kv_cache.h"
#include "engine/model/model_writer.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/engine/test_util.h"

namespace sbserve {
namespace {

namespace fs = std::filesystem;

constexpr int kTokens = 512;           // held-out tokens scored (one prefill)
constexpr double kPerplexityBar = 100;  // measured ~30 (2026-11-30); uniform is 2048

std::string HeldOutText() {
  std::ifstream in(SB_DEMO_HELDOUT);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Perplexity of `ids` under the checkpoint in `dir`: exp(mean -log p(ids[t+1] | ids[..t])).
double Perplexity(const std::string& dir, const std::vector<int32_t>& ids) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto cpu = CreateCpuBackend(**ckpt, {});
  EXPECT_TRUE(cpu.ok());
  EXPECT_TRUE((*cpu)->InitKvCache({64, 16}).ok());
  KvBlockAllocator alloc(64, 16);
  std::vector<int32_t> table;
  std::vector<testing::ChunkSpec> chunk = {{ids, 0, &table, true}};
  Batch b = testing::PackBatch(chunk, alloc);
  const int64_t V = (*ckpt)->config().vocab_size;
  std::vector<float> logits(ids.size() * V);
  EXPECT_TRUE((*cpu)->Forward(b, logits).ok());
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data() + t * V;
    double mx = row[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max<double>(mx, row[v]);
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
    nll += mx + std::log(sum) - row[ids[t + 1]];
  }
  return std::exp(nll / static_cast<double>(ids.size() - 1));
}

TEST(DemoModel, PerplexityOnHeldOutTextIsFarBelowUniform) {
  auto dir = EnsureDemoModel();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto tok = Tokenizer::Load(*dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode(HeldOutText(), false);
  ASSERT_TRUE(ids.ok());
  ASSERT_GE(ids->size(), static_cast<size_t>(kTokens));
  ids->resize(kTokens);
  const double ppl = Perplexity(*dir, *ids);
  std::printf("demo model perplexity on %d held-out tokens: %.1f (bar %.0f, uniform 2048)\n", kTokens, ppl,
              kPerplexityBar);
  EXPECT_LT(ppl, kPerplexityBar);

  // The same bound on an untrained model of the same shapes (and the same tokenizer) must fail.
  const std::string random_dir = (fs::temp_directory_path() / ("sb_demo_random" + std::to_string(::getpid()))).string();
  fs::remove_all(random_dir);
  CreateOptions o;
  o.preset = "small";
  o.dtype = "bf16";
  o.tokenizer = false;
  ASSERT_TRUE(WriteRandomCheckpoint(random_dir, o).ok());
  const double random_ppl = Perplexity(random_dir, *ids);
  std::printf("random-weight model of the same shapes: %.1f\n", random_ppl);
  EXPECT_GT(random_ppl, 10 * kPerplexityBar);
  fs::remove_all(random_dir);
}

TEST(DemoModel, TokenizerHasNoReservedIds) {
  auto dir = EnsureDemoModel();
  ASSERT_TRUE(dir.ok()) << dir.status();
  std::ifstream in(fs::path(*dir) / "tokenizer.json");
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str().find("reserved"), std::string::npos);
  auto tok = Tokenizer::Load(*dir);
  ASSERT_TRUE(tok.ok());
  // Every id but <|endoftext|> decodes to text: nothing is silently skipped as special.
  int empty = 0;
  for (int32_t id = 1; id < 2048; ++id) {
    auto text = (*tok)->Decode(std::vector<int32_t>{id}, /*skip_special_tokens=*/true);
    ASSERT_TRUE(text.ok());
    empty += text->empty();
  }
  EXPECT_EQ(empty, 0);
}

}  // namespace
}  // namespace sbserve
