// The Engine API with its own thread over the fake backend: admission, validation, abort,
// drain and shutdown semantics.
#include "engine/engine.h"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/collector.h"
#include "tests/server/fake_backend.h"

namespace sbserve {
namespace {

using testing::Collector;


GenerateRequest Req(const std::string& id, int prompt_len, int max_tokens) {
  GenerateRequest r;
  r.request_id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt_ids.push_back(1 + i % (kFakeVocab - 1));
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  r.ignore_eos = true;
  return r;
}

std::unique_ptr<Engine> MakeEngine(EngineOptions o = {}) {
  o.kv_num_blocks = o.kv_num_blocks > 0 ? o.kv_num_blocks : 512;
  auto backend = std::make_unique<FakeBackend>();
  backend->step_delay = absl::Microseconds(200);
  auto e = Engine::CreateWithCodec(o, std::move(backend), nullptr);
  EXPECT_TRUE(e.ok()) << e.status();
  return *std::move(e);
}

TEST(Engine, GeneratesAndReportsStats) {
  auto engine = MakeEngine();
  Collector c;
  ASSERT_TRUE(engine->Submit(Req("a", 10, 7), c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.num_ids(), 7u);
  EXPECT_EQ(c.final().finish_reason, FinishReason::kLength);
  EXPECT_EQ(c.final().prompt_tokens, 10);
  for (int i = 0; i < 1000 && engine->Stats().requests_finished == 0; ++i) absl::SleepFor(absl::Milliseconds(1));
  const EngineStats s = engine->Stats();
  EXPECT_EQ(s.kv_blocks_used, 0);
  EXPECT_EQ(s.kv_blocks_total, 512);
  EXPECT_EQ(s.requests_finished, 1u);
}

TEST(Engine, ValidationNamesTheField) {
  auto engine = MakeEngine();
  auto submit = [&](GenerateRequest r) { return engine->Submit(std::move(r), [](GenerateEvent) {}); };
  GenerateRequest r = Req("", 3, 3);
  EXPECT_EQ(submit(r).code(), absl::StatusCode::kInvalidArgument);
  r = Req("x", 3, 3);
  r.prompt_ids.push_back(kFakeVocab);
  absl::Status st = submit(r);
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("token_ids"), std::string::npos);
  r = Req("x", 3, 3);
  r.has_text = true;
  r.text = "no tokenizer";
  EXPECT_EQ(submit(r).code(), absl::StatusCode::kInvalidArgument);
  r = Req("x", 3, 3);
  r.stop_strings = {"stop"};
  EXPECT_EQ(submit(r).code(), absl::StatusCode::kInvalidArgument);
  r = Req("x", 600, 3);  // the fake model's context is 512
  st = submit(r);
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("prompt"), std::string::npos);
  r = Req("x", 500, 20);
  st = submit(r);
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("max_tokens"), std::string::npos);
  r = Req("x", 3, 3);
  r.sampling.top_p = 0;
  EXPECT_EQ(submit(r).code(), absl::StatusCode::kInvalidArgument);
  r = Req("x", 3, 3);
  r.sampling.logit_bias = {{1, 5.f}, {kFakeVocab, -100.f}};
  st = submit(r);
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("sampling.logit_bias: token 64 is outside [0, 64)"), std::string::npos) << st;
  // Unset max_tokens becomes the default, capped by the context.
  EngineOptions o;
  o.default_max_tokens = 5;
  auto e2 = MakeEngine(o);
  Collector c;
  GenerateRequest d = Req("d", 3, 0);
  ASSERT_TRUE(e2->Submit(d, c.Sink()).ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.num_ids(), 5u);
  // And by the KV cache when it holds less than a context: 4 blocks of 16 = 64 tokens, so a
  // 3-token prompt gets 61 of the default 256 instead of a refusal naming a field it never set.
  EngineOptions small;
  small.kv_num_blocks = 4;
  small.kv_block_size = 16;
  auto e3 = MakeEngine(small);
  Collector k;
  ASSERT_TRUE(e3->Submit(Req("k", 3, 0), k.Sink()).ok());
  ASSERT_TRUE(k.Wait());
  EXPECT_EQ(k.final().finish_reason, FinishReason::kLength);
  EXPECT_EQ(k.num_ids(), 61u);
  // A prompt that fills the KV cache is refused, naming the prompt.
  Collector full;
  st = e3->Submit(Req("f", 64, 0), full.Sink());
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("prompt: 64 tokens leave no room in the KV cache"), std::string::npos) << st;
}

