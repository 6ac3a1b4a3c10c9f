// What the serving metrics mean, checked where it is decided and on the real server on loopback
// (CPU backend, the generated demo model, real gRPC clients, /metrics scraped over HTTP):
//   - sbserve_prompt_tokens_total counts prompt tokens that ran through prefill, nothing else;
//   - a cancel is `cancelled` or `deadline` by when it arrived relative to the deadline;
//   - every refusal cause has its own `reason` label;
//   - the preemption, abort and latency series agree with what the clients saw.
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/engine.h"
#include "engine/scheduler.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "sbserve/v1/sbserve.grpc.pb.h"
#include "server/metrics/registry.h"
#include "server/metrics/serving_metrics.h"
#include "server/metrics_observer.h"
#include "server/server.h"
#include "tests/server/fake_backend.h"
#include "tests/server/live_server.h"

namespace sbserve {
namespace {

using v1::GenerateRequest;
using v1::GenerateResponse;

// ------------------------------------------------------------------------------------------
// The real server.

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  GenerateResponse last;  // the message carrying finish_reason, usage and timings
  absl::Time sent;
  absl::Time first;  // first message with tokens received
  absl::Time done;   // Finish returned
};

class LiveServer {
 public:
  explicit LiveServer(ServerOptions o = Defaults(), bool load = true) : server_(std::move(o)) {
    absl::Status s = server_.Start();
    EXPECT_TRUE(s.ok()) << s;
    stub_ = v1::SbServe::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_.port()), grpc::InsecureChannelCredentials()));
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

  Outcome Generate(const GenerateRequest& req, absl::Duration timeout = absl::Seconds(60)) {
    grpc::ClientContext ctx;
    Outcome out;
    out.sent = absl::Now();
    ctx.set_deadline(absl::ToChronoTime(out.sent + timeout));
    auto reader = stub_->Generate(&ctx, req);
    GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.token_ids_size() > 0 && out.ids.empty()) out.first = absl::Now();
      out.ids.insert(out.ids.end(), msg.token_ids().begin(), msg.token_ids().end());
      if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) out.last = msg;
    }
    out.status = reader->Finish();
    out.done = absl::Now();
    return out;
  }

  std::vector<std::string> Abort(const std::vector<std::string>& ids) {
    grpc::ClientContext ctx;
    v1::AbortRequest req;
    for (const auto& id : ids) req.add_request_ids(id);
    v1::AbortResponse resp;
    EXPECT_TRUE(stub_->Abort(&ctx, req, &resp).ok());
    return {resp.aborted().begin(), resp.aborted().end()};
  }

  v1::ServerInfo Info() {
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    EXPECT_TRUE(stub_->GetServerInfo(&ctx, {}, &info).ok());
    return info;
  }

  bool WaitIdle(absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      v1::ServerInfo i = Info();
      if (i.running() == 0 && i.waiting() == 0 && i.kv_blocks_used() == 0) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  // Waits until `n` requests wait in the queue.
  bool WaitWaiting(int n, absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      if (Info().waiting() >= n) return true;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return false;
  }

  // Waits until no request waits in the queue (the server has let go of the ones that ended).
  bool WaitNoneWaiting(absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      if (Info().waiting() == 0) return true;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return false;
  }

  std::string Scrape() {
    httplib::Client http("127.0.0.1", server_.metrics_port());
    auto res = http.Get("/metrics");
    EXPECT_TRUE(res && res->status == 200);
    return res && res->status == 200 ? res->body : "";
  }

 private:
  Server server_;
  std::unique_ptr<v1::SbServe::Stub> stub_;
};

GenerateRequest TextReq(const std::string& text, int max_tokens, const std::string& id = "") {
  GenerateRequest r;
  r.set_text(text);
  if (!id.empty()) r.set_request_id(id);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(max_tokens));
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

// The value of sample `series` ("name{labels}") on a text-format page; NaN when absent, so that
// any comparison with it fails.
double Value(const std::string& page, const std::string& series) {
  const std::string key = series + " ";
  for (size_t at = page.find(key); at != std::string::npos; at = page.find(key, at + 1)) {
    if (at == 0 || page[at - 1] == '\n') return std::stod(page.substr(at + key.size()));
  }
  ADD_FAILURE() << "no series " << series;
  return std::nan("");
}

