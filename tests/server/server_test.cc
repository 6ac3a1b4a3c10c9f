// The real server in-process on loopback: CPU backend, the generated demo model, real gRPC
// clients. Each test starts its own server on ephemeral ports.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "sbserve/v1/sbserve.grpc.pb.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/server.h"
#include "tests/server/live_server.h"

namespace sbserve {
namespace {

using v1::GenerateRequest;
using v1::GenerateResponse;

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  std::vector<v1::Logprobs> logprobs;
  std::vector<v1::Logprobs> prompt_logprobs;
  int prompt_logprob_messages = 0;  // messages that carried prompt logprobs
  GenerateResponse last;  // the message with finish_reason, if any
  int messages = 0;
};

class TestServer {
 public:
  explicit TestServer(ServerOptions o = Defaults(), bool load = true) : server_(std::move(o)) {
    absl::Status s = server_.Start();
    EXPECT_TRUE(s.ok()) << s;
    channel_ = grpc::CreateChannel(absl::StrCat("localhost:", server_.port()), grpc::InsecureChannelCredentials());
    stub_ = v1::SbServe::NewStub(channel_);
    if (load) {
      s = server_.LoadModel();
      EXPECT_TRUE(s.ok()) << s;
    }
  }

  static ServerOptions Defaults() {
    return testing::LoopbackServerOptions();
  }

  Server& server() { return server_; }
  v1::SbServe::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

  Outcome Generate(const GenerateRequest& req, absl::Duration timeout = absl::Seconds(60),
                   grpc::ClientContext* external = nullptr) {
    grpc::ClientContext local;
    grpc::ClientContext& ctx = external != nullptr ? *external : local;
    if (external == nullptr) ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    Outcome out;
    auto reader = stub_->Generate(&ctx, req);
    GenerateResponse msg;
    while (reader->Read(&msg)) Absorb(msg, out);
    out.status = reader->Finish();
    return out;
  }

  static void Absorb(const GenerateResponse& msg, Outcome& out) {
    out.messages++;
    out.ids.insert(out.ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    out.text += msg.text();
    out.logprobs.insert(out.logprobs.end(), msg.logprobs().begin(), msg.logprobs().end());
    out.prompt_logprobs.insert(out.prompt_logprobs.end(), msg.prompt_logprobs().begin(), msg.prompt_logprobs().end());
    out.prompt_logprob_messages += msg.prompt_logprobs_size() > 0;
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) out.last = msg;
  }

  v1::ServerInfo Info() {
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    EXPECT_TRUE(stub_->GetServerInfo(&ctx, {}, &info).ok());
    return info;
  }

  // Waits until nothing runs or waits and no KV block is in use.
  bool WaitIdle(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      v1::ServerInfo i = Info();
      if (i.running() == 0 && i.waiting() == 0 && i.kv_blocks_used() == 0) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& service) {
    auto stub = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status st = stub->Check(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.status();
  }

 private:
  Server server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SbServe::Stub> stub_;
};

GenerateRequest TextReq(const std::string& text, int max_tokens, float temperature = 0.0f, uint64_t seed = 1) {
  GenerateRequest r;
  r.set_text(text);
  r.mutable_sampling()->set_temperature(temperature);
  r.mutable_sampling()->set_seed(seed);
  r.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(max_tokens));
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

using testing::MetricValue;

std::string ScrapeMetrics(TestServer& ts) {
  httplib::Client http("127.0.0.1", ts.server().metrics_port());
  auto res = http.Get("/metrics");
  return res && res->status == 200 ? res->body : "";
}

constexpr auto kServing = grpc::health::v1::HealthCheckResponse::SERVING;
constexpr auto kNotServing = grpc::health::v1::HealthCheckResponse::NOT_SERVING;

TEST(Server, StreamingRoundTripAndUnaryAgree) {
  TestServer ts;
  GenerateRequest req = TextReq("Once upon a time, in a land of code,", 24);
  Outcome out = ts.Generate(req);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.ids.size(), 24u);
  EXPECT_GT(out.messages, 1) << "tokens should stream, not arrive in one message";
  EXPECT_EQ(out.last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(out.last.usage().completion_tokens(), 24u);
  EXPECT_GT(out.last.usage().prompt_tokens(), 3u);
  EXPECT_GE(out.last.timings().last_token_us(), out.last.timings().first_token_us());
  EXPECT_FALSE(out.last.request_id().empty());

  grpc::ClientContext ctx;
  GenerateResponse unary;
  ASSERT_TRUE(ts.stub().Complete(&ctx, req, &unary).ok());
  EXPECT_EQ(std::vector<int32_t>(unary.token_ids().begin(), unary.token_ids().end()), out.ids);
  EXPECT_EQ(unary.text(), out.text);
  EXPECT_EQ(unary.finish_reason(), v1::FINISH_REASON_LENGTH);

  // Token-id input gives the same continuation as the text it encodes to.
  grpc::ClientContext tctx;
  v1::TokenizeRequest treq;
  treq.set_text(req.text());
  v1::TokenizeResponse tok;
  ASSERT_TRUE(ts.stub().Tokenize(&tctx, treq, &tok).ok());
  ASSERT_EQ(static_cast<uint32_t>(tok.ids_size()), out.last.usage().prompt_tokens());
  GenerateRequest ids_req = req;
  ids_req.mutable_token_ids()->mutable_ids()->Assign(tok.ids().begin(), tok.ids().end());
  Outcome by_ids = ts.Generate(ids_req);
  ASSERT_TRUE(by_ids.status.ok());
  EXPECT_EQ(by_ids.ids, out.ids);

  grpc::ClientContext mctx;
  v1::ModelInfo mi;
  ASSERT_TRUE(ts.stub().GetModelInfo(&mctx, {}, &mi).ok());
  EXPECT_EQ(mi.backend(), "cpu");
  EXPECT_EQ(mi.architecture(), "stickbreaking");
  EXPECT_GT(mi.context_length(), 0);
  EXPECT_TRUE(ts.WaitIdle());
}

TEST(Server, SixtyFourConcurrentStreamsMatchRunningAlone) {
  ServerOptions o = TestServer::Defaults();
  o.engine.max_batch_tokens = 256;
  TestServer ts(o);
  constexpr int kN = 64;
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < kN; ++i) {
    std::string prompt = absl::StrCat("Request number ", i, ":");
    for (int w = 0; w < i % 9; ++w) absl::StrAppend(&prompt, " more words for a longer prompt");
    const bool greedy = i % 2 == 0;
    GenerateRequest r = TextReq(prompt, 4 + (i * 5) % 37, greedy ? 0.0f : 0.7f + 0.01f * i, 1000 + i);
    if (i % 4 == 1) r.mutable_sampling()->set_top_k(20);
    if (i % 4 == 3) r.mutable_sampling()->set_top_p(0.9f);
    if (i % 8 == 5) r.mutable_sampling()->set_repetition_penalty(1.2f);
    if (i % 8 == 7) r.mutable_sampling()->set_frequency_penalty(0.5f);
    reqs.push_back(r);
  }
  std::vector<Outcome> alone(kN);
  for (int i = 0; i < kN; ++i) {
    alone[i] = ts.Generate(reqs[i]);
    ASSERT_TRUE(alone[i].status.ok()) << i << ": " << alone[i].status.error_message();
  }
  std::vector<Outcome> together(kN);
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i) threads.emplace_back([&, i] { together[i] = ts.Generate(reqs[i]); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kN; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    EXPECT_EQ(together[i].ids, alone[i].ids) << "request " << i << (i % 2 == 0 ? " (greedy)" : " (sampled, seeded)");
    EXPECT_EQ(together[i].text, alone[i].text) << i;
    EXPECT_EQ(together[i].ids.size(), static_cast<size_t>(4 + (i * 5) % 37));
  }
  EXPECT_TRUE(ts.WaitIdle());
}

TEST(Server, PreemptionWhenTheKvCacheRunsOutKeepsResultsExact) {
  ServerOptions o = TestServer::Defaults();
  o.engine.kv_num_blocks = 24;  // 384 tokens: far fewer than the requests below need together
  o.engine.kv_block_size = 16;
  TestServer ts(o);
  constexpr int kN = 8;
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < kN; ++i) {
    reqs.push_back(TextReq(absl::StrCat("Preemption case ", i, " with a few words"), 90 + 5 * i,
                           i % 2 ? 0.9f : 0.0f, 500 + i));
  }
  std::vector<Outcome> alone(kN);
  for (int i = 0; i < kN; ++i) {
    alone[i] = ts.Generate(reqs[i]);
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
  }
  EXPECT_EQ(ts.Info().preemptions(), 0u);
  std::vector<Outcome> together(kN);
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i) threads.emplace_back([&, i] { together[i] = ts.Generate(reqs[i]); });
  for (auto& t : threads) t.join();
  EXPECT_GT(ts.Info().preemptions(), 0u);
  uint32_t preempted = 0;
  for (int i = 0; i < kN; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].ids, alone[i].ids) << i;
    preempted += together[i].last.timings().preemptions();
  }
  EXPECT_GT(preempted, 0u);
  EXPECT_TRUE(ts.WaitIdle());
}

