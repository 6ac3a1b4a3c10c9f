// A failing backend drops readiness (issue: multi-GPU hosts). The real server on loopback, its
// backend wrapped by a fault injector: K consecutive failed steps turn readiness NOT_SERVING and
// /ready 503 for good, with the error counted and the healthy gauge at 0, while liveness stays up;
// fewer than K in a row (a success in between) leave it ready; a fatal device error drains the
// server at once and calls the fatal handler (the binary then exits non-zero).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "sbserve/v1/sbserve.grpc.pb.h"
#include "server/server.h"
#include "tests/server/live_server.h"

namespace sbserve {
namespace {

// Delegates to the real backend; forward calls listed in `fail` (0-based) fail instead.
class FaultyBackend final : public ForwardingBackend {
 public:
  FaultyBackend(std::unique_ptr<Backend> inner, std::shared_ptr<std::atomic<int>> plan, bool fatal)
      : ForwardingBackend(std::move(inner)), plan_(std::move(plan)), fatal_(fatal) {}
  absl::Status Forward(const Batch& batch, std::span<float> logits) override {
    // plan > 0: that many more forward calls fail; 0: succeed.
    if (plan_->load() > 0) {
      plan_->fetch_sub(1);
      absl::Status st = absl::InternalError("injected: cublasGemmEx failed");
      return fatal_ ? MarkFatalBackendError(absl::InternalError("injected: an illegal memory access")) : st;
    }
    return ForwardingBackend::Forward(batch, logits);
  }

 private:
  std::shared_ptr<std::atomic<int>> plan_;
  bool fatal_;
};

struct Harness {
  explicit Harness(int max_failures, bool fatal) : failures(std::make_shared<std::atomic<int>>(0)) {
    ServerOptions o = testing::LoopbackServerOptions();
    o.engine.kv_cache_bytes = int64_t{32} << 20;
    o.engine.max_consecutive_step_failures = max_failures;
    auto plan = failures;
    o.wrap_backend = [plan, fatal](std::unique_ptr<Backend> b) -> std::unique_ptr<Backend> {
      return std::make_unique<FaultyBackend>(std::move(b), plan, fatal);
    };
    server = std::make_unique<Server>(std::move(o));
    server->SetFatalHandler([this](const absl::Status& s) {
      std::lock_guard<std::mutex> lock(mu);
      fatal_status = s;
      fatal_calls++;
    });
    EXPECT_TRUE(server->Start().ok());
    EXPECT_TRUE(server->LoadModel().ok());
    channel = grpc::CreateChannel(absl::StrCat("localhost:", server->port()), grpc::InsecureChannelCredentials());
    stub = v1::SbServe::NewStub(channel);
  }

  grpc::Status Generate() {
    v1::GenerateRequest r;
    r.set_text("Once upon a time");
    r.mutable_sampling()->set_temperature(0);
    r.mutable_stopping()->set_max_tokens(4);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GenerateResponse resp;
    return stub->Complete(&ctx, r, &resp);
  }
  int Http(const char* path) {
    httplib::Client http("127.0.0.1", server->metrics_port());
    auto res = http.Get(path);
    return res ? res->status : -1;
  }
  std::string Metrics() {
    httplib::Client http("127.0.0.1", server->metrics_port());
    auto res = http.Get("/metrics");
    return res ? res->body : "";
  }
  grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& service) {
    auto h = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    EXPECT_TRUE(h->Check(&ctx, req, &resp).ok());
    return resp.status();
  }

