// Starts a real Prometheus server on loopback, points it at our /metrics endpoint and reads the
// scraped values back through Prometheus' HTTP query API.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "server/metrics/http_server.h"
#include "server/metrics/serving_metrics.h"
#include "tests/server/metrics/test_util.h"

namespace sbserve::metrics {
namespace {

constexpr char kPrometheus[] = "/usr/bin/prometheus";

// Runs an instant query; returns the single sample's value, or nullopt if the query failed or
// returned no series yet. `series_count` receives how many series matched.
std::optional<double> QueryScalar(int port, const std::string& promql, size_t* series_count) {
  std::string encoded;
  for (const unsigned char c : promql) {
    if (std::isalnum(c) || c == '_' || c == ':' || c == '.' || c == '-') {
      encoded += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof(buf), "%%%02X", c);
      encoded += buf;
    }
  }
  std::string body;
  if (testing::HttpGet(port, "/api/v1/query?query=" + encoded, &body) != 200) return std::nullopt;
  const nlohmann::json reply = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (reply.is_discarded() || reply.value("status", "") != "success") return std::nullopt;
  const nlohmann::json& result = reply["data"]["result"];
  if (series_count) *series_count = result.size();
  if (!result.is_array() || result.size() != 1) return std::nullopt;
  // An instant vector sample is [unix_time, "value"].
  return std::stod(result[0]["value"][1].get<std::string>());
}

TEST(PrometheusScrape, RealPrometheusScrapesOurEndpoint) {
  if (!testing::FileIsExecutable(kPrometheus)) GTEST_SKIP() << kPrometheus << " not installed";

  Registry registry;
  ServingMetrics m = ServingMetrics::Create(registry).value();
  m.prompt_tokens->Increment(4242);
  m.RequestSuccess(FinishReason::kLength).Increment(3);
  for (double v : {0.0003, 0.004, 0.004, 0.09}) m.inter_token_latency->Observe(v);
  // A label value with every character the text format escapes, plus UTF-8.
  const std::string tricky = "C:\\path \"quoted\"\nsecond line \xce\xbb";
  auto probe = registry.AddGauge("escape_probe", "Help with \\ and\nnewline.", {"value"});
  ASSERT_TRUE(probe.ok());
  (*probe)->WithLabels({tricky}).value()->Set(5);
  MetricsHttpServer server(registry, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(server.Start().ok());

  testing::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string config_path = dir.path() + "/prometheus.yml";
  testing::WriteFile(config_path,
                     "global:\n"
                     "  scrape_interval: 1s\n"
                     "  evaluation_interval: 1s\n"
                     "scrape_configs:\n"
                     "  - job_name: sbserve\n"
                     "    scrape_interval: 1s\n"
                     "    scrape_timeout: 1s\n"
                     "    static_configs:\n"
                     "      - targets: ['127.0.0.1:" +
                         std::to_string(server.port()) + "']\n");

  // Prometheus needs a fixed listen port; retry with another if the one picked gets taken.
  std::unique_ptr<testing::Subprocess> prometheus;
  int prom_port = -1;
  const std::string log_path = dir.path() + "/prometheus.log";
  for (int attempt = 0; attempt < 3 && !prometheus; ++attempt) {
    prom_port = testing::PickFreePort();
    ASSERT_GT(prom_port, 0);
    auto process = std::make_unique<testing::Subprocess>(
        std::vector<std::string>{kPrometheus, "--config.file=" + config_path,
                                 "--storage.tsdb.path=" + dir.path() + "/data",
                                 "--web.listen-address=127.0.0.1:" + std::to_string(prom_port),
                                 "--log.level=warn"},
        log_path);
    ASSERT_TRUE(process->started());
    // Ready once the HTTP API answers; stop early if the process died (e.g. port taken).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    std::string body;
    while (std::chrono::steady_clock::now() < deadline && !process->Poll()) {
      if (testing::HttpGet(prom_port, "/-/ready", &body) == 200) {
        prometheus = std::move(process);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  ASSERT_TRUE(prometheus) << "prometheus did not start:\n" << testing::ReadFile(log_path);

  // Wait (bounded) for the first successful scrape of our target.
  std::optional<double> up;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    up = QueryScalar(prom_port, "up{job=\"sbserve\"}", nullptr);
    if (up && *up == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_TRUE(up.has_value() && *up == 1)
      << "target never came up; prometheus log:\n" << testing::ReadFile(log_path);

  size_t series = 0;
  EXPECT_EQ(QueryScalar(prom_port, "sbserve_prompt_tokens_total", &series), 4242);
  EXPECT_EQ(QueryScalar(prom_port, "sbserve_request_success_total{finished_reason=\"length\"}",
                        nullptr),
            3);
  EXPECT_EQ(QueryScalar(prom_port, "count(sbserve_request_success_total)", nullptr), 6);
  EXPECT_EQ(QueryScalar(prom_port,
                        "sbserve_inter_token_latency_seconds_bucket{le=\"0.005\"}", nullptr),
            3);
  EXPECT_EQ(QueryScalar(prom_port, "sbserve_inter_token_latency_seconds_count", nullptr), 4);
  // The escaped label value arrives in Prometheus byte for byte.
  std::string series_body;
  ASSERT_EQ(testing::HttpGet(prom_port, "/api/v1/series?match%5B%5D=escape_probe", &series_body),
            200);
  const nlohmann::json series_reply = nlohmann::json::parse(series_body, nullptr, false);
  ASSERT_FALSE(series_reply.is_discarded()) << series_body;
  ASSERT_EQ(series_reply["data"].size(), 1u) << series_body;
  EXPECT_EQ(series_reply["data"][0]["value"].get<std::string>(), tricky);

  // Prometheus stored the families with the types we declared.
  std::string body;
  ASSERT_EQ(testing::HttpGet(prom_port, "/api/v1/metadata?metric=sbserve_engine_step_time_seconds",
                             &body),
            200);
  const nlohmann::json metadata = nlohmann::json::parse(body, nullptr, false);
  ASSERT_FALSE(metadata.is_discarded()) << body;
  EXPECT_EQ(metadata["data"]["sbserve_engine_step_time_seconds"][0]["type"], "histogram") << body;

  // Values move when the server updates them: the next scrapes see the new count.
  m.prompt_tokens->Increment(8);
  std::optional<double> updated;
  const auto update_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < update_deadline) {
    updated = QueryScalar(prom_port, "sbserve_prompt_tokens_total", nullptr);
    if (updated && *updated == 4250) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(updated, 4250);

  EXPECT_EQ(prometheus->Terminate(), 0) << testing::ReadFile(log_path);
  server.Stop();
}

}  // namespace
}  // namespace sbserve::metrics
