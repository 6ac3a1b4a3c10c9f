// Automatic prefix caching on the real server: loopback gRPC, the CPU backend and the demo model.
// A request whose prompt prefix is served from the cache must give the same tokens and bitwise
// the same logprobs as the same request computed in full (skip_prefix_cache), and the counters in
// GetServerInfo and /metrics must say exactly how many tokens were looked up and found.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <random>
#include <utility>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "sbserve/v1/sbserve.grpc.pb.h"
#include "server/server.h"
#include "tests/server/live_server.h"

namespace sbserve {
namespace {

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::vector<v1::Logprobs> logprobs;
  uint32_t prompt_tokens = 0;
};

class PrefixServer {
 public:
  explicit PrefixServer(bool caching) : server_(Options(caching)) {
    absl::Status s = server_.Start();
    EXPECT_TRUE(s.ok()) << s;
    s = server_.LoadModel();
    EXPECT_TRUE(s.ok()) << s;
    stub_ = v1::SbServe::NewStub(
        grpc::CreateChannel(absl::StrCat("localhost:", server_.port()), grpc::InsecureChannelCredentials()));
  }
  static ServerOptions Options(bool caching) {
    ServerOptions o = testing::LoopbackServerOptions();
    o.engine.kv_block_size = 16;
    o.engine.enable_prefix_caching = caching;
    return o;
  }

  Outcome Generate(const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    Outcome out;
    auto reader = stub_->Generate(&ctx, req);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      out.ids.insert(out.ids.end(), msg.token_ids().begin(), msg.token_ids().end());
      out.logprobs.insert(out.logprobs.end(), msg.logprobs().begin(), msg.logprobs().end());
      if (msg.has_usage()) out.prompt_tokens = msg.usage().prompt_tokens();
    }
    out.status = reader->Finish();
    return out;
  }
  v1::ServerInfo Info() {
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    EXPECT_TRUE(stub_->GetServerInfo(&ctx, {}, &info).ok());
    return info;
  }
  // GetServerInfo once nothing runs and no block is held (a request's blocks are freed before
  // its final message, but the step's counters may be published just after).
  v1::ServerInfo IdleInfo() {
    v1::ServerInfo i;
    for (int n = 0; n < 2000; ++n) {
      i = Info();
      if (i.running() == 0 && i.waiting() == 0 && i.kv_blocks_used() == 0) break;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return i;
  }
  std::string Metrics() {
    httplib::Client http("127.0.0.1", server_.metrics_port());
    auto res = http.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }

 private:
  Server server_;
  std::unique_ptr<v1::SbServe::Stub> stub_;
};

v1::GenerateRequest Req(const std::vector<int32_t>& ids, float temperature, bool skip) {
  v1::GenerateRequest r;
  for (int32_t id : ids) r.mutable_token_ids()->add_ids(id);
  r.mutable_sampling()->set_temperature(temperature);
  r.mutable_sampling()->set_seed(42);
  r.mutable_stopping()->set_max_tokens(24);
  r.mutable_stopping()->set_ignore_eos(true);
  r.set_logprobs(5);
  if (skip) r.set_skip_prefix_cache(true);
  return r;
}

void ExpectIdentical(const Outcome& got, const Outcome& want) {
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.ids, want.ids);
  ASSERT_EQ(got.logprobs.size(), want.logprobs.size());
  for (size_t i = 0; i < got.logprobs.size(); ++i) {
    // Bitwise: the CPU backend computes a token's K/V and logits from its prefix alone, in the
    // same order whether the prefix was computed in this step or read from cached blocks.
    EXPECT_EQ(got.logprobs[i].logprob(), want.logprobs[i].logprob()) << i;
    ASSERT_EQ(got.logprobs[i].top_size(), want.logprobs[i].top_size());
    for (int k = 0; k < got.logprobs[i].top_size(); ++k) {
      EXPECT_EQ(got.logprobs[i].top(k).id(), want.logprobs[i].top(k).id());
      EXPECT_EQ(got.logprobs[i].top(k).logprob(), want.logprobs[i].top(k).logprob());
    }
  }
}

