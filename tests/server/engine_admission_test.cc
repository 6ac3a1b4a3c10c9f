// The engine's admission bounds at their edges: a prompt of exactly the context length, a
// request larger than the KV cache, a prompt larger than the queued-token limit into an empty
// queue. Each kills a mutant of tests/mutants/ that engine_test.cc lets through.
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/server/fake_backend.h"

namespace sbserve {
namespace {

GenerateRequest Req(const std::string& id, int prompt_len, int max_tokens) {
  GenerateRequest r;
  r.request_id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt_ids.push_back(1 + i % (kFakeVocab - 1));
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  r.ignore_eos = true;
  return r;
}

std::unique_ptr<Engine> Make(EngineOptions o) {
  auto e = Engine::CreateWithCodec(o, std::make_unique<FakeBackend>(), nullptr);
  EXPECT_TRUE(e.ok()) << e.status();
  return *std::move(e);
}

struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  GenerateEvent last;
  EventSink Sink() {
    return [this](GenerateEvent e) {
      std::lock_guard<std::mutex> lock(mu);
      if (e.finished) {
        done = true;
        last = std::move(e);
        cv.notify_all();
      }
    };
  }
  bool Wait() {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(30), [this] { return done; });
  }
};

TEST(FrontDoor, APromptOfTheWholeContextIsRefused) {
  EngineOptions o;
  o.kv_num_blocks = 512;
  auto engine = Make(o);
  // The fake model's context is 512 tokens.
  absl::Status st = engine->Submit(Req("x", 512, 0), [](GenerateEvent) {});
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("prompt"), std::string::npos) << st;
  Waiter w;
  ASSERT_TRUE(engine->Submit(Req("y", 511, 0), w.Sink()).ok());
  ASSERT_TRUE(w.Wait());
  EXPECT_EQ(w.last.completion_tokens, 1);
}

TEST(FrontDoor, ARequestLargerThanTheKvCacheIsRefused) {
  EngineOptions o;
  o.kv_block_size = 16;
  o.kv_num_blocks = 4;  // 64 tokens
  auto engine = Make(o);
  absl::Status st = engine->Submit(Req("x", 50, 15), [](GenerateEvent) {});
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("KV cache"), std::string::npos) << st;
  Waiter w;
  ASSERT_TRUE(engine->Submit(Req("y", 50, 14), w.Sink()).ok());
  ASSERT_TRUE(w.Wait());
  EXPECT_EQ(w.last.completion_tokens, 14);
}

TEST(FrontDoor, APromptAboveTheQueuedTokenLimitEntersAnEmptyQueue) {
  EngineOptions o;
  o.kv_num_blocks = 64;
  o.max_queued_tokens = 8;
  auto engine = Make(o);
  Waiter w;
  absl::Status st = engine->Submit(Req("x", 20, 3), w.Sink());
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_TRUE(w.Wait());
  EXPECT_EQ(w.last.completion_tokens, 3);
}

// min_tokens above the effective max_tokens (unset max_tokens: the default, capped by the context)
// is refused as the README says, not silently clamped; at exactly max_tokens it runs to the end.
TEST(FrontDoor, MinTokensAboveTheEffectiveMaxTokensIsRefused) {
  EngineOptions o;
  o.kv_num_blocks = 512;
  o.default_max_tokens = 20;
  auto engine = Make(o);
  GenerateRequest r = Req("x", 10, 0);
  r.min_tokens = 21;
  absl::Status st = engine->Submit(r, [](GenerateEvent) {});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("stopping.min_tokens"), std::string::npos) << st;
  r = Req("y", 500, 0);  // the context (512) leaves 12 tokens: the effective max_tokens is 12
  r.min_tokens = 13;
  EXPECT_EQ(engine->Submit(r, [](GenerateEvent) {}).code(), absl::StatusCode::kInvalidArgument);
  Waiter w;
  r = Req("z", 10, 0);
  r.min_tokens = 20;
  ASSERT_TRUE(engine->Submit(r, w.Sink()).ok());
  ASSERT_TRUE(w.Wait());
  EXPECT_EQ(w.last.completion_tokens, 20);
}

}  // namespace
}  // namespace sbserve