// Expects `code` and a message naming `field`.
void ExpectError(TestServer& ts, const GenerateRequest& req, grpc::StatusCode code, const std::string& field) {
  Outcome out = ts.Generate(req);
  EXPECT_EQ(out.status.error_code(), code) << out.status.error_message();
  EXPECT_NE(out.status.error_message().find(field), std::string::npos)
      << "message '" << out.status.error_message() << "' does not name " << field;
  EXPECT_TRUE(out.ids.empty());
  // The unary variant reports the same.
  grpc::ClientContext ctx;
  GenerateResponse resp;
  EXPECT_EQ(ts.stub().Complete(&ctx, req, &resp).error_code(), code);
}

TEST(Server, InvalidRequestsNameTheField) {
  TestServer ts;
  using C = grpc::StatusCode;
  GenerateRequest none;
  ExpectError(ts, none, C::INVALID_ARGUMENT, "input");
  GenerateRequest r = TextReq("hi", 4);
  r.mutable_sampling()->set_temperature(-1);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "sampling.temperature");
  r = TextReq("hi", 4);
  r.mutable_sampling()->set_top_p(0);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "sampling.top_p");
  r = TextReq("hi", 4);
  r.mutable_sampling()->set_top_k(-3);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "sampling.top_k");
  r = TextReq("hi", 4);
  r.mutable_sampling()->set_min_p(2);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "sampling.min_p");
  r = TextReq("hi", 4);
  r.mutable_sampling()->set_repetition_penalty(0);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "sampling.repetition_penalty");
  r = TextReq("hi", 4);
  r.mutable_sampling()->set_presence_penalty(5);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "sampling.presence_penalty");
  r = TextReq("hi", 4);
  r.mutable_stopping()->set_max_tokens(0);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "stopping.max_tokens");
  r = TextReq("hi", 4);
  r.mutable_stopping()->set_min_tokens(10);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "stopping.min_tokens");
  r = TextReq("hi", 4);
  r.mutable_stopping()->add_stop("");
  ExpectError(ts, r, C::INVALID_ARGUMENT, "stopping.stop");
  r = TextReq("hi", 4);
  r.mutable_stopping()->add_stop_token_ids(1 << 20);
  ExpectError(ts, r, C::OUT_OF_RANGE, "stopping.stop_token_ids");
  r = TextReq("hi", 4);
  r.set_logprobs(1000);
  ExpectError(ts, r, C::OUT_OF_RANGE, "logprobs");
  r = TextReq("hi", 4);
  r.mutable_token_ids()->add_ids(5);
  r.mutable_token_ids()->add_ids(-1);
  ExpectError(ts, r, C::OUT_OF_RANGE, "token_ids");
  r = TextReq("hi", 4);
  r.mutable_token_ids();  // empty id list
  ExpectError(ts, r, C::INVALID_ARGUMENT, "token_ids");
  r = TextReq("", 4);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "text");
  // A field number this API does not define.
  r = TextReq("hi", 4);
  r.GetReflection()->MutableUnknownFields(&r)->AddVarint(999, 1);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "unknown field");
  r = TextReq("hi", 4);
  r.mutable_sampling()->GetReflection()->MutableUnknownFields(r.mutable_sampling())->AddVarint(77, 1);
  ExpectError(ts, r, C::INVALID_ARGUMENT, "sampling");

  // Prompt longer than the context, and prompt + max_tokens beyond it.
  grpc::ClientContext mctx;
  v1::ModelInfo mi;
  ASSERT_TRUE(ts.stub().GetModelInfo(&mctx, {}, &mi).ok());
  GenerateRequest longp = TextReq("x", 1);
  for (int64_t i = 0; i < mi.context_length() + 5; ++i) longp.mutable_token_ids()->add_ids(7);
  ExpectError(ts, longp, C::OUT_OF_RANGE, "prompt");
  GenerateRequest over = TextReq("hello there", static_cast<int>(mi.context_length()));
  ExpectError(ts, over, C::OUT_OF_RANGE, "stopping.max_tokens");

  // Nothing leaked and the server still serves.
  EXPECT_TRUE(ts.WaitIdle());
  Outcome ok = ts.Generate(TextReq("still alive?", 3));
  EXPECT_TRUE(ok.status.ok());
  EXPECT_EQ(ok.ids.size(), 3u);
}

