// Data-parallel serving on the real server: two CPU engines (--devices cpu:2) behind one gRPC
// front door on loopback, with the demo model. Load spreads over both engines, the unlabelled
// metrics are the sums of the per-engine series, GetServerInfo lists each engine, greedy output
// equals one engine's, Abort reaches a request on engine 1, and an unhealthy engine is taken out
// while the server stays ready (a fatal error on any engine still drains the server).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "sbserve/v1/sbserve.grpc.pb.h"
#include "server/options.h"
#include "server/server.h"
#include "tests/server/live_server.h"

namespace sbserve {
namespace {

using testing::MetricValue;

ServerOptions Options(const std::string& devices) {
  ServerOptions o = testing::LoopbackServerOptions();
  o.devices = devices;
  o.cpu_threads = 1;
  o.engine.kv_cache_bytes = int64_t{32} << 20;
  return o;
}

class Live {
 public:
  explicit Live(ServerOptions o, std::function<void(const absl::Status&)> on_fatal = nullptr) : server_(std::move(o)) {
    if (on_fatal) server_.SetFatalHandler(std::move(on_fatal));
    absl::Status s = server_.Start();
    EXPECT_TRUE(s.ok()) << s;
    s = server_.LoadModel();
    EXPECT_TRUE(s.ok()) << s;
    channel_ = grpc::CreateChannel(absl::StrCat("localhost:", server_.port()), grpc::InsecureChannelCredentials());
    stub_ = v1::SbServe::NewStub(channel_);
  }
  Server& server() { return server_; }
  v1::SbServe::Stub& stub() { return *stub_; }

