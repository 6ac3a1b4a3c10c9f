// EnginePool over engines with the fake backend: least-loaded routing, round-robin ties, prefix
// affinity, Abort and duplicate ids across engines, drain across engines, taking an engine out,
// and totals that are the sums of the engines' stats.
#include "server/engine_pool.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/server/collector.h"
#include "tests/server/fake_backend.h"

namespace sbserve {
namespace {

using testing::Collector;
constexpr absl::Duration kWait = absl::Seconds(20);

// `first` is the first token of the prompt: prompts with the same `first` share their first block.
GenerateRequest Req(const std::string& id, int prompt_len, int max_tokens, int first = 1) {
  GenerateRequest r;
  r.request_id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt_ids.push_back(1 + (first + i) % (kFakeVocab - 1));
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  r.ignore_eos = true;
  return r;
}

// `n` engines, each a fake backend whose steps take `step` (so that requests stay live), with
// 64 KV blocks of 16 tokens (1024 tokens) each.
std::unique_ptr<EnginePool> MakePool(int n, absl::Duration step, EnginePoolOptions po = {}) {
  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<std::string> devices;
  for (int i = 0; i < n; ++i) {
    auto backend = std::make_unique<FakeBackend>();
    backend->step_delay = step;
    EngineOptions o;
    o.kv_num_blocks = 64;
    o.sampling_threads = 1;
    auto e = Engine::Create(o, std::move(backend), nullptr);
    EXPECT_TRUE(e.ok()) << e.status();
    engines.push_back(*std::move(e));
    devices.push_back("fake:" + std::to_string(i));
  }
  auto pool = EnginePool::Create(std::move(engines), std::move(devices), po);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *std::move(pool);
}

// The engine a submit went to: the one whose routed counter moved.
int RoutedTo(EnginePool& pool, const std::vector<uint64_t>& before) {
  int to = -1;
  for (int i = 0; i < pool.size(); ++i) {
    if (pool.routed(i) == before[i] + 1) {
      EXPECT_EQ(to, -1) << "two engines counted the request";
      to = i;
    } else {
      EXPECT_EQ(pool.routed(i), before[i]);
    }
  }
  return to;
}

std::vector<uint64_t> Routed(EnginePool& pool) {
  std::vector<uint64_t> r;
  for (int i = 0; i < pool.size(); ++i) r.push_back(pool.routed(i));
  return r;
}

TEST(EnginePool, CreateRefusesBadInput) {
  EXPECT_FALSE(EnginePool::Create({}, {}).ok());
  std::vector<std::unique_ptr<Engine>> engines;
  EngineOptions o;
  o.kv_num_blocks = 8;
  engines.push_back(*Engine::Create(o, std::make_unique<FakeBackend>(), nullptr));
  EXPECT_EQ(EnginePool::Create(std::move(engines), {"a", "b"}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EnginePool, TheLeastLoadedEngineTakesTheRequest) {
  auto pool = MakePool(3, absl::Milliseconds(20));
  // Load the engines directly: 300, 100 and 200 prompt tokens that stay (queued or in KV) for
  // the whole test.
  Collector c0, c1, c2;
  ASSERT_TRUE(pool->engine(0).Submit(Req("l0", 300, 200), c0.Sink()).ok());
  ASSERT_TRUE(pool->engine(1).Submit(Req("l1", 100, 200), c1.Sink()).ok());
  ASSERT_TRUE(pool->engine(2).Submit(Req("l2", 200, 200), c2.Sink()).ok());
  Collector n1;
  std::vector<uint64_t> before = Routed(*pool);
  ASSERT_TRUE(pool->Submit(Req("n1", 20, 200, 5), n1.Sink()).ok());
  EXPECT_EQ(RoutedTo(*pool, before), 1);
  // Engine 1 now holds ~120 tokens, still the least; a 150-token prompt tips it past engine 2.
  Collector n2, n3;
  before = Routed(*pool);
  ASSERT_TRUE(pool->Submit(Req("n2", 150, 200, 7), n2.Sink()).ok());
  EXPECT_EQ(RoutedTo(*pool, before), 1);
  before = Routed(*pool);
  ASSERT_TRUE(pool->Submit(Req("n3", 20, 200, 9), n3.Sink()).ok());
  EXPECT_EQ(RoutedTo(*pool, before), 2);
  pool->Shutdown();
}

TEST(EnginePool, IdleEnginesTakeTurns) {
  auto pool = MakePool(3, absl::ZeroDuration());
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 3; ++i) {
      Collector c;
      // Each prompt starts differently: no affinity.
      ASSERT_TRUE(pool->Submit(Req("r" + std::to_string(round * 3 + i), 20, 4, round * 3 + i), c.Sink()).ok());
      ASSERT_TRUE(c.Wait(kWait));
      ASSERT_EQ(c.final().finish_reason, FinishReason::kLength);
    }
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pool->routed(i), 2u) << "engine " << i;
}

TEST(EnginePool, SamePrefixGoesWhereItWentUnlessThatEngineIsMuchBusier) {
  auto pool = MakePool(2, absl::Milliseconds(20));
  {
    Collector a;
    std::vector<uint64_t> before = Routed(*pool);
    ASSERT_TRUE(pool->Submit(Req("a", 40, 2, 11), a.Sink()).ok());
    const int first = RoutedTo(*pool, before);
    ASSERT_TRUE(a.Wait(kWait));
    // Idle again: round-robin alone would pick the other engine.
    Collector b;
    before = Routed(*pool);
    ASSERT_TRUE(pool->Submit(Req("b", 40, 2, 11), b.Sink()).ok());
    EXPECT_EQ(RoutedTo(*pool, before), first);
    ASSERT_TRUE(b.Wait(kWait));
    // Far busier (300 of 1024 tokens against 0, beyond the default slack of 0.05): least loaded wins.
    Collector load;
    ASSERT_TRUE(pool->engine(first).Submit(Req("load", 300, 200, 30), load.Sink()).ok());
    Collector c;
    before = Routed(*pool);
    ASSERT_TRUE(pool->Submit(Req("c", 40, 2, 11), c.Sink()).ok());
    EXPECT_EQ(RoutedTo(*pool, before), 1 - first);
    ASSERT_TRUE(c.Wait(kWait));
    pool->engine(first).Abort({"load"});  // submitted to the engine directly, not through the pool
    ASSERT_TRUE(load.Wait(kWait));
  }
  // With affinity off the same two requests alternate.
  EnginePoolOptions off;
  off.affinity_slack = -1;
  auto plain = MakePool(2, absl::ZeroDuration(), off);
  for (int i = 0; i < 2; ++i) {
    Collector c;
    ASSERT_TRUE(plain->Submit(Req("p" + std::to_string(i), 40, 2, 11), c.Sink()).ok());
    ASSERT_TRUE(c.Wait(kWait));
  }
  EXPECT_EQ(plain->routed(0), 1u);
  EXPECT_EQ(plain->routed(1), 1u);
}

TEST(EnginePool, AbortFindsTheRequestOnItsEngineAndIdsAreUniqueAcrossEngines) {
  auto pool = MakePool(2, absl::Milliseconds(20));
  Collector a, b;
  std::vector<uint64_t> before = Routed(*pool);
  ASSERT_TRUE(pool->Submit(Req("a", 30, 300, 1), a.Sink()).ok());
  const int ea = RoutedTo(*pool, before);
  before = Routed(*pool);
  ASSERT_TRUE(pool->Submit(Req("b", 30, 300, 2), b.Sink()).ok());
  const int eb = RoutedTo(*pool, before);
  ASSERT_NE(ea, eb);
  // A live id is refused even though the other engine is the less loaded one.
  Collector dup;
  EXPECT_EQ(pool->Submit(Req("b", 5, 5, 3), dup.Sink()).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(pool->Abort({"nope", "b"}), std::vector<std::string>{"b"});
  ASSERT_TRUE(b.Wait(kWait));
  EXPECT_EQ(b.final().finish_reason, FinishReason::kCancelled);
  EXPECT_FALSE(a.done());
  EXPECT_EQ(pool->EngineStatsAt(ea).running + pool->EngineStatsAt(ea).waiting, 1);
  // Once b has ended its id is free again.
  Collector again;
  ASSERT_TRUE(pool->Submit(Req("b", 5, 2, 3), again.Sink()).ok());
  ASSERT_TRUE(again.Wait(kWait));
  EXPECT_EQ(again.final().finish_reason, FinishReason::kLength);
  EXPECT_EQ(pool->Abort({"a"}), std::vector<std::string>{"a"});
  ASSERT_TRUE(a.Wait(kWait));
  EXPECT_EQ(a.final().finish_reason, FinishReason::kCancelled);
}

TEST(EnginePool, DrainWaitsForEveryEngine) {
  auto pool = MakePool(2, absl::Milliseconds(5));
  Collector shorter, longer;
  // The second engine's request runs ten times longer: a drain that waited for the first engine
  // only would return with it still live.
  ASSERT_TRUE(pool->Submit(Req("s", 10, 10, 1), shorter.Sink()).ok());
  ASSERT_TRUE(pool->Submit(Req("l", 10, 100, 2), longer.Sink()).ok());
  EXPECT_EQ(pool->routed(0), 1u);
  EXPECT_EQ(pool->routed(1), 1u);
  EXPECT_TRUE(pool->Drain(absl::Seconds(20)));
  // An engine counts a request finished just before its final event goes out (Drain may return
  // between the two): the counts say whether both had ended; then wait for the events.
  EXPECT_EQ(pool->EngineStatsAt(0).requests_finished, 1u);
  EXPECT_EQ(pool->EngineStatsAt(1).requests_finished, 1u);
  ASSERT_TRUE(shorter.Wait(kWait));
  ASSERT_TRUE(longer.Wait(kWait));
  EXPECT_EQ(longer.final().finish_reason, FinishReason::kLength);
  EXPECT_TRUE(pool->Stats().draining);
  Collector late;
  EXPECT_EQ(pool->Submit(Req("late", 10, 5, 3), late.Sink()).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(pool->engine(1).Submit(Req("late", 10, 5, 3), late.Sink()).code(), absl::StatusCode::kUnavailable);
}

TEST(EnginePool, AnEngineTakenOutGetsNoNewRequests) {
  auto pool = MakePool(2, absl::ZeroDuration());
  EXPECT_EQ(pool->TakeOut(0), 1);
  EXPECT_FALSE(pool->serving(0));
  for (int i = 0; i < 4; ++i) {
    Collector c;
    ASSERT_TRUE(pool->Submit(Req("t" + std::to_string(i), 10, 2, i), c.Sink()).ok());
    ASSERT_TRUE(c.Wait(kWait));
  }
  EXPECT_EQ(pool->routed(0), 0u);
  EXPECT_EQ(pool->routed(1), 4u);
  EXPECT_TRUE(pool->Stats().backend_healthy);
  EXPECT_EQ(pool->TakeOut(1), 0);
  EXPECT_FALSE(pool->Stats().backend_healthy);
}

// A duplicate of a request live on an engine taken out of routing is refused by the pool itself:
// it never reaches that engine, which would take it if the request had just ended there.
TEST(EnginePool, ADuplicateIdNeverReachesAnEngineTakenOut) {
  auto pool = MakePool(2, absl::Milliseconds(20));
  Collector a;
  std::vector<uint64_t> before = Routed(*pool);
  ASSERT_TRUE(pool->Submit(Req("a", 30, 300, 1), a.Sink()).ok());
  const int ea = RoutedTo(*pool, before);
  ASSERT_GE(ea, 0);
  pool->TakeOut(ea);
  before = Routed(*pool);
  Collector dup;
  const absl::Status st = pool->Submit(Req("a", 5, 5, 3), dup.Sink());
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  EXPECT_NE(st.message().find("'a'"), std::string::npos) << st;
  EXPECT_EQ(Routed(*pool), before) << "the duplicate was routed";
  // Abort still finds the original there, and then the id is free for the serving engine.
  EXPECT_EQ(pool->Abort({"a"}), std::vector<std::string>{"a"});
  ASSERT_TRUE(a.Wait(kWait));
  Collector again;
  ASSERT_TRUE(pool->Submit(Req("a", 5, 2, 3), again.Sink()).ok());
  EXPECT_EQ(RoutedTo(*pool, before), 1 - ea);
  ASSERT_TRUE(again.Wait(kWait));
  EXPECT_EQ(again.final().finish_reason, FinishReason::kLength);
}

TEST(EnginePool, TotalsAreTheSumsOfTheEngines) {
  auto pool = MakePool(2, absl::Milliseconds(20));
  Collector a, b;
  ASSERT_TRUE(pool->engine(0).Submit(Req("a", 100, 200, 1), a.Sink()).ok());
  ASSERT_TRUE(pool->engine(1).Submit(Req("b", 40, 200, 2), b.Sink()).ok());
  std::vector<EngineStats> per;
  const EngineStats t = pool->Stats(&per);
  ASSERT_EQ(per.size(), 2u);
  EXPECT_EQ(t.running + t.waiting, 2);
  EXPECT_EQ(t.running, per[0].running + per[1].running);
  EXPECT_EQ(t.waiting, per[0].waiting + per[1].waiting);
  EXPECT_EQ(t.queued_prompt_tokens, per[0].queued_prompt_tokens + per[1].queued_prompt_tokens);
  EXPECT_EQ(t.kv_blocks_used, per[0].kv_blocks_used + per[1].kv_blocks_used);
  EXPECT_EQ(t.kv_blocks_total, 128);
  EXPECT_EQ(t.kv_block_size, 16);
  pool->engine(0).Abort({"a"});
  pool->engine(1).Abort({"b"});
  ASSERT_TRUE(a.Wait(kWait));
  ASSERT_TRUE(b.Wait(kWait));
  EXPECT_EQ(pool->Stats().requests_finished, 2u);
}

}  // namespace
}  // namespace sbserve