// A +100 bias makes every draw of a sampled request that token; a -100 bias on it in a greedy
// request keeps it out of the output; a request beside them without a bias is unaffected.
TEST(Engine, LogitBiasSteersTheDrawsOfItsRequestOnly) {
  auto engine = MakeEngine();
  Collector forced, banned, plain, plain_alone;
  GenerateRequest f = Req("forced", 6, 12);
  f.sampling.temperature = 1.0f;
  f.sampling.logit_bias = {{9, 100.f}};
  GenerateRequest g = Req("plain", 6, 12);
  g.sampling.temperature = 0.f;
  ASSERT_TRUE(engine->Submit(f, forced.Sink()).ok());
  ASSERT_TRUE(engine->Submit(g, plain.Sink()).ok());
  ASSERT_TRUE(forced.Wait());
  ASSERT_TRUE(plain.Wait());
  EXPECT_EQ(forced.ids(), std::vector<int32_t>(12, 9));
  g.request_id = "plain-alone";
  ASSERT_TRUE(engine->Submit(g, plain_alone.Sink()).ok());
  ASSERT_TRUE(plain_alone.Wait());
  EXPECT_EQ(plain.ids(), plain_alone.ids());
  // Ban the greedy request's first token: it picks another one there.
  GenerateRequest b = g;
  b.request_id = "banned";
  b.sampling.logit_bias = {{plain.ids()[0], -100.f}};
  ASSERT_TRUE(engine->Submit(b, banned.Sink()).ok());
  ASSERT_TRUE(banned.Wait());
  ASSERT_FALSE(banned.ids().empty());
  EXPECT_NE(banned.ids()[0], plain.ids()[0]);
}

TEST(Engine, AdmissionByQueuedRequestsCarriesARetryDelay) {
  EngineOptions o;
  o.max_num_seqs = 1;
  o.max_queued_requests = 2;
  o.retry_after = absl::Milliseconds(750);
  auto engine = MakeEngine(o);
  std::vector<std::unique_ptr<Collector>> cs;
  int accepted = 0;
  absl::Status refused;
  for (int i = 0; i < 10; ++i) {
    cs.push_back(std::make_unique<Collector>());
    absl::Status s = engine->Submit(Req(absl::StrCat("r", i), 4, 300), cs.back()->Sink());
    if (s.ok()) {
      accepted++;
    } else {
      refused = s;
    }
  }
  EXPECT_GE(accepted, 2);
  EXPECT_LE(accepted, 3);  // at most one running plus two queued
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  auto payload = refused.GetPayload(kRetryAfterPayloadUrl);
  ASSERT_TRUE(payload.has_value());
  EXPECT_EQ(std::string(*payload), "750");
  engine->Shutdown();
}

TEST(Engine, AbortFreesTheRequestAndDuplicatesAreRefused) {
  auto engine = MakeEngine();
  Collector c;
  ASSERT_TRUE(engine->Submit(Req("long", 8, 500), c.Sink()).ok());
  EXPECT_EQ(engine->Submit(Req("long", 8, 5), [](GenerateEvent) {}).code(), absl::StatusCode::kAlreadyExists);
  while (c.num_ids() < 3) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(engine->Abort({"long", "unknown"}), std::vector<std::string>{"long"});
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.final().finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(c.final().status.code(), absl::StatusCode::kCancelled);
  for (int i = 0; i < 100 && engine->Stats().kv_blocks_used > 0; ++i) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  // The id is free again.
  Collector again;
  ASSERT_TRUE(engine->Submit(Req("long", 8, 2), again.Sink()).ok());
  ASSERT_TRUE(again.Wait());
}