std::string Rejected(const std::string& reason) {
  return absl::StrCat("sbserve_request_rejected_total{reason=\"", reason, "\"}");
}
std::string Finished(const std::string& reason) {
  return absl::StrCat("sbserve_request_success_total{finished_reason=\"", reason, "\"}");
}

// A stream kept open by the test: started, first message read.
struct OpenStream {
  OpenStream(LiveServer& ts, const GenerateRequest& req) {
    reader = ts.stub().Generate(&ctx, req);
  }
  bool ReadFirst() {
    GenerateResponse msg;
    return reader->Read(&msg);
  }
  // Reads to the end; returns the final status and keeps the last message.
  grpc::Status Drain() {
    GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) last = msg;
    }
    return reader->Finish();
  }
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<GenerateResponse>> reader;
  GenerateResponse last;
};

// ------------------------------------------------------------------------------------------
// sbserve_prompt_tokens_total

// Requests that end while queued (client cancel, Abort, deadline) were never prefilled, so
// they add nothing; the one request that ran adds exactly its prompt.
TEST(PromptTokens, RequestsEndedBeforeSchedulingAddNothing) {
  ServerOptions o = LiveServer::Defaults();
  o.engine.max_num_seqs = 1;
  LiveServer ts(o);
  OpenStream hold(ts, TextReq("hold the only slot for a while", 1900, "hold"));
  ASSERT_TRUE(hold.ReadFirst());

  {  // cancelled by the client while queued
    OpenStream q(ts, TextReq("queued and then cancelled by its client", 5));
    ASSERT_TRUE(ts.WaitWaiting(1));
    q.ctx.TryCancel();
    EXPECT_EQ(q.Drain().error_code(), grpc::StatusCode::CANCELLED);
    ASSERT_TRUE(ts.WaitNoneWaiting());
  }
  {  // aborted while queued
    OpenStream q(ts, TextReq("queued and then aborted by an Abort call", 5, "queued-abort"));
    ASSERT_TRUE(ts.WaitWaiting(1));
    EXPECT_EQ(ts.Abort({"queued-abort"}), std::vector<std::string>{"queued-abort"});
    EXPECT_EQ(q.Drain().error_code(), grpc::StatusCode::CANCELLED);
    EXPECT_EQ(q.last.finish_reason(), v1::FINISH_REASON_CANCELLED);
    EXPECT_GT(q.last.usage().prompt_tokens(), 5u);
    ASSERT_TRUE(ts.WaitNoneWaiting());
  }
  // out of time while queued
  Outcome late = ts.Generate(TextReq("queued until its deadline passes", 5), absl::Milliseconds(300));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(late.ids.empty());
  // The client's deadline fires on its own clock; the slot is freed only once the server has also
  // dropped the request from the queue, or a loaded machine could schedule it in between.
  ASSERT_TRUE(ts.WaitNoneWaiting());

  EXPECT_EQ(ts.Abort({"hold"}), std::vector<std::string>{"hold"});
  EXPECT_EQ(hold.Drain().error_code(), grpc::StatusCode::CANCELLED);
  const uint32_t hold_prompt = hold.last.usage().prompt_tokens();
  ASSERT_GT(hold_prompt, 3u);
  ASSERT_TRUE(ts.WaitIdle());

  const std::string page = ts.Scrape();
  EXPECT_EQ(Value(page, "sbserve_prompt_tokens_total"), hold_prompt);
  EXPECT_EQ(Value(page, Finished("cancelled")), 3);
  EXPECT_EQ(Value(page, "sbserve_request_deadline_exceeded_total{stage=\"queued\"}"), 1);
  // The prompt-length histogram is over finished requests, scheduled or not.
  EXPECT_EQ(Value(page, "sbserve_request_prompt_tokens_count"), 4);
  // Only the request that ran was ever scheduled.
  EXPECT_EQ(Value(page, "sbserve_request_queue_time_seconds_count"), 1);
}

