// Sizing at start-up (engine/capacity.h) on the real CPU backend with the demo model: the KV cache
// from available RAM, the step size, the admission limits from the measured prefill rate, the
// explicit flags that override them, the configurations that are refused, a burst that the
// old fixed limit (65,536 queued prompt tokens) refused and that is now queued, and the backend's
// preparation of its steps (Backend::PrepareSteps) at the resolved step size.
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/engine.h"
#include "engine/model/model_writer.h"
#include "gtest/gtest.h"

namespace sbserve {
namespace {

int64_t MemAvailable() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  int64_t kb = 0;
  while (in >> key >> kb) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return kb << 10;
  }
  return 0;
}

class Capacity : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = EnsureDemoModel();
    ASSERT_TRUE(dir.ok()) << dir.status();
    auto ckpt = Checkpoint::Open(*dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ckpt_ = *std::move(ckpt);
  }
  absl::StatusOr<std::unique_ptr<Engine>> Make(const EngineOptions& o) {
    auto backend = CreateCpuBackend(*ckpt_, {.num_threads = 2});
    if (!backend.ok()) return backend.status();
    return Engine::CreateWithCodec(o, *std::move(backend), nullptr);
  }
  std::unique_ptr<Checkpoint> ckpt_;
};

TEST_F(Capacity, AutoSizesTheCpuCacheFromAvailableRamAndAdmissionFromTheMeasuredRate) {
  const int64_t avail_before = MemAvailable();
  auto engine = Make(EngineOptions{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int64_t avail_after = MemAvailable();
  const CapacityPlan& plan = (*engine)->capacity();
  const EngineOptions& o = (*engine)->options();
  const int64_t per_token = (*engine)->backend().KvBytesPerToken();
  const int64_t ctx = (*engine)->model_config().n_positions;
  const int64_t kv_bytes = int64_t{plan.num_blocks} * o.kv_block_size * per_token;
  // 1/16 of MemAvailable (read around the call; it moves), at most 1 GiB, at least one context.
  const int64_t lo = std::min<int64_t>(std::min(avail_before, avail_after) / 16, int64_t{1} << 30);
  const int64_t hi = std::min<int64_t>(std::max(avail_before, avail_after) / 16 + (64 << 20), int64_t{1} << 30);
  EXPECT_GE(kv_bytes, std::max(lo - o.kv_block_size * per_token - (64 << 20), ctx * per_token)) << plan.summary;
  EXPECT_LE(kv_bytes, std::max(hi, ctx * per_token + o.kv_block_size * per_token)) << plan.summary;
  EXPECT_EQ(plan.memory.kv_bytes, kv_bytes);  // what the backend really holds
  EXPECT_GT(plan.memory.weights_bytes, 0);
  EXPECT_EQ(o.kv_num_blocks, plan.num_blocks);
  EXPECT_EQ((*engine)->Stats().kv_blocks_total, plan.num_blocks);
  EXPECT_NE(plan.summary.find("1/16 of available RAM"), std::string::npos) << plan.summary;

  EXPECT_EQ(o.max_batch_tokens, 512);  // the CPU default
  EXPECT_EQ(o.max_queued_requests, 512);  // max(256, 4 x 128)
  ASSERT_GT(plan.prefill_tokens_per_s, 0);
  const int64_t kv_tokens = int64_t{plan.num_blocks} * o.kv_block_size;
  const int64_t by_rate = static_cast<int64_t>(plan.prefill_tokens_per_s * 10.0);
  EXPECT_EQ(o.max_queued_tokens, std::max(kv_tokens, by_rate)) << plan.summary;
  EXPECT_NE(plan.summary.find("prefill"), std::string::npos);
}

TEST_F(Capacity, ExplicitFlagsOverrideTheAutoValues) {
  EngineOptions o;
  o.kv_cache_bytes = int64_t{48} << 20;
  o.max_queued_tokens = 1234;
  o.max_queued_requests = 7;
  o.max_batch_tokens = 96;
  auto engine = Make(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int64_t per_block = (*engine)->backend().KvBytesPerToken() * o.kv_block_size;
  EXPECT_EQ((*engine)->capacity().num_blocks, (int64_t{48} << 20) / per_block);
  EXPECT_EQ((*engine)->options().max_queued_tokens, 1234);
  EXPECT_EQ((*engine)->options().max_queued_requests, 7);
  EXPECT_EQ((*engine)->options().max_batch_tokens, 96);
  EXPECT_EQ((*engine)->capacity().prefill_tokens_per_s, 0);  // nothing auto needed a warm-up

  EngineOptions b;
  b.kv_num_blocks = 5;  // exact, and allowed below one context
  engine = Make(b);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->Stats().kv_blocks_total, 5);
}

TEST_F(Capacity, ImpossibleConfigurationsAreRefusedWithTheirNumbers) {
  EngineOptions o;
  o.kv_cache_bytes = int64_t{1} << 20;  // demo: 2048-token context x 8 KiB/token = 16 MiB needed
  auto engine = Make(o);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("--kv-cache-mb 1"), std::string::npos) << engine.status();
  EXPECT_NE(engine.status().message().find("2048 tokens"), std::string::npos) << engine.status();

  for (double bad : {0.0, -0.5, 1.01}) {
    EngineOptions u;
    u.gpu_memory_utilization = bad;
    engine = Make(u);
    ASSERT_FALSE(engine.ok()) << bad;
    EXPECT_NE(engine.status().message().find("--gpu-memory-utilization"), std::string::npos) << engine.status();
  }
}

// 64 prompts of 1,100 tokens (70,400 tokens) arrive at once: the old fixed limit of 65,536 queued
// prompt tokens refused the last of them; the limit derived from capacity queues them all, since the
// engine prefills them in well under its horizon.
TEST_F(Capacity, ABurstTheEngineCanPrefillSoonIsQueuedNotRefused) {
  auto engine = Make(EngineOptions{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int64_t limit = (*engine)->options().max_queued_tokens;
  if (limit < 64 * 1100) {
    GTEST_SKIP() << "this machine's capacity (" << (*engine)->capacity().summary << ") is below the burst";
  }
  int accepted = 0;
  for (int i = 0; i < 64; ++i) {
    GenerateRequest r;
    r.request_id = "burst-" + std::to_string(i);
    for (int t = 0; t < 1100; ++t) r.prompt_ids.push_back(1 + (i * 131 + t * 7) % 2000);
    r.max_tokens = 1;
    absl::Status st = (*engine)->Submit(std::move(r), [](GenerateEvent) {});
    EXPECT_TRUE(st.ok()) << i << ": " << st;
    accepted += st.ok();
  }
  EXPECT_EQ(accepted, 64);
  (*engine)->Shutdown();
}

// Records PrepareSteps calls (and the Forward calls made before each) and can fail them.
class PrepareRecorder : public ForwardingBackend {
 public:
  PrepareRecorder(std::unique_ptr<Backend> inner, std::vector<std::pair<int64_t, int>>* calls, absl::Status result)
      : ForwardingBackend(std::move(inner)), calls_(calls), result_(std::move(result)) {}
  absl::Status Forward(const Batch& batch, std::span<float> logits) override {
    ++forwards_;
    return ForwardingBackend::Forward(batch, logits);
  }
  absl::Status PrepareSteps(int64_t max_rows) override {
    calls_->push_back({max_rows, forwards_});
    return result_;
  }

 private:
  std::vector<std::pair<int64_t, int>>* calls_;
  absl::Status result_;
  int forwards_ = 0;
};

TEST_F(Capacity, TheBackendPreparesItsStepsOnceAtTheResolvedStepSizeBeforeServing) {
  for (const int64_t max_batch_tokens : {int64_t{0}, int64_t{96}}) {  // auto (a warm-up runs), explicit
    SCOPED_TRACE(max_batch_tokens);
    auto backend = CreateCpuBackend(*ckpt_, {.num_threads = 2});
    ASSERT_TRUE(backend.ok()) << backend.status();
    std::vector<std::pair<int64_t, int>> calls;
    EngineOptions o;
    o.max_batch_tokens = max_batch_tokens;
    o.max_num_seqs = 8;
    auto engine = Engine::CreateWithCodec(
        o, std::make_unique<PrepareRecorder>(*std::move(backend), &calls, absl::OkStatus()), nullptr);
    ASSERT_TRUE(engine.ok()) << engine.status();
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0].first, (*engine)->options().max_batch_tokens);
    EXPECT_EQ(calls[0].first, max_batch_tokens > 0 ? max_batch_tokens : 512);  // the CPU backend's auto step
    // Only the sizing warm-up (when something is auto) ran before it; no request was served.
    EXPECT_EQ(calls[0].second, (*engine)->capacity().prefill_tokens_per_s > 0 ? 1 : 0);
    (*engine)->Shutdown();
  }
  // A failure is the engine's: it does not start, and says why.
  auto backend = CreateCpuBackend(*ckpt_, {.num_threads = 2});
  ASSERT_TRUE(backend.ok()) << backend.status();
  std::vector<std::pair<int64_t, int>> calls;
  auto engine = Engine::CreateWithCodec(
      EngineOptions{},
      std::make_unique<PrepareRecorder>(*std::move(backend), &calls, absl::InternalError("no memory to measure")),
      nullptr);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(engine.status().message().find("preparing the backend's steps: no memory to measure"), std::string::npos)
      << engine.status();
}

}  // namespace
}  // namespace sbserve
