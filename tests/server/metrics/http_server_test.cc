#include "server/metrics/http_server.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>

#include "server/metrics/serving_metrics.h"
#include "server/metrics/text_format.h"
#include "tests/server/metrics/test_util.h"

namespace sbserve::metrics {
namespace {

using testing::HttpGet;

TEST(MetricsHttpServer, ServesMetricsHealthAndReady) {
  Registry registry;
  auto tokens = registry.AddCounter("http_test_tokens", "Tokens.");
  ASSERT_TRUE(tokens.ok());
  (*tokens)->WithLabels({}).value()->Increment(17);
  std::atomic<bool> live{true};
  std::atomic<bool> ready{false};
  MetricsHttpServer server(registry, {.host = "127.0.0.1",
                                      .port = 0,
                                      .live = [&] { return live.load(); },
                                      .ready = [&] { return ready.load(); }});
  ASSERT_TRUE(server.Start().ok());
  ASSERT_GT(server.port(), 0);
  EXPECT_TRUE(server.running());

  std::string body, type;
  ASSERT_EQ(HttpGet(server.port(), "/metrics", &body, &type), 200);
  EXPECT_EQ(type, kTextContentType);
  EXPECT_EQ(body, registry.Serialize());
  EXPECT_NE(body.find("http_test_tokens_total 17\n"), std::string::npos);

  EXPECT_EQ(HttpGet(server.port(), "/health", &body), 200);
  EXPECT_EQ(HttpGet(server.port(), "/ready", &body), 503);
  ready.store(true);
  EXPECT_EQ(HttpGet(server.port(), "/ready", &body), 200);
  live.store(false);
  EXPECT_EQ(HttpGet(server.port(), "/health", &body), 503);
  EXPECT_EQ(HttpGet(server.port(), "/nope", &body), 404);

  const int port = server.port();
  const auto before = std::chrono::steady_clock::now();
  server.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::seconds(3));
  EXPECT_FALSE(server.running());
  EXPECT_EQ(HttpGet(port, "/health", &body), -1);
  server.Stop();  // idempotent
}

TEST(MetricsHttpServer, DefaultsToLiveAndReadyAndStopsRightAfterStart) {
  Registry registry;
  for (int i = 0; i < 5; ++i) {
    MetricsHttpServer server(registry, {.host = "127.0.0.1", .port = 0});
    ASSERT_TRUE(server.Start().ok());
    std::string body;
    if (i == 0) {
      EXPECT_EQ(HttpGet(server.port(), "/health", &body), 200);
      EXPECT_EQ(HttpGet(server.port(), "/ready", &body), 200);
    }
    server.Stop();
  }
}

TEST(MetricsHttpServer, ReportsABusyPortAndADoubleStart) {
  Registry registry;
  MetricsHttpServer first(registry, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(first.Start().ok());
  EXPECT_EQ(first.Start().code(), absl::StatusCode::kFailedPrecondition);
  MetricsHttpServer second(registry, {.host = "127.0.0.1", .port = first.port()});
  EXPECT_EQ(second.Start().code(), absl::StatusCode::kUnavailable);
}

// The full serving set, with data in every kind of series, scraped over HTTP and checked by
// Prometheus' own parser and linter.
TEST(MetricsHttpServer, PromtoolAcceptsTheScrape) {
  const std::string promtool = "/usr/bin/promtool";
  if (!testing::FileIsExecutable(promtool)) GTEST_SKIP() << promtool << " not installed";
  Registry registry;
  ServingMetrics m = ServingMetrics::Create(registry).value();
  m.num_requests_running->Set(3);
  m.SetKvCache(10, 64);
  m.prompt_tokens->Increment(512);
  m.generation_tokens->Increment(128);
  m.RequestSuccess(FinishReason::kStop).Increment();
  m.RequestRejected(RejectReason::kQueueFull).Increment();
  m.time_to_first_token->Observe(0.035);
  m.inter_token_latency->Observe(0.0042);
  m.engine_step_tokens->Observe(300);
  // Escaping checked by Prometheus' own parser, not only by our expectations.
  auto probe = registry.AddGauge("escape_probe", "Help with \\ and\nnewline and \"quotes\".",
                                 {"value"});
  ASSERT_TRUE(probe.ok());
  (*probe)->WithLabels({"C:\\path \"quoted\"\nsecond \xce\xbb"}).value()->Set(1);

  MetricsHttpServer server(registry, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(server.Start().ok());
  std::string body;
  ASSERT_EQ(HttpGet(server.port(), "/metrics", &body), 200);
  server.Stop();

  testing::TempDir dir;
  const std::string path = dir.path() + "/scrape.txt";
  testing::WriteFile(path, body);
  std::string output;
  const int rc = testing::RunCommand({promtool, "check", "metrics"}, path, &output);
  EXPECT_EQ(rc, 0) << output;
  // promtool prints lint findings (naming, units, missing help) even for parseable input.
  EXPECT_EQ(output, "") << output;
}

TEST(MetricsHttpServer, PromtoolRejectsBrokenText) {
  // Guards the test above: promtool must actually be checking what it is fed.
  const std::string promtool = "/usr/bin/promtool";
  if (!testing::FileIsExecutable(promtool)) GTEST_SKIP() << promtool << " not installed";
  testing::TempDir dir;
  const std::string path = dir.path() + "/broken.txt";
  testing::WriteFile(path, "# TYPE x counter\nx{a=\"unterminated} 1\n");
  std::string output;
  EXPECT_NE(testing::RunCommand({promtool, "check", "metrics"}, path, &output), 0) << output;
}

}  // namespace
}  // namespace sbserve::metrics