// prompt_logprobs over gRPC on the demo model: in the first message, one entry per prompt token
// after the first, each that token's logprob given the tokens before it. Checked against a second
// path through the same server: a request whose prompt is the tokens before it, its first token
// forced by a +100 logit bias, reports the raw logprob of that token. Chunked prefill (16-token
// steps), a repeat whose prompt is in the prefix cache, and the unary RPC give the same entries.
TEST(Server, PromptLogprobsScoreEachPromptTokenGivenTheTokensBeforeIt) {
  ServerOptions o = TestServer::Defaults();
  o.engine.max_batch_tokens = 16;
  TestServer ts(o);
  grpc::ClientContext tctx;
  v1::TokenizeRequest treq;
  treq.set_text("Once upon a time there was a little girl who lived in a village near the forest.");
  v1::TokenizeResponse tok;
  ASSERT_TRUE(ts.stub().Tokenize(&tctx, treq, &tok).ok());
  const std::vector<int32_t> ids(tok.ids().begin(), tok.ids().end());
  ASSERT_GT(ids.size(), 17u) << "the prompt should span several 16-token steps";
  GenerateRequest req = TextReq("", 2);
  req.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  req.set_prompt_logprobs(3);
  const Outcome out = ts.Generate(req);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.prompt_logprob_messages, 1);
  EXPECT_EQ(out.ids.size(), 2u);
  ASSERT_EQ(out.prompt_logprobs.size(), ids.size() - 1);
  for (size_t t = 1; t < ids.size(); ++t) {
    const v1::Logprobs& lp = out.prompt_logprobs[t - 1];
    EXPECT_EQ(lp.token_id(), ids[t]);
    ASSERT_EQ(lp.top_size(), 3);
    EXPECT_LE(lp.logprob(), lp.top(0).logprob());
    // Forced through the other path.
    GenerateRequest one = TextReq("", 1);
    one.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.begin() + static_cast<int64_t>(t));
    one.set_logprobs(0);
    (*one.mutable_sampling()->mutable_logit_bias())[ids[t]] = 100.f;
    const Outcome forced = ts.Generate(one);
    ASSERT_TRUE(forced.status.ok()) << forced.status.error_message();
    ASSERT_EQ(forced.ids, std::vector<int32_t>{ids[t]});
    EXPECT_NEAR(forced.logprobs[0].logprob(), lp.logprob(), 1e-4) << "prompt token " << t;
  }
  // Again, now that its prompt is in the prefix cache (from the forced requests); and unary.
  const Outcome again = ts.Generate(req);
  ASSERT_EQ(again.prompt_logprobs.size(), out.prompt_logprobs.size());
  for (size_t i = 0; i < out.prompt_logprobs.size(); ++i) {
    EXPECT_EQ(again.prompt_logprobs[i].logprob(), out.prompt_logprobs[i].logprob()) << i;
  }
  grpc::ClientContext uctx;
  GenerateResponse unary;
  ASSERT_TRUE(ts.stub().Complete(&uctx, req, &unary).ok());
  ASSERT_EQ(static_cast<size_t>(unary.prompt_logprobs_size()), out.prompt_logprobs.size());
  EXPECT_EQ(unary.prompt_logprobs(3).logprob(), out.prompt_logprobs[3].logprob());
  // Above --max-logprobs (20) it is refused, naming the field.
  req.set_prompt_logprobs(21);
  const Outcome bad = ts.Generate(req);
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_NE(bad.status.error_message().find("prompt_logprobs"), std::string::npos) << bad.status.error_message();
}

// A second server on a gRPC port that one already listens on fails to start, naming the port,
// instead of sharing the port's connections with it (SO_REUSEPORT is off); the first keeps serving.
TEST(Server, AGrpcPortInUseIsAnErrorAtStart) {
  TestServer first(TestServer::Defaults(), false);
  ServerOptions o = TestServer::Defaults();
  o.port = first.server().port();
  Server second(o);
  const absl::Status s = second.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find(absl::StrCat("127.0.0.1:", o.port)), std::string::npos) << s;
  grpc::ClientContext ctx;
  v1::ServerInfo info;
  EXPECT_TRUE(first.stub().GetServerInfo(&ctx, {}, &info).ok());
}