// An abort that names an owner reaches only the request submitted with it: a late cancel of a call
// whose request ended misses a new request that took the id from another call.
TEST(Engine, AnAbortWithAnOwnerReachesOnlyThatOwnersRequest) {
  auto engine = MakeEngine();
  Collector c;
  GenerateRequest r = Req("id", 8, 500);
  r.owner = 2;  // the new call's request
  ASSERT_TRUE(engine->Submit(r, c.Sink()).ok());
  while (c.num_ids() < 2) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_TRUE(engine->Abort({"id"}, CancelSource::kClient, /*owner=*/1).empty()) << "the old call's cancel";
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_FALSE(c.done());
  EXPECT_EQ(engine->Abort({"id"}, CancelSource::kClient, /*owner=*/2), std::vector<std::string>{"id"});
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.final().finish_reason, FinishReason::kCancelled);
  // Without an owner (the Abort RPC), any request with the id.
  Collector d;
  r.owner = 7;
  ASSERT_TRUE(engine->Submit(r, d.Sink()).ok());
  EXPECT_EQ(engine->Abort({"id"}), std::vector<std::string>{"id"});
  ASSERT_TRUE(d.Wait());
  EXPECT_EQ(d.final().finish_reason, FinishReason::kCancelled);
}

// An Abort accepted for a request in the step that ends it by itself is dropped with it: it must not
// cancel the next request that takes the same id. Staged on the engine thread: "x" (one token) and
// "y" are prefilled in the same step; y's first event, delivered before that step's final events,
// sends the Abort while x is still live, and x's final event submits the new "x". When the two
// land in different steps (x's final came first), the attempt is not staged and is repeated.
TEST(Engine, AnAbortOfARequestThatEndedByItselfSparesTheNextOneWithItsId) {
  auto engine = MakeEngine();
  Engine* e = engine.get();
  int staged = 0;
  for (int attempt = 0; attempt < 20 && staged == 0; ++attempt) {
    const std::string x = absl::StrCat("x", attempt), y = absl::StrCat("y", attempt);
    bool x_finished = false, resubmitted = false;  // engine thread only, until the waits below
    std::vector<std::string> aborted;
    Collector next, y_done;
    ASSERT_TRUE(e->Submit(Req(x, 8, 1), [&](GenerateEvent ev) {
      if (!ev.finished) return;
      x_finished = true;
      resubmitted = e->Submit(Req(x, 8, 4), next.Sink()).ok();
    }).ok());
    auto y_sink = y_done.Sink();
    bool y_first = true;
    ASSERT_TRUE(e->Submit(Req(y, 8, 6), [&](GenerateEvent ev) {
      if (y_first && !x_finished) aborted = e->Abort({x});
      y_first = false;
      y_sink(std::move(ev));
    }).ok());
    ASSERT_TRUE(y_done.Wait());
    ASSERT_TRUE(resubmitted);
    ASSERT_TRUE(next.Wait());
    if (aborted != std::vector<std::string>{x}) continue;
    ++staged;
    EXPECT_EQ(next.final().finish_reason, FinishReason::kLength) << "attempt " << attempt;
    EXPECT_EQ(next.num_ids(), 4u);
  }
  EXPECT_EQ(staged, 1) << "x and y never shared a step";
}