  std::shared_ptr<std::atomic<int>> failures;
  std::unique_ptr<Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::SbServe::Stub> stub;
  std::mutex mu;
  absl::Status fatal_status;
  int fatal_calls = 0;
};

bool Contains(const std::string& page, const std::string& line) {
  return page.find("\n" + line + "\n") != std::string::npos;
}

constexpr auto kServing = grpc::health::v1::HealthCheckResponse::SERVING;
constexpr auto kNotServing = grpc::health::v1::HealthCheckResponse::NOT_SERVING;

TEST(BackendFailure, KConsecutiveFailedStepsTurnReadinessOffForGood) {
  Harness h(/*max_failures=*/3, /*fatal=*/false);
  ASSERT_TRUE(h.Generate().ok());
  EXPECT_EQ(h.Http("/ready"), 200);
  {
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    ASSERT_TRUE(h.stub->GetServerInfo(&ctx, {}, &info).ok());
    EXPECT_TRUE(info.ready());
  }
  h.failures->store(1000);  // every step fails from now on
  for (int i = 0; i < 2; ++i) {
    grpc::Status st = h.Generate();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INTERNAL) << st.error_message();
    EXPECT_NE(st.error_message().find("backend forward failed"), std::string::npos) << st.error_message();
  }
  EXPECT_EQ(h.Http("/ready"), 200) << "two failures in a row are below K = 3";
  EXPECT_EQ(h.Generate().error_code(), grpc::StatusCode::INTERNAL);
  // The third failure tips it (the observer runs right after the failed step: give it a moment).
  for (int i = 0; i < 200 && h.Http("/ready") != 503; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(h.Http("/ready"), 503);
  EXPECT_FALSE(h.server->ready());
  {
    // GetServerInfo says the same as the probes.
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    ASSERT_TRUE(h.stub->GetServerInfo(&ctx, {}, &info).ok());
    EXPECT_FALSE(info.ready());
    EXPECT_FALSE(info.draining());
  }
  EXPECT_EQ(h.Health("sbserve.v1.SbServe"), kNotServing);
  EXPECT_EQ(h.Http("/health"), 200) << "liveness stays up";
  EXPECT_EQ(h.Health(""), kServing);
  const std::string page = h.Metrics();
  EXPECT_TRUE(Contains(page, "sbserve_engine_step_failures_total 3")) << page;
  EXPECT_TRUE(Contains(page, "sbserve_backend_healthy 0"));
  // Sticky: a later success does not bring readiness back (the process should be restarted).
  h.failures->store(0);
  EXPECT_TRUE(h.Generate().ok());
  EXPECT_EQ(h.Http("/ready"), 503);
  std::lock_guard<std::mutex> lock(h.mu);
  EXPECT_EQ(h.fatal_calls, 0) << "not fatal: the server keeps running";
}

TEST(BackendFailure, FailuresWithSuccessesBetweenThemKeepItReady) {
  Harness h(/*max_failures=*/2, /*fatal=*/false);
  for (int round = 0; round < 4; ++round) {
    h.failures->store(1);
    EXPECT_EQ(h.Generate().error_code(), grpc::StatusCode::INTERNAL);
    EXPECT_TRUE(h.Generate().ok());
  }
  EXPECT_EQ(h.Http("/ready"), 200);
  const std::string page = h.Metrics();
  EXPECT_TRUE(Contains(page, "sbserve_engine_step_failures_total 4")) << page;
  EXPECT_TRUE(Contains(page, "sbserve_backend_healthy 1"));
}

TEST(BackendFailure, FatalDeviceErrorDrainsAtOnceAndCallsTheFatalHandler) {
  Harness h(/*max_failures=*/100, /*fatal=*/true);
  ASSERT_TRUE(h.Generate().ok());
  h.failures->store(1);
  EXPECT_EQ(h.Generate().error_code(), grpc::StatusCode::INTERNAL);
  for (int i = 0; i < 200 && h.Http("/ready") != 503; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(h.Http("/ready"), 503) << "one fatal error is enough";
  EXPECT_EQ(h.Http("/health"), 200);
  {
    // Readiness turns first, then the drain starts and the handler is called (server.cc): wait for it.
    std::unique_lock<std::mutex> lock(h.mu);
    for (int i = 0; i < 1000 && h.fatal_calls == 0; ++i) {
      lock.unlock();
      absl::SleepFor(absl::Milliseconds(2));
      lock.lock();
    }
    EXPECT_EQ(h.fatal_calls, 1);
    EXPECT_NE(h.fatal_status.message().find("illegal memory access"), std::string::npos) << h.fatal_status;
  }
  // Draining: new requests are refused as while shutting down.
  EXPECT_EQ(h.Generate().error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(h.server->WaitDrained(absl::Seconds(5)));
}

}  // namespace
}  // namespace sbserve