// `n` token ids of the demo model's vocabulary (2048), from `seed`.
std::vector<int32_t> Ids(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>(rng() % 2000) + 20);
  return ids;
}
std::vector<int32_t> Cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(PrefixCacheServer, CachedPrefixGivesBitwiseTheSameOutputAndCountsExactly) {
  PrefixServer ts(/*caching=*/true);
  for (float temperature : {0.0f, 0.8f}) {
    SCOPED_TRACE(temperature);
    // 50 shared tokens (3 full blocks and 2 tokens), then 21 or 30 tokens of each request's own.
    const uint32_t seed = temperature > 0 ? 100 : 200;
    const std::vector<int32_t> shared = Ids(50, seed);
    const std::vector<int32_t> a = Cat(shared, Ids(21, seed + 1));
    std::vector<int32_t> b = Cat(shared, Ids(30, seed + 2));
    if (b[50] == a[50]) b[50] = a[50] + 1;
    const v1::ServerInfo before = ts.IdleInfo();
    const Outcome full_a = ts.Generate(Req(a, temperature, /*skip=*/true));   // computed, publishes nothing
    const Outcome full_b = ts.Generate(Req(b, temperature, /*skip=*/true));
    ASSERT_TRUE(full_a.status.ok()) << full_a.status.error_message();
    ASSERT_TRUE(full_b.status.ok()) << full_b.status.error_message();
    const v1::ServerInfo skipped = ts.IdleInfo();
    EXPECT_EQ(skipped.prefix_cache_queries(), before.prefix_cache_queries());  // opted out: not looked up
    EXPECT_EQ(skipped.kv_blocks_cached_free(), before.kv_blocks_cached_free());

    const Outcome first_a = ts.Generate(Req(a, temperature, false));  // looks up, publishes a's blocks
    const Outcome again_a = ts.Generate(Req(a, temperature, false));  // all but its last block cached
    const Outcome then_b = ts.Generate(Req(b, temperature, false));   // shares the leading blocks
    ExpectIdentical(first_a, full_a);
    ExpectIdentical(again_a, full_a);
    ExpectIdentical(then_b, full_b);

    const v1::ServerInfo after = ts.IdleInfo();
    ASSERT_EQ(full_a.prompt_tokens, 71u);
    EXPECT_EQ(after.prefix_cache_queries() - before.prefix_cache_queries(), 71u + 71u + 80u);
    // again_a finds its first 4 blocks (64 of 71 tokens; its output blocks are not in its prompt),
    // b the 3 blocks of the shared tokens; first_a nothing (the opted-out runs published nothing).
    EXPECT_EQ(after.prefix_cache_hits() - before.prefix_cache_hits(), 64u + 48u);
    EXPECT_GT(after.kv_blocks_cached_free(), 0);
    EXPECT_TRUE(after.prefix_caching());
    EXPECT_EQ(after.kv_blocks_used(), 0);

    // /metrics follows from the step reports, which may trail the final message by a moment.
    const std::vector<std::pair<std::string, double>> want = {
        {"sbserve_prefix_cache_queries_total", static_cast<double>(after.prefix_cache_queries())},
        {"sbserve_prefix_cache_hits_total", static_cast<double>(after.prefix_cache_hits())},
        {"sbserve_kv_cache_cached_free_blocks", static_cast<double>(after.kv_blocks_cached_free())},
        {"sbserve_kv_cache_used_blocks", 0.0}};
    std::string page;
    auto agrees = [&] {
      for (const auto& [name, value] : want) {
        if (testing::MetricValue(page, name) != value) return false;
      }
      return true;
    };
    for (int n = 0; n < 2000 && !agrees(); ++n) {
      absl::SleepFor(absl::Milliseconds(5));
      page = ts.Metrics();
    }
    for (const auto& [name, value] : want) EXPECT_EQ(testing::MetricValue(page, name), value) << name;
  }
}

TEST(PrefixCacheServer, ConcurrentSharersMatchTheirUncachedOutputs) {
  PrefixServer ts(/*caching=*/true);
  constexpr int kN = 8;
  std::vector<v1::GenerateRequest> reqs;
  std::vector<Outcome> want(kN), got(kN);
  for (int i = 0; i < kN; ++i) {
    reqs.push_back(Req(Cat(Ids(40, 300), Ids(5 + i % 3, 400 + i % 3)), i % 2 ? 0.7f : 0.0f, false));
    v1::GenerateRequest skip = reqs.back();
    skip.set_skip_prefix_cache(true);
    want[i] = ts.Generate(skip);
    ASSERT_TRUE(want[i].status.ok()) << want[i].status.error_message();
  }
  // One cached run publishes the shared blocks, so that every concurrent request below shares them.
  ExpectIdentical(ts.Generate(reqs[0]), want[0]);
  const uint64_t hits_before = ts.IdleInfo().prefix_cache_hits();
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i) threads.emplace_back([&, i] { got[i] = ts.Generate(reqs[i]); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kN; ++i) {
    SCOPED_TRACE(i);
    ExpectIdentical(got[i], want[i]);
  }
  const v1::ServerInfo info = ts.IdleInfo();
  EXPECT_GE(info.prefix_cache_hits() - hits_before, 32u * kN);  // the 2 full blocks of the 40 shared tokens
  EXPECT_EQ(info.kv_blocks_used(), 0);
  EXPECT_EQ(info.running(), 0);
}

TEST(PrefixCacheServer, OffCachesNothingAndCountsNothing) {
  PrefixServer ts(/*caching=*/false);
  const std::vector<int32_t> a = Ids(60, 500);
  const Outcome one = ts.Generate(Req(a, 0.0f, false));
  const Outcome two = ts.Generate(Req(a, 0.0f, false));
  ExpectIdentical(two, one);
  const v1::ServerInfo info = ts.IdleInfo();
  EXPECT_FALSE(info.prefix_caching());
  EXPECT_EQ(info.prefix_cache_queries(), 0u);
  EXPECT_EQ(info.prefix_cache_hits(), 0u);
  EXPECT_EQ(info.kv_blocks_cached_free(), 0);
  const std::string page = ts.Metrics();
  EXPECT_EQ(testing::MetricValue(page, "sbserve_prefix_cache_queries_total"), 0.0);
  EXPECT_EQ(testing::MetricValue(page, "sbserve_kv_cache_cached_free_blocks"), 0.0);
}

}  // namespace
}  // namespace sbserve