// The engine's scheduler driving the real MetricsObserver: a chunked prefill that is cut short
// counts the chunks that ran; a prompt recomputed after a preemption counts once.
struct ObservedScheduler {
  ObservedScheduler(int num_blocks, int block_size, int max_batch_tokens) : kv(num_blocks, block_size) {
    EXPECT_TRUE(backend.InitKvCache({num_blocks, block_size}).ok());
    auto m = metrics::ServingMetrics::Create(registry);
    EXPECT_TRUE(m.ok()) << m.status();
    metrics = *std::move(m);
    observer = std::make_unique<MetricsObserver>(&metrics);
    SchedulerOptions so;
    so.max_batch_tokens = max_batch_tokens;
    so.context_len = backend.config().n_positions;
    so.eos_ids = {kFakeEos};
    so.sampling_threads = 1;
    sched = std::make_unique<Scheduler>(so, &backend, &kv, nullptr, observer.get(), nullptr);
  }
  void Add(const std::string& id, int prompt_len, int max_tokens, absl::Time deadline = absl::InfiniteFuture(),
           absl::Time arrival = absl::Now()) {
    sbserve::GenerateRequest r;
    r.request_id = id;
    for (int i = 0; i < prompt_len; ++i) r.prompt_ids.push_back(1 + (i * 7 + prompt_len) % (kFakeVocab - 1));
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    r.deadline = deadline;
    sched->Add(std::move(r), [this, id](GenerateEvent e) {
      if (e.finished) finals[id] = std::move(e);
    }, arrival);
  }
  double prompt_tokens() const { return metrics.prompt_tokens->Value(); }

  FakeBackend backend;
  KvBlockAllocator kv;
  metrics::Registry registry;
  metrics::ServingMetrics metrics;
  std::unique_ptr<MetricsObserver> observer;
  std::unique_ptr<Scheduler> sched;
  std::map<std::string, GenerateEvent> finals;
};