TEST(Engine, DrainRefusesNewWorkAndShutdownEndsTheRest) {
  auto engine = MakeEngine();
  Collector c;
  ASSERT_TRUE(engine->Submit(Req("a", 8, 500), c.Sink()).ok());
  EXPECT_FALSE(engine->Drain(absl::Milliseconds(1)));  // still running
  EXPECT_TRUE(engine->Stats().draining);
  EXPECT_EQ(engine->Submit(Req("b", 8, 5), [](GenerateEvent) {}).code(), absl::StatusCode::kUnavailable);
  engine->Shutdown();
  ASSERT_TRUE(c.Wait(absl::Seconds(1)));
  EXPECT_EQ(c.final().status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  engine->Shutdown();  // idempotent
}

TEST(Engine, ManySubmittersAndAbortersAtOnce) {
  EngineOptions o;
  o.max_batch_tokens = 64;
  o.max_queued_requests = 1000;
  auto engine = MakeEngine(o);
  constexpr int kThreads = 8, kPerThread = 25;
  std::vector<std::unique_ptr<Collector>> cs(kThreads * kPerThread);
  for (auto& c : cs) c = std::make_unique<Collector>();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int k = t * kPerThread + i;
        ASSERT_TRUE(engine->Submit(Req(absl::StrCat("q", k), 3 + k % 20, 5 + k % 30), cs[k]->Sink()).ok());
        if (k % 3 == 0) engine->Abort({absl::StrCat("q", k)});
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int k = 0; k < kThreads * kPerThread; ++k) {
    ASSERT_TRUE(cs[k]->Wait()) << k;
    const GenerateEvent f = cs[k]->final();
    if (k % 3 != 0) {
      EXPECT_EQ(f.finish_reason, FinishReason::kLength) << k;
      EXPECT_EQ(cs[k]->num_ids(), static_cast<size_t>(5 + k % 30)) << k;
    }
  }
  // Stats are refreshed after each step; the last final events go out inside it.
  for (int i = 0; i < 1000 && engine->Stats().kv_blocks_used > 0; ++i) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  EXPECT_EQ(engine->Stats().requests_finished, static_cast<uint64_t>(kThreads * kPerThread));
}

// Prefix caching through the engine's thread: requests submitted from several threads share a
// prompt prefix; every request gets the tokens it gets alone with caching off, the StepReports
// add up to the hit and query counts of Stats, and no block stays held.
TEST(Engine, PrefixCachingAcrossThreadsCountsAndKeepsOutputs) {
  struct Counting : EngineObserver {
    void OnStep(const StepReport& r) override {
      queries += static_cast<uint64_t>(r.prefix_cache_queries);
      hits += static_cast<uint64_t>(r.prefix_cache_hits);
    }
    std::atomic<uint64_t> queries{0}, hits{0};
  };
  auto request = [](int i) {
    GenerateRequest r = Req(absl::StrCat("p", i), 40 + i % 3, 6);
    r.prompt_ids.push_back(1 + i % 5);  // a private tail after the shared 40+ tokens
    return r;
  };
  constexpr int kN = 12;
  std::vector<std::vector<int32_t>> want(kN);
  {
    EngineOptions off;
    off.enable_prefix_caching = false;
    auto engine = MakeEngine(off);
    for (int i = 0; i < kN; ++i) {
      Collector c;
      ASSERT_TRUE(engine->Submit(request(i), c.Sink()).ok());
      ASSERT_TRUE(c.Wait());
      want[i] = c.ids();
    }
    EXPECT_EQ(engine->Stats().prefix_cache_queries, 0u);
    EXPECT_FALSE(engine->Stats().prefix_caching);
  }
  EngineOptions o;
  o.kv_block_size = 8;
  auto engine = MakeEngine(o);
  auto observer = std::make_shared<Counting>();
  engine->SetObserver(observer);
  std::vector<Collector> got(kN);
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kN; i += 3) {
        EXPECT_TRUE(engine->Submit(request(i), got[i].Sink()).ok());
        EXPECT_TRUE(got[i].Wait());
        (void)engine->Stats();  // read while the engine thread runs other requests
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < kN; ++i) EXPECT_EQ(got[i].ids(), want[i]) << i;
  EngineStats s = engine->Stats();
  for (int i = 0; i < 1000 && (s.kv_blocks_used > 0 || observer->queries.load() != s.prefix_cache_queries); ++i) {
    absl::SleepFor(absl::Milliseconds(1));
    s = engine->Stats();
  }
  EXPECT_TRUE(s.prefix_caching);
  EXPECT_EQ(s.kv_blocks_used, 0);
  EXPECT_GT(s.kv_blocks_cached_free, 0);
  EXPECT_GT(s.prefix_cache_hits, 0u);
  EXPECT_EQ(s.prefix_cache_hits % 8, 0u);
  EXPECT_EQ(observer->queries.load(), s.prefix_cache_queries);
  EXPECT_EQ(observer->hits.load(), s.prefix_cache_hits);
}

}  // namespace
}  // namespace sbserve