  v1::ServerInfo Info() {
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    EXPECT_TRUE(stub_->GetServerInfo(&ctx, {}, &info).ok());
    return info;
  }
  std::string Metrics() {
    httplib::Client http("127.0.0.1", server_.metrics_port());
    auto res = http.Get("/metrics");
    return res && res->status == 200 ? res->body : "";
  }
  bool Ready() {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(kReadinessService);
    grpc::health::v1::HealthCheckResponse resp;
    return health->Check(&ctx, req, &resp).ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  }
  // Waits until no engine runs, waits or holds a KV block.
  bool WaitIdle() {
    for (int i = 0; i < 2000; ++i) {
      const v1::ServerInfo info = Info();
      if (info.running() == 0 && info.waiting() == 0 && info.kv_blocks_used() == 0) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }
  // Unary generation; the ids, or the status on failure.
  grpc::Status Complete(const v1::GenerateRequest& r, std::vector<int32_t>* ids = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::GenerateResponse resp;
    grpc::Status st = stub_->Complete(&ctx, r, &resp);
    if (ids != nullptr) ids->assign(resp.token_ids().begin(), resp.token_ids().end());
    return st;
  }

 private:
  Server server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SbServe::Stub> stub_;
};

// Polls `done` for up to 10 s.
template <typename F>
bool Eventually(F done) {
  for (int i = 0; i < 2000; ++i) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

v1::GenerateRequest Greedy(const std::string& text, int max_tokens) {
  v1::GenerateRequest r;
  r.set_text(text);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(max_tokens));
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

std::string Labels(int i) { return absl::StrCat("{engine=\"", i, "\",device=\"cpu:", i, "\"}"); }

// A stream that has received its first message; cancelled when it goes out of scope.
struct OpenStream {
  OpenStream(v1::SbServe::Stub& stub, const v1::GenerateRequest& r) : reader(stub.Generate(&ctx, r)) {
    v1::GenerateResponse first;
    started = reader->Read(&first);
  }
  ~OpenStream() {
    ctx.TryCancel();
    v1::GenerateResponse m;
    while (reader->Read(&m)) {
    }
    reader->Finish().IgnoreError();
  }
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  bool started = false;
};

TEST(DataParallel, DevicesFlagParses) {
  EXPECT_TRUE(ParseDevices("")->cuda.empty());
  EXPECT_TRUE(ParseDevices("all")->all);
  EXPECT_EQ(ParseDevices("0,1,3")->cuda, (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(ParseDevices("cpu:2")->cpu_engines, 2);
  for (const char* bad : {"cpu:0", "cpu:65", "cpu:x", "0,0", "0,,1", "-1", "gpu", "1;2"}) {
    EXPECT_EQ(ParseDevices(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  bool help = false;
  absl::StatusOr<ServerOptions> o = ParseServerOptions({"--devices", "cpu:3", "--affinity-slack=-1"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->devices, "cpu:3");
  EXPECT_EQ(o->affinity_slack, -1);
  EXPECT_FALSE(ParseServerOptions({"--devices", "0,x"}, &help).ok());
  // CUDA devices with the CPU backend contradict each other: the load fails and says why.
  ServerOptions cpu = Options("0,1");
  cpu.backend = "cpu";
  Server s(cpu);
  ASSERT_TRUE(s.Start().ok());
  EXPECT_EQ(s.LoadModel().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DataParallel, ConcurrentRequestsLandOnBothEnginesAndTotalsAreTheSums) {
  Live live(Options("cpu:2"));
  const v1::ServerInfo idle = live.Info();
  ASSERT_EQ(idle.engines_size(), 2);
  EXPECT_EQ(idle.engines(0).device(), "cpu:0");
  EXPECT_EQ(idle.engines(1).device(), "cpu:1");
  EXPECT_EQ(idle.engines(1).index(), 1);
  EXPECT_TRUE(idle.engines(0).serving() && idle.engines(1).serving());
  EXPECT_TRUE(idle.engines(0).batch_invariant() && idle.engines(1).batch_invariant());  // CPU engines
  EXPECT_FALSE(idle.engines(0).samples_on_device() || idle.engines(1).samples_on_device());
  EXPECT_EQ(idle.kv_blocks_total(), idle.engines(0).kv_blocks_total() + idle.engines(1).kv_blocks_total());
  EXPECT_GT(idle.engines(1).kv_blocks_total(), 0);

  // While two long streams run, one on each engine, the gauges settle at running 1 + 1 (the
  // first step's report may trail the first token: wait for it, a bounded while).
  {
    OpenStream a(live.stub(), Greedy("the first long one", 1500));
    OpenStream b(live.stub(), Greedy("the second long one", 1500));
    ASSERT_TRUE(a.started && b.started);
    EXPECT_TRUE(Eventually([&] {
      const v1::ServerInfo busy = live.Info();
      return busy.engines(0).running() == 1 && busy.engines(1).running() == 1 && busy.running() == 2;
    }));
    EXPECT_TRUE(Eventually([&] {
      const std::string page = live.Metrics();
      return MetricValue(page, "sbserve_engine_num_requests_running" + Labels(0)) == 1 &&
             MetricValue(page, "sbserve_engine_num_requests_running" + Labels(1)) == 1 &&
             MetricValue(page, "sbserve_num_requests_running") == 2;
    })) << live.Metrics();
  }
  ASSERT_TRUE(live.WaitIdle());

  constexpr int kRequests = 12;
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < kRequests; ++i) {
    clients.emplace_back([&, i] {
      if (live.Complete(Greedy(absl::StrCat("Request ", i, ": tell me a story"), 12)).ok()) ok++;
    });
  }
  for (auto& t : clients) t.join();
  ASSERT_EQ(ok.load(), kRequests);
  ASSERT_TRUE(live.WaitIdle());

  const v1::ServerInfo info = live.Info();
  EXPECT_GT(info.engines(0).requests_finished(), 2u);
  EXPECT_GT(info.engines(1).requests_finished(), 2u);
  EXPECT_EQ(info.engines(0).requests_finished() + info.engines(1).requests_finished(), info.requests_finished());
  EXPECT_EQ(info.requests_finished(), kRequests + 2u);
  EXPECT_EQ(info.engines(0).requests_routed() + info.engines(1).requests_routed(), kRequests + 2u);

  // Each total equals the sum of its per-engine series (a step's report may trail the last
  // final event: a scrape racing it can see one side updated, so wait a bounded while for a
  // scrape where all agree).
  std::string page;
  std::string mismatch;
  EXPECT_TRUE(Eventually([&] {
    page = live.Metrics();
    mismatch.clear();
    for (const char* name : {"sbserve_generation_tokens_total", "sbserve_prompt_tokens_total",
                             "sbserve_kv_cache_capacity_blocks", "sbserve_num_requests_running",
                             "sbserve_kv_cache_used_blocks"}) {
      const std::string per = std::string(name).replace(0, 8, "sbserve_engine_");
      const double e0 = MetricValue(page, per + Labels(0)), e1 = MetricValue(page, per + Labels(1));
      if (e0 < 0 || e1 < 0 || MetricValue(page, name) != e0 + e1) {
        absl::StrAppend(&mismatch, name, " ", MetricValue(page, name), " != ", e0, " + ", e1, "; ");
      }
    }
    return mismatch.empty();
  })) << mismatch;
  EXPECT_GT(MetricValue(page, "sbserve_engine_generation_tokens_total" + Labels(1)), 0);
  EXPECT_EQ(MetricValue(page, "sbserve_engine_requests_finished_total" + Labels(0)) +
                MetricValue(page, "sbserve_engine_requests_finished_total" + Labels(1)),
            kRequests + 2);
  EXPECT_GT(MetricValue(page, "sbserve_engine_steps_total" + Labels(0)), 0);
  EXPECT_GT(MetricValue(page, "sbserve_engine_step_seconds_total" + Labels(1)), 0);
  EXPECT_EQ(MetricValue(page, "sbserve_engine_backend_healthy" + Labels(1)), 1);
  EXPECT_EQ(MetricValue(page, "sbserve_backend_healthy"), 1);
}

TEST(DataParallel, GreedyOutputEqualsOneEngine) {
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < 6; ++i) reqs.push_back(Greedy(absl::StrCat("Once upon a time, number ", i), 16));
  auto run = [&](const std::string& devices) {
    Live live(Options(devices));
    std::vector<std::vector<int32_t>> out(reqs.size());
    std::vector<std::thread> clients;
    for (size_t i = 0; i < reqs.size(); ++i) {
      clients.emplace_back([&, i] { EXPECT_TRUE(live.Complete(reqs[i], &out[i]).ok()); });
    }
    for (auto& t : clients) t.join();
    if (devices == "cpu:2") {
      const v1::ServerInfo info = live.Info();
      EXPECT_GT(info.engines(0).requests_routed(), 0u);
      EXPECT_GT(info.engines(1).requests_routed(), 0u);
    }
    return out;
  };
  const auto one = run("");
  const auto two = run("cpu:2");
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(one[i].size(), 16u);
    EXPECT_EQ(one[i], two[i]) << "request " << i;
  }
}

TEST(DataParallel, AbortReachesARequestOnEngineOne) {
  Live live(Options("cpu:2"));
  v1::GenerateRequest a = Greedy("stay on engine zero", 1500);
  a.set_request_id("on-0");
  v1::GenerateRequest b = Greedy("abort me on engine one", 1500);
  b.set_request_id("on-1");
  OpenStream sa(live.stub(), a);  // idle: engine 0 first
  OpenStream sb(live.stub(), b);  // engine 0 holds a: engine 1
  ASSERT_TRUE(sa.started && sb.started);
  ASSERT_TRUE(Eventually([&] {
    const v1::ServerInfo i = live.Info();
    return i.engines(0).running() == 1 && i.engines(1).running() == 1;
  }));
  {
    grpc::ClientContext ctx;
    v1::AbortRequest req;
    req.add_request_ids("on-1");
    req.add_request_ids("nowhere");
    v1::AbortResponse resp;
    ASSERT_TRUE(live.stub().Abort(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.aborted_size(), 1);
    EXPECT_EQ(resp.aborted(0), "on-1");
  }
  v1::GenerateResponse m, last;
  while (sb.reader->Read(&m)) last = m;
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_CANCELLED);
  // Engine 1 is empty; engine 0 still streams a.
  Eventually([&] { return live.Info().engines(1).kv_blocks_used() == 0; });
  const v1::ServerInfo info = live.Info();
  EXPECT_EQ(info.engines(1).running() + info.engines(1).waiting(), 0);
  EXPECT_EQ(info.engines(1).kv_blocks_used(), 0);
  EXPECT_EQ(info.engines(0).running(), 1);
  ASSERT_TRUE(sa.reader->Read(&m));
  EXPECT_EQ(m.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
}

TEST(DataParallel, DrainLetsBothEnginesFinish) {
  Live live(Options("cpu:2"));
  // One request per engine; the second runs longer, so a drain that waited for engine 0 alone
  // would return while it still streams. The first is long enough to be seen running (polled every
  // 5 ms) on a fast machine: 8 tokens of the demo model could come and go between two polls.
  std::vector<std::thread> clients;
  std::vector<grpc::Status> status(2);
  std::vector<std::vector<int32_t>> ids(2);
  const int lengths[2] = {200, 800};
  for (int i = 0; i < 2; ++i) {
    clients.emplace_back([&, i] { status[i] = live.Complete(Greedy(absl::StrCat("drain ", i), lengths[i]), &ids[i]); });
    ASSERT_TRUE(Eventually([&] { return live.Info().engines(i).running() + live.Info().engines(i).waiting() == 1; }));
  }
  live.server().BeginDrain();
  EXPECT_FALSE(live.Ready());
  EXPECT_EQ(live.Complete(Greedy("too late", 4)).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(live.server().WaitDrained(absl::Seconds(60)));
  const v1::ServerInfo info = live.Info();
  EXPECT_EQ(info.engines(0).running() + info.engines(1).running(), 0);
  EXPECT_EQ(info.engines(1).requests_finished(), 1u);
  for (auto& t : clients) t.join();
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(status[i].ok()) << i << ": " << status[i].error_message();
    EXPECT_EQ(ids[i].size(), static_cast<size_t>(lengths[i]));
  }
}

// Delegates to the real backend; every forward call fails while `fail` is set.
class FailingBackend final : public ForwardingBackend {
 public:
  FailingBackend(std::unique_ptr<Backend> inner, bool fatal) : ForwardingBackend(std::move(inner)), fatal_(fatal) {}
  absl::Status Forward(const Batch&, std::span<float>) override {
    absl::Status st = absl::InternalError("injected: cublasGemmEx failed");
    return fatal_ ? MarkFatalBackendError(absl::InternalError("injected: an illegal memory access")) : st;
  }

 private:
  bool fatal_;
};

// Engine 1's backend always fails (fatal or not); engine 0's works.
ServerOptions SecondEngineFails(bool fatal) {
  ServerOptions o = Options("cpu:2");
  o.engine.max_consecutive_step_failures = 1;
  // Explicit admission limits: with them (and the explicit KV size) no start-up warm-up step runs
  // (engine/capacity.h), so the failing backend fails while serving, not at load.
  o.engine.max_queued_tokens = 65536;
  auto built = std::make_shared<std::atomic<int>>(0);
  o.wrap_backend = [built, fatal](std::unique_ptr<Backend> b) -> std::unique_ptr<Backend> {
    if (built->fetch_add(1) != 1) return b;
    return std::make_unique<FailingBackend>(std::move(b), fatal);
  };
  return o;
}

TEST(DataParallel, AnUnhealthyEngineIsTakenOutAndTheServerStaysReady) {
  Live live(SecondEngineFails(false));
  ASSERT_TRUE(live.Ready());
  EXPECT_TRUE(live.Complete(Greedy("first goes to engine zero", 4)).ok());
  EXPECT_EQ(live.Complete(Greedy("second goes to engine one", 4)).error_code(), grpc::StatusCode::INTERNAL);
  for (int i = 0; i < 2000 && live.Info().engines(1).serving(); ++i) absl::SleepFor(absl::Milliseconds(5));
  const v1::ServerInfo info = live.Info();
  EXPECT_FALSE(info.engines(1).serving());
  EXPECT_TRUE(info.engines(0).serving());
  EXPECT_TRUE(live.Ready());
  EXPECT_TRUE(info.ready());
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(live.Complete(Greedy(absl::StrCat("after ", i), 4)).ok()) << i;
  EXPECT_EQ(live.Info().engines(1).requests_routed(), 1u);
  const std::string page = live.Metrics();
  EXPECT_EQ(MetricValue(page, "sbserve_engine_backend_healthy" + Labels(1)), 0);
  EXPECT_EQ(MetricValue(page, "sbserve_engine_backend_healthy" + Labels(0)), 1);
  EXPECT_EQ(MetricValue(page, "sbserve_engine_failed_steps_total" + Labels(1)), 1);
  EXPECT_EQ(MetricValue(page, "sbserve_backend_healthy"), 1);
}

TEST(DataParallel, AFatalErrorOnOneEngineDrainsTheServer) {
  std::mutex mu;
  int fatal_calls = 0;
  Live live(SecondEngineFails(true), [&](const absl::Status&) {
    std::lock_guard<std::mutex> lock(mu);
    fatal_calls++;
  });
  EXPECT_TRUE(live.Complete(Greedy("first goes to engine zero", 4)).ok());
  EXPECT_EQ(live.Complete(Greedy("second goes to engine one", 4)).error_code(), grpc::StatusCode::INTERNAL);
  for (int i = 0; i < 2000 && live.Ready(); ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_FALSE(live.Ready());
  {
    // Readiness turns first, then the drain starts and the handler is called (server.cc): wait for it.
    std::unique_lock<std::mutex> lock(mu);
    for (int i = 0; i < 1000 && fatal_calls == 0; ++i) {
      lock.unlock();
      absl::SleepFor(absl::Milliseconds(2));
      lock.lock();
    }
    EXPECT_EQ(fatal_calls, 1);
  }
  EXPECT_EQ(live.Complete(Greedy("refused", 4)).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(MetricValue(live.Metrics(), "sbserve_backend_healthy"), 0);
}

}  // namespace
}  // namespace sbserve