TEST(PromptTokens, CountedPerPrefilledChunk) {
  ObservedScheduler h(/*num_blocks=*/64, /*block_size=*/4, /*max_batch_tokens=*/16);
  h.Add("long", 40, 10);
  ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
  EXPECT_EQ(h.prompt_tokens(), 16);
  ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
  EXPECT_EQ(h.prompt_tokens(), 32);
  // Cut short before its last chunk: the 8 tokens never prefilled are not counted.
  EXPECT_TRUE(h.sched->Cancel("long", absl::Now()));
  EXPECT_EQ(h.finals["long"].finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(h.prompt_tokens(), 32);
  // Queued and cancelled before any step: nothing.
  h.Add("never", 12, 10);
  EXPECT_TRUE(h.sched->Cancel("never", absl::Now()));
  EXPECT_EQ(h.prompt_tokens(), 32);
  // A failed backend call prefilled nothing.
  h.Add("failed", 6, 10);
  h.backend.fail_next = true;
  EXPECT_FALSE(h.sched->Step(absl::Now()).ok());
  EXPECT_EQ(h.finals["failed"].finish_reason, FinishReason::kError);
  EXPECT_EQ(h.prompt_tokens(), 32);
}

TEST(PromptTokens, RecomputationAfterPreemptionIsNotCountedAgain) {
  // 12 blocks of 4 tokens: three sequences of 10 + 30 tokens cannot all stay resident.
  ObservedScheduler h(/*num_blocks=*/12, /*block_size=*/4, /*max_batch_tokens=*/64);
  const int prompts[] = {10, 11, 12};
  for (int i = 0; i < 3; ++i) h.Add(absl::StrCat("s", i), prompts[i], 30);
  for (int i = 0; i < 2000 && h.sched->HasWork(); ++i) ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
  ASSERT_FALSE(h.sched->HasWork());
  ASSERT_GT(h.sched->preemptions(), 0u) << "the test needs a preemption";
  EXPECT_EQ(h.metrics.num_preemptions->Value(), static_cast<double>(h.sched->preemptions()));
  EXPECT_EQ(h.prompt_tokens(), 10 + 11 + 12);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(h.finals[absl::StrCat("s", i)].completion_tokens, 30);
}

// ------------------------------------------------------------------------------------------
// Cancel or deadline

TEST(CancelOrDeadline, AmbiguityWindowIsTheGrpcTimeoutResolutionPlusTransit) {
  EXPECT_EQ(Scheduler::DeadlineAmbiguity(absl::Milliseconds(200)), absl::Milliseconds(28));
  EXPECT_EQ(Scheduler::DeadlineAmbiguity(absl::Milliseconds(999)), absl::Milliseconds(28));
  EXPECT_EQ(Scheduler::DeadlineAmbiguity(absl::Seconds(2)), absl::Milliseconds(37));
  EXPECT_EQ(Scheduler::DeadlineAmbiguity(absl::Seconds(30)), absl::Milliseconds(127));
  EXPECT_EQ(Scheduler::DeadlineAmbiguity(absl::Seconds(300)), absl::Milliseconds(1027));
}

// `at` relative to a deadline `timeout` after arrival decides the reason.
FinishReason CancelAt(absl::Duration timeout, absl::Duration before_deadline, CancelSource source) {
  ObservedScheduler h(64, 4, 64);
  const absl::Time arrival = absl::Now();
  h.Add("r", 8, 100, arrival + timeout, arrival);
  EXPECT_TRUE(h.sched->Step(arrival).ok());  // running
  EXPECT_TRUE(h.sched->Cancel("r", arrival + timeout - before_deadline, source));
  return h.finals["r"].finish_reason;
}

TEST(CancelOrDeadline, DecidedByWhenTheCancelArrived) {
  using absl::Milliseconds;
  using absl::Seconds;
  const auto kClient = CancelSource::kClient;
  const auto kAbort = CancelSource::kAbortRpc;
  // A client cancel clearly before the deadline is a cancel, however close.
  EXPECT_EQ(CancelAt(Seconds(2), Milliseconds(50), kClient), FinishReason::kCancelled);
  EXPECT_EQ(CancelAt(Seconds(2), Milliseconds(38), kClient), FinishReason::kCancelled);
  EXPECT_EQ(CancelAt(Milliseconds(500), Milliseconds(40), kClient), FinishReason::kCancelled);
  EXPECT_EQ(CancelAt(Seconds(30), Milliseconds(150), kClient), FinishReason::kCancelled);
  // At or after it, or within the wire rounding of the timeout before it: the deadline.
  EXPECT_EQ(CancelAt(Seconds(2), Milliseconds(0), kClient), FinishReason::kDeadline);
  EXPECT_EQ(CancelAt(Seconds(2), Milliseconds(-5), kClient), FinishReason::kDeadline);
  EXPECT_EQ(CancelAt(Seconds(2), Milliseconds(36), kClient), FinishReason::kDeadline);
  EXPECT_EQ(CancelAt(Milliseconds(500), Milliseconds(27), kClient), FinishReason::kDeadline);
  EXPECT_EQ(CancelAt(Seconds(30), Milliseconds(90), kClient), FinishReason::kDeadline);
  // An Abort RPC is unambiguous: a cancel until the deadline has passed.
  EXPECT_EQ(CancelAt(Seconds(2), Milliseconds(5), kAbort), FinishReason::kCancelled);
  EXPECT_EQ(CancelAt(Seconds(2), Milliseconds(0), kAbort), FinishReason::kDeadline);
  // No deadline: always a cancel.
  ObservedScheduler h(64, 4, 64);
  h.Add("r", 8, 100);
  EXPECT_TRUE(h.sched->Cancel("r", absl::Now() + absl::Hours(24 * 365)));
  EXPECT_EQ(h.finals["r"].finish_reason, FinishReason::kCancelled);
}

// A backend whose second and later Forward calls wait until the test opens the gate.
class GatedBackend : public FakeBackend {
 public:
  absl::Status Forward(const Batch& b, std::span<float> logits) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      entered_++;
      cv_.notify_all();
      cv_.wait(lock, [&] { return open_ || entered_ == 1; });
    }
    return FakeBackend::Forward(b, logits);
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Waits until a Forward call is held at the gate.
  bool WaitHeld() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return entered_ >= 2; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int entered_ = 0;
};