TEST(Server, DuplicateLiveRequestIdIsRefused) {
  TestServer ts;
  GenerateRequest a = TextReq("first", 400);
  a.set_request_id("same-id");
  grpc::ClientContext ctx;
  auto reader = ts.stub().Generate(&ctx, a);
  GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  Outcome dup = ts.Generate(a);
  EXPECT_EQ(dup.status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  ctx.TryCancel();
  while (reader->Read(&msg)) {
  }
  reader->Finish();
  EXPECT_TRUE(ts.WaitIdle());
}

TEST(Server, OverloadIsRefusedWithRetryInfoWhileAdmittedRequestsComplete) {
  ServerOptions o = TestServer::Defaults();
  o.engine.max_num_seqs = 2;
  o.engine.max_queued_requests = 3;
  o.engine.retry_after = absl::Milliseconds(250);
  TestServer ts(o);
  constexpr int kN = 24;
  std::vector<Outcome> outs(kN);
  std::vector<std::string> retry_after(kN);
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
      outs[i] = ts.Generate(TextReq(absl::StrCat("load ", i), 60), absl::Seconds(60), &ctx);
      auto it = ctx.GetServerTrailingMetadata().find("retry-after-ms");
      if (it != ctx.GetServerTrailingMetadata().end()) retry_after[i] = std::string(it->second.data(), it->second.size());
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, exhausted = 0;
  for (const Outcome& out : outs) {
    if (out.status.ok()) {
      ok++;
      EXPECT_EQ(out.ids.size(), 60u);
    } else {
      ASSERT_EQ(out.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << out.status.error_message();
      exhausted++;
      google::rpc::Status details;
      ASSERT_TRUE(details.ParseFromString(out.status.error_details()));
      ASSERT_EQ(details.details_size(), 1);
      google::rpc::RetryInfo retry;
      ASSERT_TRUE(details.details(0).UnpackTo(&retry));
      EXPECT_EQ(retry.retry_delay().seconds() * 1000 + retry.retry_delay().nanos() / 1000000, 250);
      EXPECT_EQ(retry_after[&out - outs.data()], "250");
    }
  }
  EXPECT_GE(ok, 3);  // at least a full queue's worth was admitted and completed
  EXPECT_GT(exhausted, 0);
  EXPECT_TRUE(ts.WaitIdle());
  // GetServerInfo sees a request end as it ends; the gauges follow with the step's report, which
  // comes after the rest of that step's rows are sampled: wait for it (a loaded machine may lag).
  std::string page = ScrapeMetrics(ts);
  for (int i = 0; i < 400 && MetricValue(page, "sbserve_num_requests_running") != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
    page = ScrapeMetrics(ts);
  }
  EXPECT_EQ(MetricValue(page, "sbserve_request_rejected_total{reason=\"queue_full\"}"), exhausted);
  EXPECT_EQ(MetricValue(page, "sbserve_request_success_total{finished_reason=\"length\"}"), ok);
  EXPECT_EQ(MetricValue(page, "sbserve_generation_tokens_total"), 60.0 * ok);
  EXPECT_EQ(MetricValue(page, "sbserve_num_requests_running"), 0);
}

TEST(Server, QueuedPromptTokenLimitRefusesBeforeTokenizing) {
  ServerOptions o = TestServer::Defaults();
  o.engine.max_num_seqs = 1;
  o.engine.max_queued_tokens = 40;
  TestServer ts(o);
  // One long generation holds the only slot; queued prompts then count against the limit.
  grpc::ClientContext hold_ctx;
  auto hold = ts.stub().Generate(&hold_ctx, TextReq("hold the slot", 1900));
  GenerateResponse msg;
  ASSERT_TRUE(hold->Read(&msg));
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "word ";
  grpc::ClientContext qctx;
  auto queued = ts.stub().Generate(&qctx, TextReq(long_prompt, 2));
  // Wait until it is queued.
  v1::ServerInfo info;
  for (int i = 0; i < 2000; ++i) {
    info = ts.Info();
    if (info.queued_prompt_tokens() >= 40) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_GE(info.queued_prompt_tokens(), 40) << info.DebugString();
  Outcome refused = ts.Generate(TextReq("short", 2));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("tokens"), std::string::npos);
  hold_ctx.TryCancel();
  while (hold->Read(&msg)) {
  }
  hold->Finish();
  while (queued->Read(&msg)) {
  }
  EXPECT_TRUE(queued->Finish().ok());
  EXPECT_TRUE(ts.WaitIdle());
}

TEST(Server, DeadlineWhileQueuedAndWhileRunning) {
  ServerOptions o = TestServer::Defaults();
  o.engine.max_num_seqs = 1;
  TestServer ts(o);
  // Running: a long generation with a short deadline streams some tokens, then ends.
  Outcome running = ts.Generate(TextReq("a long story", 1900), absl::Milliseconds(400));
  EXPECT_EQ(running.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_GT(running.ids.size(), 0u);
  EXPECT_LT(running.ids.size(), 1900u);
  EXPECT_TRUE(ts.WaitIdle());

  // Queued: behind a long generation holding the only slot.
  grpc::ClientContext hold_ctx;
  auto hold = ts.stub().Generate(&hold_ctx, TextReq("hold", 1500));
  GenerateResponse msg;
  ASSERT_TRUE(hold->Read(&msg));
  Outcome queued = ts.Generate(TextReq("waiting", 5), absl::Milliseconds(200));
  EXPECT_EQ(queued.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(queued.ids.empty());
  hold_ctx.TryCancel();
  while (hold->Read(&msg)) {
  }
  EXPECT_EQ(hold->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(ts.WaitIdle());
  EXPECT_TRUE(ts.Generate(TextReq("after", 3)).status.ok());
  const std::string page = ScrapeMetrics(ts);
  EXPECT_EQ(MetricValue(page, "sbserve_request_deadline_exceeded_total{stage=\"running\"}"), 1);
  EXPECT_EQ(MetricValue(page, "sbserve_request_deadline_exceeded_total{stage=\"queued\"}"), 1);
  EXPECT_EQ(MetricValue(page, "sbserve_request_success_total{finished_reason=\"deadline\"}"), 2);
  EXPECT_EQ(MetricValue(page, "sbserve_request_success_total{finished_reason=\"cancelled\"}"), 1);
}

TEST(Server, ClientCancelMidStreamFreesKv) {
  TestServer ts;
  grpc::ClientContext ctx;
  auto reader = ts.stub().Generate(&ctx, TextReq("cancel me", 1800));
  GenerateResponse msg;
  int got = 0;
  while (got < 5 && reader->Read(&msg)) got += msg.token_ids_size();
  EXPECT_GT(ts.Info().kv_blocks_used(), 0);
  ctx.TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(ts.WaitIdle(absl::Seconds(2)));
  EXPECT_TRUE(ts.Generate(TextReq("next", 3)).status.ok());
}

TEST(Server, AbortRpcEndsTheStreamAndFreesKv) {
  TestServer ts;
  GenerateRequest req = TextReq("abort me", 1800);
  req.set_request_id("abort-me");
  grpc::ClientContext ctx;
  auto reader = ts.stub().Generate(&ctx, req);
  GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  EXPECT_EQ(msg.request_id(), "abort-me");
  {
    grpc::ClientContext actx;
    v1::AbortRequest areq;
    areq.add_request_ids("abort-me");
    areq.add_request_ids("no-such-request");
    v1::AbortResponse aresp;
    ASSERT_TRUE(ts.stub().Abort(&actx, areq, &aresp).ok());
    ASSERT_EQ(aresp.aborted_size(), 1);
    EXPECT_EQ(aresp.aborted(0), "abort-me");
  }
  Outcome rest;
  while (reader->Read(&msg)) TestServer::Absorb(msg, rest);
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(rest.last.finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_LT(rest.last.usage().completion_tokens(), 1800u);
  EXPECT_TRUE(ts.WaitIdle(absl::Seconds(2)));
  EXPECT_TRUE(ts.Generate(TextReq("next", 3)).status.ok());
}

TEST(Server, HealthLoadingServingDraining) {
  ServerOptions o = TestServer::Defaults();
  TestServer ts(o, /*load=*/false);
  EXPECT_EQ(ts.Health(""), kServing);
  EXPECT_EQ(ts.Health(kReadinessService), kNotServing);
  Outcome early = ts.Generate(TextReq("too early", 3));
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(ts.Info().ready());

  ASSERT_TRUE(ts.server().LoadModel().ok());
  EXPECT_EQ(ts.Health(kReadinessService), kServing);
  EXPECT_TRUE(ts.Info().ready());
  EXPECT_TRUE(ts.Generate(TextReq("now", 3)).status.ok());

  // The metrics endpoint mirrors readiness and serves the metric families.
  httplib::Client http("127.0.0.1", ts.server().metrics_port());
  auto ready = http.Get("/ready");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->body.find("sbserve_"), std::string::npos);
  EXPECT_NE(metrics->body.find("time_to_first_token"), std::string::npos);

  ts.server().BeginDrain();
  EXPECT_EQ(ts.Health(kReadinessService), kNotServing);
  EXPECT_EQ(ts.Health(""), kServing);
  EXPECT_TRUE(ts.Info().draining());
  EXPECT_EQ(ts.Generate(TextReq("too late", 3)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  auto not_ready = http.Get("/ready");
  ASSERT_TRUE(not_ready);
  EXPECT_EQ(not_ready->status, 503);
  EXPECT_TRUE(ts.server().WaitDrained(absl::Seconds(1)));
}

// Server reflection answers list_services with our service and the health service. The request
// is a hand-encoded grpc.reflection.v1alpha.ServerReflectionRequest{list_services: "*"}.
TEST(Server, ReflectionListsTheServices) {
  TestServer ts;
  grpc::GenericStub generic(ts.channel());
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  auto call = generic.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  auto step = [&](intptr_t want) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  const std::string request("\x3a\x01*", 3);  // field 7 (list_services), length 1, "*"
  grpc::Slice slice(request);
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(4));
  ASSERT_TRUE(step(4));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(in.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(bytes.find("sbserve.v1.SbServe"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
  grpc::Status st;
  call->Finish(&st, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(st.ok()) << st.error_message();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST(Server, StopStringAcrossTokenBoundaries) {
  TestServer ts;
  GenerateRequest base = TextReq("The quick brown fox", 40);
  base.set_skip_special_tokens(false);  // a random-weight model emits many special tokens
  Outcome full = ts.Generate(base);
  ASSERT_TRUE(full.status.ok());
  // Find a token boundary in the middle of the text and take two characters either side.
  grpc::ClientContext tctx;
  std::string prefix;
  size_t boundary = 0;
  for (size_t k = 0; k + 1 < full.ids.size(); ++k) {
    // Text of the first k+1 tokens: decode via Tokenize's pieces is not exact for byte tokens,
    // so use a Complete call with max_tokens = k+1 instead.
    GenerateRequest part = base;
    part.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(k + 1));
    grpc::ClientContext ctx;
    GenerateResponse resp;
    ASSERT_TRUE(ts.stub().Complete(&ctx, part, &resp).ok());
    if (resp.text().size() >= 4 && full.text.size() >= resp.text().size() + 3 &&
        resp.text().size() >= full.text.size() / 3) {
      prefix = resp.text();
      boundary = prefix.size();
      break;
    }
  }
  ASSERT_GT(boundary, 0u) << "no usable boundary in '" << full.text << "'";
  const std::string stop = full.text.substr(boundary - 2, 5);
  const size_t first = full.text.find(stop);
  GenerateRequest with_stop = base;
  with_stop.mutable_stopping()->add_stop(stop);
  Outcome out = ts.Generate(with_stop);
  ASSERT_TRUE(out.status.ok());
  EXPECT_EQ(out.last.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(out.last.stop_reason(), stop);
  EXPECT_EQ(out.text, full.text.substr(0, first)) << "stop '" << stop << "' in '" << full.text << "'";

  with_stop.mutable_stopping()->set_include_stop_str_in_output(true);
  Outcome incl = ts.Generate(with_stop);
  EXPECT_EQ(incl.text, full.text.substr(0, first) + stop);

  // A stop string whose prefix ends the output but which never completes: the held-back text is
  // released when generation ends by length.
  const std::string tail = full.text.substr(full.text.size() - 2);
  GenerateRequest never = base;
  never.mutable_stopping()->add_stop(tail + "\x01never");
  Outcome whole = ts.Generate(never);
  ASSERT_TRUE(whole.status.ok());
  EXPECT_EQ(whole.last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(whole.text, full.text);
  EXPECT_TRUE(ts.WaitIdle());
}

TEST(Server, MinTokensStopTokenIdsAndIgnoreEos) {
  TestServer ts;
  GenerateRequest base = TextReq("Counting: one two three", 12);
  Outcome full = ts.Generate(base);
  ASSERT_TRUE(full.status.ok());
  ASSERT_EQ(full.ids.size(), 12u);
  const int32_t first = full.ids[0];

  GenerateRequest stop_first = base;
  stop_first.mutable_stopping()->add_stop_token_ids(first);
  Outcome stopped = ts.Generate(stop_first);
  ASSERT_TRUE(stopped.status.ok());
  EXPECT_EQ(stopped.ids, std::vector<int32_t>{first});
  EXPECT_EQ(stopped.last.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.last.stop_reason(), std::to_string(first));

  // With min_tokens the stop id cannot be drawn before 5 tokens exist.
  GenerateRequest min5 = stop_first;
  min5.mutable_stopping()->set_min_tokens(5);
  Outcome m = ts.Generate(min5);
  ASSERT_TRUE(m.status.ok());
  ASSERT_GE(m.ids.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_NE(m.ids[i], first) << i;

  // ignore_eos: generation runs to max_tokens regardless of the end-of-sequence token.
  GenerateRequest ign = TextReq("x", 50, 1.5f, 7);
  ign.mutable_stopping()->set_ignore_eos(true);
  Outcome all = ts.Generate(ign);
  ASSERT_TRUE(all.status.ok());
  EXPECT_EQ(all.ids.size(), 50u);
  EXPECT_EQ(all.last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(ts.WaitIdle());
}

TEST(Server, LogprobsAreSane) {
  TestServer ts;
  GenerateRequest greedy = TextReq("Logprobs please", 8);
  greedy.set_logprobs(5);
  Outcome g = ts.Generate(greedy);
  ASSERT_TRUE(g.status.ok());
  ASSERT_EQ(g.logprobs.size(), g.ids.size());
  for (size_t i = 0; i < g.ids.size(); ++i) {
    const v1::Logprobs& lp = g.logprobs[i];
    EXPECT_EQ(lp.token_id(), g.ids[i]);
    ASSERT_EQ(lp.top_size(), 5);
    double mass = 0;
    for (int k = 0; k < lp.top_size(); ++k) {
      EXPECT_LE(lp.top(k).logprob(), 0.0f);
      EXPECT_TRUE(std::isfinite(lp.top(k).logprob()));
      if (k > 0) EXPECT_LE(lp.top(k).logprob(), lp.top(k - 1).logprob());
      mass += std::exp(lp.top(k).logprob());
    }
    EXPECT_LE(mass, 1.0 + 1e-4);
    EXPECT_EQ(lp.top(0).id(), lp.token_id()) << "greedy takes the most likely token";
    EXPECT_FLOAT_EQ(lp.top(0).logprob(), lp.logprob());
  }
  // Sampled: the sampled token's logprob is a valid log-probability and, when it appears among
  // the top entries, equals that entry.
  GenerateRequest sampled = TextReq("Logprobs please", 16, 1.0f, 3);
  sampled.set_logprobs(20);
  Outcome s = ts.Generate(sampled);
  ASSERT_TRUE(s.status.ok());
  ASSERT_EQ(s.logprobs.size(), 16u);
  for (const v1::Logprobs& lp : s.logprobs) {
    EXPECT_LE(lp.logprob(), 0.0f);
    double mass = 0;
    for (const auto& t : lp.top()) {
      mass += std::exp(t.logprob());
      if (t.id() == lp.token_id()) EXPECT_FLOAT_EQ(t.logprob(), lp.logprob());
    }
    EXPECT_LE(mass, 1.0 + 1e-4);
    // Distinct ids in the top list, and a sampled token outside it is no more likely than the
    // least likely entry in it (the top 20 are the 20 most likely of the same distribution).
    ASSERT_EQ(lp.top_size(), 20);
    std::set<int32_t> top_ids;
    for (const auto& t : lp.top()) top_ids.insert(t.id());
    EXPECT_EQ(top_ids.size(), 20u);
    if (!top_ids.count(lp.token_id())) EXPECT_LE(lp.logprob(), lp.top(19).logprob());
  }
  // No logprobs unless asked.
  Outcome none = ts.Generate(TextReq("plain", 4));
  EXPECT_TRUE(none.logprobs.empty());
}

// The model's eos ends generation with finish_reason EOS: the eos id is the last of token_ids and
// its text is the last of the output, like any token's (README, GenerateResponse: text and ids
// agree); with ignore_eos generation runs on
// past it. The demo model rarely draws its eos (id 0), so a copy of it names a second eos id in
// generation_config.json: a token that a greedy run is known to produce.
TEST(Server, EosEndsGenerationWithFinishReasonEosUnlessIgnored) {
  namespace fs = std::filesystem;
  constexpr int kMax = 24;
  const GenerateRequest base = TextReq("The end of the story is", kMax);  // greedy, ignore_eos
  Outcome full;
  std::string demo_dir;
  std::vector<int32_t> model_eos;
  std::vector<std::string> prefix_text;  // text of the first k tokens, k = 0..kMax
  {
    TestServer ts;
    full = ts.Generate(base);
    ASSERT_TRUE(full.status.ok()) << full.status.error_message();
    ASSERT_EQ(full.ids.size(), static_cast<size_t>(kMax));
    grpc::ClientContext mctx;
    v1::ModelInfo mi;
    ASSERT_TRUE(ts.stub().GetModelInfo(&mctx, {}, &mi).ok());
    demo_dir = mi.model();
    model_eos.assign(mi.eos_token_ids().begin(), mi.eos_token_ids().end());
    ASSERT_FALSE(model_eos.empty());
    prefix_text.push_back("");
    for (int k = 1; k <= kMax; ++k) {
      GenerateRequest part = base;
      part.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(k));
      Outcome o = ts.Generate(part);
      ASSERT_TRUE(o.status.ok());
      prefix_text.push_back(o.text);
    }
    EXPECT_EQ(prefix_text[kMax], full.text);
  }
  // The new eos: a token at position k >= 3 that appears nowhere before it, after no eos of the
  // model, and that adds text, so that whether its text is output is observable.
  int k = -1;
  for (int i = 3; i < kMax - 3 && k < 0; ++i) {
    const auto before = full.ids.begin() + i;
    if (std::find(full.ids.begin(), before, full.ids[i]) != before) continue;
    if (std::find(model_eos.begin(), model_eos.end(), full.ids[i]) != model_eos.end()) continue;
    if (prefix_text[i + 1].size() <= prefix_text[i].size()) continue;
    k = i;
  }
  ASSERT_GE(k, 0) << "no usable token in the greedy continuation";
  for (int i = 0; i < k; ++i) {
    ASSERT_EQ(std::find(model_eos.begin(), model_eos.end(), full.ids[i]), model_eos.end()) << i;
  }
  const int32_t eos = full.ids[k];

  const fs::path dir = fs::temp_directory_path() / absl::StrCat("sbserve-eos-test-", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  struct RemoveAtExit {
    fs::path path;
    ~RemoveAtExit() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } cleanup{dir};
  for (const auto& entry : fs::directory_iterator(demo_dir)) {
    if (entry.path().filename() != "generation_config.json") fs::copy(entry.path(), dir / entry.path().filename());
  }
  {
    std::ofstream gen(dir / "generation_config.json");
    gen << "{\"bos_token_id\": 0, \"eos_token_id\": [0, " << eos << "], \"pad_token_id\": 0}\n";
  }
  ServerOptions o = TestServer::Defaults();
  o.model = dir.string();
  {
    TestServer ts(o);
    grpc::ClientContext mctx;
    v1::ModelInfo mi;
    ASSERT_TRUE(ts.stub().GetModelInfo(&mctx, {}, &mi).ok());
    const std::vector<int32_t> eos_ids(mi.eos_token_ids().begin(), mi.eos_token_ids().end());
    ASSERT_NE(std::find(eos_ids.begin(), eos_ids.end(), eos), eos_ids.end());

    GenerateRequest stop_at_eos = base;
    stop_at_eos.mutable_stopping()->set_ignore_eos(false);
    const std::vector<int32_t> want(full.ids.begin(), full.ids.begin() + k + 1);
    Outcome out = ts.Generate(stop_at_eos);
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    EXPECT_EQ(out.ids, want) << "eos id " << eos << " at position " << k;
    EXPECT_EQ(out.last.finish_reason(), v1::FINISH_REASON_EOS);
    EXPECT_EQ(out.last.stop_reason(), "");
    EXPECT_EQ(out.last.usage().completion_tokens(), static_cast<uint32_t>(k + 1));
    EXPECT_EQ(out.text, prefix_text[k]) << "the eos token's text is left out, as a stop string's";

    grpc::ClientContext cctx;
    GenerateResponse unary;
    ASSERT_TRUE(ts.stub().Complete(&cctx, stop_at_eos, &unary).ok());
    EXPECT_EQ(std::vector<int32_t>(unary.token_ids().begin(), unary.token_ids().end()), want);
    EXPECT_EQ(unary.finish_reason(), v1::FINISH_REASON_EOS);
    EXPECT_EQ(unary.text(), prefix_text[k]);

    // include_stop_str_in_output keeps it.
    GenerateRequest keep = stop_at_eos;
    keep.mutable_stopping()->set_include_stop_str_in_output(true);
    Outcome kept = ts.Generate(keep);
    ASSERT_TRUE(kept.status.ok());
    EXPECT_EQ(kept.ids, want);
    EXPECT_EQ(kept.text, prefix_text[k + 1]);

    // ignore_eos: the same tokens, through the eos and on to max_tokens.
    Outcome past = ts.Generate(base);
    ASSERT_TRUE(past.status.ok());
    EXPECT_EQ(past.ids, full.ids);
    EXPECT_EQ(past.text, full.text);
    EXPECT_EQ(past.last.finish_reason(), v1::FINISH_REASON_LENGTH);

    // min_tokens beyond the eos position: eos cannot be drawn, so the output differs there.
    GenerateRequest late = stop_at_eos;
    late.mutable_stopping()->set_min_tokens(static_cast<uint32_t>(k + 2));
    Outcome masked = ts.Generate(late);
    ASSERT_TRUE(masked.status.ok());
    ASSERT_GT(masked.ids.size(), static_cast<size_t>(k + 1));
    EXPECT_NE(masked.ids[k], eos);
    for (int i = 0; i < k + 2; ++i) EXPECT_NE(masked.ids[i], eos) << i;
    EXPECT_TRUE(ts.WaitIdle());
  }
}

// Text and ids agree (README, GenerateResponse): over many seeded requests on both RPCs, with eos,
// stop_token_ids and special tokens kept or skipped, the concatenated text of each finished request
// is the detokenization of its token_ids, less the eos or stop id that ended it (kept with
// include_stop_str_in_output); with a stop string, it is that detokenization cut just before the
// stop string (or just after it with include_stop_str_in_output).
TEST(Server, TextIsTheDetokenizationOfTheIds) {
  TestServer ts;
  grpc::ClientContext mctx;
  v1::ModelInfo mi;
  ASSERT_TRUE(ts.stub().GetModelInfo(&mctx, {}, &mi).ok());
  auto tok = Tokenizer::Load(mi.model());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto newline = (*tok)->Encode("\n", false);
  auto paren = (*tok)->Encode("(", false);
  ASSERT_TRUE(newline.ok() && newline->size() == 1 && paren.ok() && paren->size() == 1);
  std::map<std::string, int> seen;  // finish kinds, to show every path ran
  const char* prompts[] = {"Once upon a time", "The server", "int main(", "## Flags\n", "Hello"};
  for (int i = 0; i < 80; ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    GenerateRequest r = TextReq(prompts[i % 5], 12 + i % 20, i % 4 == 0 ? 0.f : 1.0f, 1000 + i);
    r.mutable_stopping()->set_ignore_eos(false);
    const bool skip_special = i % 3 != 0;
    r.set_skip_special_tokens(skip_special);
    const int kind = i % 4;  // 0: plain, 1: stop ids, 2: stop string, 3: stop string kept
    if (kind == 1) {
      r.mutable_stopping()->add_stop_token_ids((*newline)[0]);
      r.mutable_stopping()->add_stop_token_ids((*paren)[0]);
    }
    const std::string stop = i % 8 < 4 ? "e" : ";";
    if (kind >= 2) r.mutable_stopping()->add_stop(stop);
    const bool keep_stop = kind == 3 || (kind == 1 && i % 8 >= 4);
    if (keep_stop) r.mutable_stopping()->set_include_stop_str_in_output(true);
    Outcome out;
    if (i % 2 == 0) {
      out = ts.Generate(r);
    } else {
      grpc::ClientContext ctx;
      GenerateResponse unary;
      out.status = ts.stub().Complete(&ctx, r, &unary);
      TestServer::Absorb(unary, out);
    }
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    auto decoded = (*tok)->Decode(out.ids, skip_special);
    ASSERT_TRUE(decoded.ok());
    const v1::FinishReason why = out.last.finish_reason();
    const bool by_string = why == v1::FINISH_REASON_STOP && kind >= 2;
    seen[absl::StrCat(v1::FinishReason_Name(why), by_string ? " (string)" : "", skip_special ? "" : " keep-special",
                      keep_stop ? " keep-stop" : "")]++;
    if (!by_string) {
      const bool by_id = why == v1::FINISH_REASON_EOS || why == v1::FINISH_REASON_STOP;
      ASSERT_FALSE(out.ids.empty());
      auto without_last = (*tok)->Decode(std::span<const int32_t>(out.ids.data(), out.ids.size() - 1), skip_special);
      ASSERT_TRUE(without_last.ok());
      EXPECT_EQ(out.text, by_id && !keep_stop ? *without_last : *decoded)
          << "ids and text disagree, finish " << v1::FinishReason_Name(why);
      continue;
    }
    EXPECT_EQ(out.last.stop_reason(), stop);
    if (kind == 3) {
      ASSERT_GE(out.text.size(), stop.size());
      EXPECT_EQ(out.text.substr(out.text.size() - stop.size()), stop);
      EXPECT_EQ(decoded->substr(0, out.text.size()), out.text);
    } else {
      EXPECT_EQ(decoded->substr(0, out.text.size() + stop.size()), out.text + stop);
    }
  }
  for (const auto& [what, n] : seen) std::printf("  %-40s %d\n", what.c_str(), n);
  EXPECT_GT(seen["FINISH_REASON_STOP"] + seen["FINISH_REASON_STOP keep-special"], 0) << "no stop-token finish";
  EXPECT_GT(seen["FINISH_REASON_STOP keep-stop"] + seen["FINISH_REASON_STOP keep-special keep-stop"], 0)
      << "no stop-token finish that keeps the token's text";
  EXPECT_GT(seen["FINISH_REASON_STOP (string)"] + seen["FINISH_REASON_STOP (string) keep-special"], 0);
  EXPECT_TRUE(ts.WaitIdle());
}

// Sends `bytes` as the request of `method` with a generic stub, as a unary call (a server-
// streaming method answers a refused request with no message and its status).
grpc::Status RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& bytes, grpc::ByteBuffer* response) {
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  auto call = generic.PrepareUnaryCall(&ctx, method, request, &cq);
  call->StartCall();
  grpc::Status st;
  call->Finish(response, &st, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  EXPECT_TRUE(cq.Next(&tag, &ok));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return st;
}

// Undecodable request bytes are INVALID_ARGUMENT saying what is wrong (gRPC's own decoding would
// answer UNIMPLEMENTED with an empty message), on every RPC, and counted as reason "malformed".
TEST(Server, UndecodableMessagesAreInvalidArgumentAndCounted) {
  TestServer ts;
  struct Case {
    std::string method;
    std::string bytes;
    std::string expect;  // in the message
  };
  std::mt19937 rng(11);
  std::string random(64, '\0');
  for (char& c : random) c = static_cast<char>(rng() & 0xff);
  const std::string gen = "/sbserve.v1.SbServe/Generate";
  const std::string comp = "/sbserve.v1.SbServe/Complete";
  const std::string tok = "/sbserve.v1.SbServe/Tokenize";
  const std::vector<Case> cases = {
      {gen, std::string("\x12\x01\xff", 3), "text: not valid UTF-8"},
      {comp, std::string("\x12\x01\xff", 3), "text: not valid UTF-8"},
      {tok, std::string("\x0a\x01\xff", 3), "text: not valid UTF-8"},
      // stopping { stop: "\xc0\x80" } (an overlong NUL) after a valid stop string
      {gen, std::string("\x12\x01x\x2a\x07\x1a\x01" "a\x1a\x02\xc0\x80", 12), "stopping.stop[1]: not valid UTF-8"},
      {gen, std::string("\x12\x05" "ab", 4), "runs past the end"},
      {comp, std::string("\x12\x05" "ab", 4), "runs past the end"},
      {tok, std::string("\x0a\x05" "ab", 4), "runs past the end"},
      {gen, std::string("\x12\x02hi\x38", 5), "priority: truncated varint"},
      {gen, std::string("\x10\x01", 2), "text: wire type 0"},
      {comp, std::string("\x10\x01", 2), "text: wire type 0"},
      {tok, std::string("\x08\x01", 2), "text: wire type 0"},
      {gen, std::string("\x00\x01", 2), "field number 0"},
      {comp, std::string("\x00\x01", 2), "field number 0"},
      {tok, std::string("\x00\x01", 2), "field number 0"},
      {tok, std::string("\x0b\x0c", 2), "wire type 3"},
      {gen, random, "malformed request"},
      {comp, random, "malformed request"},
      {tok, random, "malformed request"},
      {"/sbserve.v1.SbServe/Abort", std::string("\x0a\x01\xfe", 3), "request_ids[0]: not valid UTF-8"},
      {"/sbserve.v1.SbServe/GetServerInfo", std::string("\x0a\x03", 2), "runs past the end"},
      {"/sbserve.v1.SbServe/GetModelInfo", random, "malformed request"},
  };
  for (const Case& c : cases) {
    grpc::ByteBuffer resp;
    const grpc::Status st = RawUnary(ts.channel(), c.method, c.bytes, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.method << " " << c.expect << ": "
                                                                    << st.error_message();
    EXPECT_NE(st.error_message().find(c.expect), std::string::npos) << c.method << ": " << st.error_message();
  }
  const std::string page = ScrapeMetrics(ts);
  EXPECT_EQ(MetricValue(page, "sbserve_request_rejected_total{reason=\"malformed\"}"),
            static_cast<double>(cases.size()));

  // The server still answers, and a well-formed request through the same raw path works.
  v1::TokenizeRequest treq;
  treq.set_text("hello");
  grpc::ByteBuffer resp;
  const grpc::Status st = RawUnary(ts.channel(), tok, treq.SerializeAsString(), &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(resp.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  v1::TokenizeResponse tresp;
  ASSERT_TRUE(tresp.ParseFromString(bytes));
  EXPECT_GT(tresp.ids_size(), 0);
  EXPECT_TRUE(ts.Generate(TextReq("hi", 1)).status.ok());
}

// Unknown fields are refused on every RPC (the README's rule), GetModelInfo and GetServerInfo
// included.
TEST(Server, UnknownFieldsOnInfoRpcsAreInvalidArgument) {
  TestServer ts;
  for (const std::string m : {"/sbserve.v1.SbServe/GetModelInfo", "/sbserve.v1.SbServe/GetServerInfo"}) {
    grpc::ByteBuffer resp;
    const grpc::Status st = RawUnary(ts.channel(), m, std::string("\x08\x01", 2), &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << m << ": " << st.error_message();
  }
}

// True once /metrics shows nothing running or waiting and no KV block used (polled: the gauges
// are set on the engine thread right after the state changes).
bool GaugesAtZero(TestServer& ts, std::string* page) {
  const absl::Time end = absl::Now() + absl::Seconds(3);
  while (absl::Now() < end) {
    *page = ScrapeMetrics(ts);
    if (MetricValue(*page, "sbserve_num_requests_running") == 0 &&
        MetricValue(*page, "sbserve_num_requests_waiting") == 0 &&
        MetricValue(*page, "sbserve_kv_cache_used_blocks") == 0 &&
        MetricValue(*page, "sbserve_kv_cache_usage_ratio") == 0) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

// When the last request ends outside a forward step (client cancel, Abort RPC, deadline), the
// gauges return to zero without any further request (the KV-thrashing alert reads them).
TEST(Server, GaugesReturnToZeroAfterTheLastRequestEndsByCancelAbortOrDeadline) {
  TestServer ts;
  std::string page;
  for (const std::string how : {"cancel", "abort", "deadline"}) {
    SCOPED_TRACE(how);
    GenerateRequest req = TextReq("the gauges must follow " + how, 1900);
    req.set_request_id("gauge-" + how);
    grpc::ClientContext ctx;
    if (how == "deadline") ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(400)));
    auto reader = ts.stub().Generate(&ctx, req);
    GenerateResponse msg;
    ASSERT_TRUE(reader->Read(&msg));
    // Running, with KV in use, as the gauges show it once the step that streamed the first token
    // has reported (the deadline may already have passed on a loaded machine, so that case is not
    // checked here).
    if (how != "deadline") {
      bool seen = false;
      for (absl::Time end = absl::Now() + absl::Seconds(5); absl::Now() < end && !seen;) {
        page = ScrapeMetrics(ts);
        seen = MetricValue(page, "sbserve_num_requests_running") == 1 &&
               MetricValue(page, "sbserve_kv_cache_used_blocks") > 0;
      }
      EXPECT_TRUE(seen) << page;
    }
    if (how == "cancel") ctx.TryCancel();
    if (how == "abort") {
      grpc::ClientContext actx;
      v1::AbortRequest areq;
      areq.add_request_ids(req.request_id());
      v1::AbortResponse aresp;
      ASSERT_TRUE(ts.stub().Abort(&actx, areq, &aresp).ok());
    }
    while (reader->Read(&msg)) {
    }
    const grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), how == "deadline" ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::CANCELLED);
    ASSERT_TRUE(ts.WaitIdle(absl::Seconds(5)));
    EXPECT_TRUE(GaugesAtZero(ts, &page)) << page;
  }
}

// API keys: UNAUTHENTICATED without a known Bearer key on every sbserve.v1 RPC, a key given by its
// SHA-256 works, a per-key concurrency limit answers RESOURCE_EXHAUSTED naming the key, and
// GET /metrics needs a key while /health stays open.
TEST(Server, ApiKeysAuthenticateAndLimitPerKey) {
  const std::string path = (std::filesystem::temp_directory_path() / absl::StrCat("sbserve-keys-", getpid())).string();
  // sha256("sk-beta")
  std::ofstream(path) << "# test keys\nsk-alpha alpha 1\n"
                         "sha256:c29d79ad08b23ba5095b823d0b2e777320983be14c1150de96d07a86da5cd78c beta\n";
  ServerOptions o = TestServer::Defaults();
  o.api_keys_file = path;
  TestServer ts(o);
  std::filesystem::remove(path);
  auto call_info = [&](const std::string& auth) {
    grpc::ClientContext ctx;
    if (!auth.empty()) ctx.AddMetadata("authorization", auth);
    v1::ServerInfo info;
    return ts.stub().GetServerInfo(&ctx, {}, &info).error_code();
  };
  EXPECT_EQ(call_info(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(call_info("Bearer sk-wrong"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(call_info("Basic sk-alpha"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(call_info("Bearer sk-alpha"), grpc::StatusCode::OK);
  {
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    req.set_text("hi");
    v1::TokenizeResponse resp;
    EXPECT_EQ(ts.stub().Tokenize(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    GenerateResponse resp;
    EXPECT_EQ(ts.stub().Complete(&ctx, TextReq("hi", 2), &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(ts.Generate(TextReq("hi", 2), absl::Seconds(30), &ctx).status.error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  // The sha256: entry.
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer sk-beta");
    GenerateResponse resp;
    EXPECT_TRUE(ts.stub().Complete(&ctx, TextReq("hi", 2), &resp).ok());
  }
  // alpha may have one call in flight.
  grpc::ClientContext hold_ctx;
  hold_ctx.AddMetadata("authorization", "Bearer sk-alpha");
  auto hold = ts.stub().Generate(&hold_ctx, TextReq("hold the only slot of alpha", 1800));
  GenerateResponse msg;
  ASSERT_TRUE(hold->Read(&msg));
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer sk-alpha");
    GenerateResponse resp;
    const grpc::Status st = ts.stub().Complete(&ctx, TextReq("hi", 2), &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(st.error_message().find("'alpha'"), std::string::npos) << st.error_message();
    EXPECT_EQ(st.error_message().find("sk-alpha"), std::string::npos);
  }
  {
    grpc::ClientContext ctx;  // another key is not limited by alpha's
    ctx.AddMetadata("authorization", "Bearer sk-beta");
    GenerateResponse resp;
    EXPECT_TRUE(ts.stub().Complete(&ctx, TextReq("hi", 2), &resp).ok());
  }
  hold_ctx.TryCancel();
  while (hold->Read(&msg)) {
  }
  EXPECT_EQ(hold->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // Released with the server's final event (a client cancel ends the call locally at once).
  grpc::Status again;
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer sk-alpha");
    GenerateResponse resp;
    again = ts.stub().Complete(&ctx, TextReq("hi", 2), &resp);
    if (again.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(again.ok()) << again.error_message();
  httplib::Client http("127.0.0.1", ts.server().metrics_port());
  auto r = http.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = http.Get("/metrics", {{"Authorization", "Bearer sk-beta"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = http.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

// --probe-port: an open operations listener beside a keyed metrics port. Probes and /metrics answer
// there over plain HTTP without a key, while the metrics port still asks for one.
TEST(Server, ProbePortIsOpenBesideAKeyedMetricsPort) {
  const std::string path = (std::filesystem::temp_directory_path() / absl::StrCat("sbserve-pkeys-", getpid())).string();
  std::ofstream(path) << "sk-gamma gamma\n";
  ServerOptions o = TestServer::Defaults();
  o.api_keys_file = path;
  o.probe_port = 0;
  TestServer ts(o);
  std::filesystem::remove(path);
  ASSERT_GT(ts.server().probe_port(), 0);
  ASSERT_NE(ts.server().probe_port(), ts.server().metrics_port());
  httplib::Client keyed("127.0.0.1", ts.server().metrics_port());
  auto r = keyed.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  httplib::Client open("127.0.0.1", ts.server().probe_port());
  for (const char* p : {"/health", "/ready"}) {
    r = open.Get(p);
    ASSERT_TRUE(r) << p;
    EXPECT_EQ(r->status, 200) << p;
  }
  r = open.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("sbserve_num_requests_running"), std::string::npos);
  // Readiness is the same on both: draining turns the open port's /ready to 503 too.
  ts.server().BeginDrain();
  r = open.Get("/ready");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
}

}  // namespace
}  // namespace sbserve