// The engine thread may be inside a long step when a cancel arrives and get to it only after
// the deadline; the cancel still counts as one.
TEST(CancelOrDeadline, TheEngineJudgesByArrivalNotByWhenItGetsToTheCancel) {
  auto backend = std::make_unique<GatedBackend>();
  GatedBackend* gate = backend.get();
  EngineOptions eo;
  eo.kv_num_blocks = 64;
  auto engine = Engine::CreateWithCodec(eo, std::move(backend), nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  // Whatever happens below, the engine thread is not left held when the engine shuts down.
  struct OpenAtExit {
    GatedBackend* gate;
    ~OpenAtExit() { gate->Open(); }
  } open_at_exit{gate};

  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  GenerateEvent final_event;
  sbserve::GenerateRequest r;
  r.request_id = "slow";
  r.prompt_ids = {1, 2, 3, 4, 5};
  r.max_tokens = 200;
  r.ignore_eos = true;
  const absl::Time deadline = absl::Now() + absl::Milliseconds(800);
  r.deadline = deadline;
  ASSERT_TRUE((*engine)
                  ->Submit(std::move(r),
                           [&](GenerateEvent e) {
                             std::lock_guard<std::mutex> lock(mu);
                             if (e.finished) {
                               final_event = std::move(e);
                               done = true;
                             }
                             cv.notify_all();
                           })
                  .ok());
  // The prefill step ran; the first decode step is held inside the backend. Cancel now and let
  // the step finish only after the deadline.
  ASSERT_TRUE(gate->WaitHeld());
  EXPECT_EQ((*engine)->Abort({"slow"}, CancelSource::kClient), std::vector<std::string>{"slow"});
  const absl::Time cancelled_at = absl::Now();
  ASSERT_LT(cancelled_at, deadline - absl::Milliseconds(100)) << "the machine stalled; the test needs a margin";
  absl::SleepFor(deadline - absl::Now() + absl::Milliseconds(50));
  gate->Open();
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return done; }));
  }
  EXPECT_GT(absl::Now(), deadline);
  EXPECT_EQ(final_event.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(final_event.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(final_event.completion_tokens, 2);  // the prefill's token and the held step's
}

TEST(CancelOrDeadline, OnTheRealServer) {
  LiveServer ts;
  {  // a client cancel well before a 60 s deadline
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    auto reader = ts.stub().Generate(&ctx, TextReq("cancel me long before my deadline", 1800));
    GenerateResponse msg;
    ASSERT_TRUE(reader->Read(&msg));
    ctx.TryCancel();
    while (reader->Read(&msg)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ASSERT_TRUE(ts.WaitIdle());
  std::string page = ts.Scrape();
  EXPECT_EQ(Value(page, Finished("cancelled")), 1);
  EXPECT_EQ(Value(page, Finished("deadline")), 0);

  // A generation longer than its deadline allows.
  Outcome out = ts.Generate(TextReq("run into my deadline", 1800), absl::Milliseconds(500));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_GT(out.ids.size(), 0u);
  ASSERT_TRUE(ts.WaitIdle());
  page = ts.Scrape();
  EXPECT_EQ(Value(page, Finished("cancelled")), 1);
  EXPECT_EQ(Value(page, Finished("deadline")), 1);
  EXPECT_EQ(Value(page, "sbserve_request_deadline_exceeded_total{stage=\"running\"}"), 1);
  EXPECT_EQ(Value(page, "sbserve_request_deadline_exceeded_total{stage=\"queued\"}"), 0);
  EXPECT_EQ(Value(page, "sbserve_request_aborts_total"), 0);
}

// ------------------------------------------------------------------------------------------
// Reject reasons

TEST(RejectReasons, EveryStatusCodeMapsToItsOwnLabel) {
  using metrics::RejectReason;
  const absl::Status unavailable = absl::UnavailableError("x");
  EXPECT_EQ(RejectReasonFor(unavailable, /*loading=*/true), RejectReason::kLoading);
  EXPECT_EQ(RejectReasonFor(unavailable, /*loading=*/false), RejectReason::kDraining);
  EXPECT_EQ(RejectReasonFor(absl::AlreadyExistsError("x"), false), RejectReason::kAlreadyExists);
  EXPECT_EQ(RejectReasonFor(absl::InvalidArgumentError("x"), false), RejectReason::kInvalidArgument);
  EXPECT_EQ(RejectReasonFor(absl::OutOfRangeError("x"), false), RejectReason::kOutOfRange);
  EXPECT_EQ(RejectReasonFor(absl::ResourceExhaustedError("queue full: 3 requests waiting"), false),
            RejectReason::kQueueFull);
  EXPECT_EQ(RejectReasonFor(absl::ResourceExhaustedError("queue full: 70 prompt tokens waiting"), false),
            RejectReason::kQueueTokens);
  EXPECT_EQ(RejectReasonFor(absl::InternalError("x"), false), RejectReason::kOther);
  EXPECT_EQ(RejectReasonFor(absl::FailedPreconditionError("x"), false), RejectReason::kOther);
  EXPECT_EQ(metrics::RejectReasonLabel(RejectReason::kLoading), "loading");
  EXPECT_EQ(metrics::RejectReasonLabel(RejectReason::kAlreadyExists), "already_exists");
  EXPECT_EQ(metrics::RejectReasonLabel(RejectReason::kOther), "other");
}

TEST(RejectReasons, OnTheRealServerEachCauseHasItsOwnLabel) {
  LiveServer ts(LiveServer::Defaults(), /*load=*/false);
  EXPECT_EQ(ts.Generate(TextReq("too early", 3)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  std::string page = ts.Scrape();
  EXPECT_EQ(Value(page, Rejected("loading")), 1);
  EXPECT_EQ(Value(page, Rejected("draining")), 0);

  ASSERT_TRUE(ts.server().LoadModel().ok());
  OpenStream live(ts, TextReq("a live request", 1800, "same-id"));
  ASSERT_TRUE(live.ReadFirst());
  EXPECT_EQ(ts.Generate(TextReq("the same id again", 3, "same-id")).status.error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  GenerateRequest bad = TextReq("bad temperature", 3);
  bad.mutable_sampling()->set_temperature(-1);
  EXPECT_EQ(ts.Generate(bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  GenerateRequest far = TextReq("too many logprobs", 3);
  far.set_logprobs(1000);
  EXPECT_EQ(ts.Generate(far).status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  live.ctx.TryCancel();
  live.Drain();
  ASSERT_TRUE(ts.WaitIdle());

  ts.server().BeginDrain();
  EXPECT_EQ(ts.Generate(TextReq("too late", 3)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  page = ts.Scrape();
  EXPECT_EQ(Value(page, Rejected("loading")), 1);
  EXPECT_EQ(Value(page, Rejected("already_exists")), 1);
  EXPECT_EQ(Value(page, Rejected("invalid_argument")), 1);
  EXPECT_EQ(Value(page, Rejected("out_of_range")), 1);
  EXPECT_EQ(Value(page, Rejected("draining")), 1);
  EXPECT_EQ(Value(page, Rejected("queue_full")), 0);
  EXPECT_EQ(Value(page, Rejected("queue_tokens")), 0);
  EXPECT_EQ(Value(page, Rejected("other")), 0);
  EXPECT_TRUE(ts.server().WaitDrained(absl::Seconds(5)));
}

// ------------------------------------------------------------------------------------------
// Preemption, aborts and the latency histograms

// Series values of one scrape, with differences between two.
struct Snapshot {
  explicit Snapshot(const std::string& page) : page(page) {}
  double operator[](const std::string& series) const { return Value(page, series); }
  std::string page;
};
double Delta(const Snapshot& a, const Snapshot& b, const std::string& series) { return b[series] - a[series]; }

TEST(ServingSeries, HistogramsPreemptionAndAbortsAgreeWithTheClients) {
  ServerOptions o = LiveServer::Defaults();
  o.engine.kv_num_blocks = 24;  // 384 tokens: far fewer than the concurrent requests below need
  o.engine.kv_block_size = 16;
  LiveServer ts(o);

  // 1. Three requests one after another, n tokens each: no queueing, no preemption.
  constexpr int kN = 30;
  std::vector<Outcome> seq;
  for (int i = 0; i < 3; ++i) {
    seq.push_back(ts.Generate(TextReq(absl::StrCat("Sequential request number ", i, " says"), kN)));
    ASSERT_TRUE(seq.back().status.ok()) << seq.back().status.error_message();
    ASSERT_EQ(seq.back().ids.size(), static_cast<size_t>(kN));
  }
  ASSERT_TRUE(ts.WaitIdle());
  const Snapshot s1(ts.Scrape());
  double prompts = 0, client_ttft = 0, client_e2e = 0;
  for (const Outcome& out : seq) {
    prompts += out.last.usage().prompt_tokens();
    client_ttft += absl::ToDoubleSeconds(out.first - out.sent);
    client_e2e += absl::ToDoubleSeconds(out.done - out.sent);
  }
  EXPECT_EQ(s1["sbserve_prompt_tokens_total"], prompts);
  EXPECT_EQ(s1["sbserve_generation_tokens_total"], 3 * kN);
  EXPECT_EQ(s1[Finished("length")], 3);
  EXPECT_EQ(s1["sbserve_num_preemptions_total"], 0);
  EXPECT_EQ(s1["sbserve_request_prompt_tokens_sum"], prompts);
  EXPECT_EQ(s1["sbserve_request_generation_tokens_sum"], 3 * kN);
  EXPECT_EQ(s1["sbserve_request_generation_tokens_count"], 3);
  for (const char* h : {"sbserve_time_to_first_token_seconds", "sbserve_e2e_request_latency_seconds",
                        "sbserve_request_queue_time_seconds", "sbserve_request_prefill_time_seconds",
                        "sbserve_request_decode_time_seconds", "sbserve_request_time_per_output_token_seconds"}) {
    EXPECT_EQ(s1[absl::StrCat(h, "_count")], 3) << h;
    EXPECT_GT(s1[absl::StrCat(h, "_sum")], 0) << h;
  }
  // One inter-token gap per token after the first.
  EXPECT_EQ(s1["sbserve_inter_token_latency_seconds_count"], 3 * (kN - 1));
  const double ttft = s1["sbserve_time_to_first_token_seconds_sum"];
  const double e2e = s1["sbserve_e2e_request_latency_seconds_sum"];
  const double queue = s1["sbserve_request_queue_time_seconds_sum"];
  const double prefill = s1["sbserve_request_prefill_time_seconds_sum"];
  const double decode = s1["sbserve_request_decode_time_seconds_sum"];
  const double itl = s1["sbserve_inter_token_latency_seconds_sum"];
  const double tpot = s1["sbserve_request_time_per_output_token_seconds_sum"];
  // The server's clock runs inside the client's: arrival after the send, each answer before the
  // client reads it.
  EXPECT_LE(ttft, client_ttft);
  EXPECT_LE(e2e, client_e2e);
  // queue + prefill = TTFT and the gaps add up to the decode time, per request, hence in sum;
  // TTFT + decode = arrival to last token <= e2e; TPOT = decode / (n - 1) with the same n.
  constexpr double kEps = 1e-6;
  EXPECT_NEAR(queue + prefill, ttft, kEps);
  EXPECT_NEAR(itl, decode, kEps);
  EXPECT_LE(ttft + decode, e2e + kEps);
  EXPECT_NEAR(tpot, decode / (kN - 1), kEps);
  // Steps: each request is one prefill step and n - 1 decode steps of one sequence, and every
  // token but the last sampled one went through the model once.
  EXPECT_EQ(s1["sbserve_engine_step_time_seconds_count"], 3 * kN);
  EXPECT_EQ(s1["sbserve_engine_step_sequences_count"], 3 * kN);
  EXPECT_EQ(s1["sbserve_engine_step_sequences_sum"], 3 * kN);
  EXPECT_EQ(s1["sbserve_engine_step_tokens_sum"], prompts + 3 * (kN - 1));

  // 2. Eight at once in a KV cache that holds far fewer: preemptions.
  constexpr int kC = 8;
  std::vector<Outcome> together(kC);
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < kC; ++i) reqs.push_back(TextReq(absl::StrCat("Preemption case ", i, " with a few words"), 90 + 5 * i));
  std::vector<std::thread> threads;
  for (int i = 0; i < kC; ++i) threads.emplace_back([&, i] { together[i] = ts.Generate(reqs[i]); });
  for (auto& t : threads) t.join();
  ASSERT_TRUE(ts.WaitIdle());
  const Snapshot s2(ts.Scrape());
  double preempted = 0, prompts2 = 0, tokens2 = 0, model_tokens2 = 0;
  for (int i = 0; i < kC; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    preempted += together[i].last.timings().preemptions();
    prompts2 += together[i].last.usage().prompt_tokens();
    tokens2 += together[i].ids.size();
    model_tokens2 += together[i].last.usage().prompt_tokens() + together[i].ids.size() - 1;
  }
  ASSERT_GT(preempted, 0) << "the test needs preemptions";
  EXPECT_EQ(s2["sbserve_num_preemptions_total"], preempted);
  EXPECT_EQ(s2["sbserve_num_preemptions_total"], static_cast<double>(ts.Info().preemptions()));
  // Recomputed prompts are not prefilled again as far as the counter goes; the steps did run them.
  EXPECT_EQ(Delta(s1, s2, "sbserve_prompt_tokens_total"), prompts2);
  EXPECT_GT(Delta(s1, s2, "sbserve_engine_step_tokens_sum"), model_tokens2);
  EXPECT_EQ(Delta(s1, s2, "sbserve_generation_tokens_total"), tokens2);
  EXPECT_EQ(Delta(s1, s2, "sbserve_time_to_first_token_seconds_count"), kC);
  EXPECT_EQ(Delta(s1, s2, "sbserve_inter_token_latency_seconds_count"), tokens2 - kC);
  EXPECT_NEAR(Delta(s1, s2, "sbserve_inter_token_latency_seconds_sum"),
              Delta(s1, s2, "sbserve_request_decode_time_seconds_sum"), kEps);
  EXPECT_NEAR(Delta(s1, s2, "sbserve_request_queue_time_seconds_sum") +
                  Delta(s1, s2, "sbserve_request_prefill_time_seconds_sum"),
              Delta(s1, s2, "sbserve_time_to_first_token_seconds_sum"), kEps);
  EXPECT_EQ(s2[Finished("length")], 3 + kC);
}

TEST(ServingSeries, AbortsAndCancelsAreCountedByWhoEndedThem) {
  LiveServer ts;
  // An Abort RPC on a running request, a client cancel, and an Abort naming nothing live.
  OpenStream doomed(ts, TextReq("abort me while I generate", 1800, "doomed"));
  ASSERT_TRUE(doomed.ReadFirst());
  EXPECT_EQ(ts.Abort({"doomed", "no-such-request"}), std::vector<std::string>{"doomed"});
  EXPECT_EQ(doomed.Drain().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(doomed.last.finish_reason(), v1::FINISH_REASON_CANCELLED);
  OpenStream left(ts, TextReq("my client goes away", 1800));
  ASSERT_TRUE(left.ReadFirst());
  left.ctx.TryCancel();
  EXPECT_EQ(left.Drain().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(ts.Abort({"doomed"}).empty());
  ASSERT_TRUE(ts.WaitIdle());
  const Snapshot s3(ts.Scrape());
  EXPECT_EQ(s3["sbserve_request_aborts_total"], 1);
  EXPECT_EQ(s3[Finished("cancelled")], 2);
  EXPECT_EQ(s3[Finished("deadline")], 0);
  EXPECT_EQ(s3[Finished("error")], 0);
  EXPECT_EQ(s3["sbserve_e2e_request_latency_seconds_count"], 2);
  EXPECT_EQ(s3["sbserve_request_generation_tokens_sum"], s3["sbserve_generation_tokens_total"]);
  EXPECT_EQ(s3["sbserve_num_requests_running"], 0);
  EXPECT_EQ(s3["sbserve_kv_cache_used_blocks"], 0);
}

}  // namespace
}  // namespace sbserve
