// Cross-checks deploy/ against the code: the Grafana dashboard and the alert rules may only use
// metrics that ServingMetrics exports, and the Kubernetes manifests must agree with each other
// on ports, probes and shutdown timing.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "server/metrics/nvml_metrics.h"
#include "server/metrics/process_metrics.h"
#include "server/metrics/serving_metrics.h"
#include "tests/server/metrics/test_util.h"

namespace sbserve::metrics {
namespace {

std::string RepoFile(const std::string& relative) {
  return testing::ReadFile(std::string(SBSERVE_SOURCE_DIR) + "/" + relative);
}

// Every series name sbserve exposes (histograms with _bucket, _sum, _count): the serving set,
// the per-engine series, the process metrics, build info and, on the CUDA backend, the NVML gauges.
std::set<std::string> ExportedSeries() {
  Registry registry;
  EXPECT_TRUE(ServingMetrics::Create(registry).ok());
  EXPECT_TRUE(RegisterProcessMetrics(registry).ok());
  EXPECT_TRUE(RegisterBuildInfo(registry, {"0", "cpu", "none", "m"}).ok());
  // The per-engine series (data-parallel serving), with one engine's children so that they show.
  absl::StatusOr<EngineMetrics> engines = EngineMetrics::Create(registry);
  EXPECT_TRUE(engines.ok());
  if (engines.ok()) EXPECT_TRUE(engines->ForEngine("0", "cpu:0").ok());
  const std::string text = registry.Serialize();
  std::set<std::string> names;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    names.insert(line.substr(0, line.find_first_of("{ ")));
  }
  names.insert(NvmlMetricNames().begin(), NvmlMetricNames().end());
  return names;
}

std::set<std::string> ReferencedSeries(const std::string& text) {
  std::set<std::string> names;
  const std::regex ref("(sbserve|process)_[a-z0-9_]+");
  for (std::sregex_iterator it(text.begin(), text.end(), ref), end; it != end; ++it) {
    names.insert(it->str());
  }
  return names;
}

TEST(DeployDashboard, ParsesAndUsesOnlyExportedMetrics) {
  const std::string text = RepoFile("deploy/grafana/sbserve.json");
  ASSERT_FALSE(text.empty());
  const nlohmann::json dashboard = nlohmann::json::parse(text, nullptr, false);
  ASSERT_FALSE(dashboard.is_discarded()) << "deploy/grafana/sbserve.json is not valid JSON";
  EXPECT_EQ(dashboard.value("uid", ""), "sbserve-overview");
  ASSERT_TRUE(dashboard["panels"].is_array());

  const std::set<std::string> exported = ExportedSeries();
  std::set<int> ids;
  std::string all_exprs;
  int graph_panels = 0;
  for (const nlohmann::json& panel : dashboard["panels"]) {
    const int id = panel.value("id", -1);
    EXPECT_TRUE(ids.insert(id).second) << "duplicate panel id " << id;
    ASSERT_TRUE(panel.contains("gridPos")) << panel.value("title", "");
    if (panel.value("type", "") == "row") continue;
    ++graph_panels;
    ASSERT_TRUE(panel["targets"].is_array() && !panel["targets"].empty())
        << panel.value("title", "");
    for (const nlohmann::json& target : panel["targets"]) {
      const std::string expr = target.value("expr", "");
      EXPECT_FALSE(expr.empty()) << panel.value("title", "");
      all_exprs += expr + "\n";
    }
  }
  EXPECT_GE(graph_panels, 10);
  const std::set<std::string> used = ReferencedSeries(all_exprs);
  for (const std::string& name : used) {
    EXPECT_TRUE(exported.contains(name)) << "dashboard uses " << name << ", which is not exported";
  }
  // The key metrics of DESIGN.md section 4 are on the dashboard.
  for (const char* key : {"sbserve_time_to_first_token_seconds_bucket",
                          "sbserve_inter_token_latency_seconds_bucket",
                          "sbserve_kv_cache_usage_ratio", "sbserve_num_requests_running",
                          "sbserve_num_requests_waiting", "sbserve_generation_tokens_total",
                          "sbserve_request_rejected_total", "sbserve_engine_step_time_seconds_bucket",
                          "process_resident_memory_bytes", "process_cpu_seconds_total",
                          "process_open_fds", "process_start_time_seconds", "sbserve_build_info"}) {
    EXPECT_TRUE(used.contains(key)) << key << " missing from the dashboard";
  }
  for (const std::string& key : NvmlMetricNames()) {
    EXPECT_TRUE(used.contains(key)) << key << " missing from the dashboard";
  }
}

TEST(DeployAlerts, UseOnlyExportedMetrics) {
  const std::string rules = RepoFile("deploy/prometheus/alerts.yaml");
  ASSERT_FALSE(rules.empty());
  const std::set<std::string> exported = ExportedSeries();
  const std::set<std::string> used = ReferencedSeries(rules);
  EXPECT_GE(used.size(), 5u);
  for (const std::string& name : used) {
    EXPECT_TRUE(exported.contains(name)) << "alerts.yaml uses " << name << ", not exported";
  }
}

int FirstInt(const std::string& text, const std::string& pattern) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(pattern))) return -1;
  return std::stoi(m[1]);
}

TEST(DeployKubernetes, PortsProbesAndShutdownAgree) {
  const std::string deployment = RepoFile("deploy/k8s/deployment.yaml");
  const std::string service = RepoFile("deploy/k8s/service.yaml");
  ASSERT_FALSE(deployment.empty());
  ASSERT_FALSE(service.empty());

  const int grpc_port = FirstInt(deployment, R"(- --port=(\d+))");
  const int metrics_port = FirstInt(deployment, R"(- --metrics-port=(\d+))");
  EXPECT_EQ(grpc_port, 50051);
  EXPECT_EQ(metrics_port, 8080);
  EXPECT_EQ(FirstInt(deployment, R"(name: grpc\s+containerPort: (\d+))"), grpc_port);
  EXPECT_EQ(FirstInt(deployment, R"(name: http-metrics\s+containerPort: (\d+))"), metrics_port);
  EXPECT_EQ(FirstInt(deployment, R"re(prometheus.io/port: "(\d+)")re"), metrics_port);
  EXPECT_EQ(FirstInt(deployment, R"(livenessProbe:\s+grpc:\s+port: (\d+))"), grpc_port);
  EXPECT_EQ(FirstInt(deployment, R"(readinessProbe:\s+grpc:\s+port: (\d+))"), grpc_port);
  EXPECT_NE(deployment.find("service: sbserve.v1.SbServe"), std::string::npos);
  EXPECT_NE(deployment.find("nvidia.com/gpu"), std::string::npos);
  EXPECT_EQ(FirstInt(service, R"(name: grpc\s+port: (\d+))"), grpc_port);
  EXPECT_EQ(FirstInt(service, R"(name: http-metrics\s+port: (\d+))"), metrics_port);

  // The kubelet SIGKILLs at terminationGracePeriodSeconds, counted from the start of preStop:
  // it must cover the preStop sleep plus the whole drain.
  const int grace = FirstInt(deployment, R"(terminationGracePeriodSeconds: (\d+))");
  const int drain = FirstInt(deployment, R"(--drain-timeout=(\d+)s)");
  const int pre_stop = FirstInt(deployment, R"re(command: \["/bin/sleep", "(\d+)"\])re");
  ASSERT_GT(drain, 0);
  ASSERT_GE(pre_stop, 0);
  EXPECT_GT(grace, pre_stop + drain) << "grace " << grace << " s, preStop " << pre_stop
                                     << " s, drain " << drain << " s";

  // The ConfigMap that envFrom names exists.
  EXPECT_NE(deployment.find("name: sbserve-config"), std::string::npos);
  EXPECT_NE(RepoFile("deploy/k8s/configmap.yaml").find("name: sbserve-config"),
            std::string::npos);
}

TEST(DeployDockerfile, RuntimeStageMatchesTheManifests) {
  const std::string dockerfile = RepoFile("Dockerfile");
  ASSERT_FALSE(dockerfile.empty());
  const size_t runtime = dockerfile.find(" AS runtime");
  ASSERT_NE(runtime, std::string::npos) << "no runtime stage";
  const std::string runtime_stage = dockerfile.substr(runtime);
  // Only shared libraries in the runtime image, no headers or compilers.
  EXPECT_EQ(std::regex_search(runtime_stage, std::regex(R"(\blib[a-z0-9+.-]*-dev\b)")), false);
  EXPECT_EQ(runtime_stage.find("build-essential"), std::string::npos);
  EXPECT_NE(runtime_stage.find("EXPOSE 50051 8080"), std::string::npos);
  // Exec-form entrypoint: sbserve is PID 1 and gets SIGTERM itself (the drain depends on it).
  EXPECT_NE(runtime_stage.find("ENTRYPOINT [\"/usr/local/bin/sbserve\"]"), std::string::npos);
  EXPECT_NE(runtime_stage.find("\"--port=50051\""), std::string::npos);
  EXPECT_NE(runtime_stage.find("\"--metrics-port=8080\""), std::string::npos);
  // The image user is the one the Deployment's securityContext runs as.
  const std::string deployment = RepoFile("deploy/k8s/deployment.yaml");
  EXPECT_NE(runtime_stage.find("USER 10001"), std::string::npos);
  EXPECT_EQ(FirstInt(deployment, R"(runAsUser: (\d+))"), 10001);
}

// The image's runtime behaviour (tests/deploy/image_test.sh runs it) against the Deployment:
// the user and group, the ports the CMD binds, the probe endpoints the server serves, the cache
// directory the default start writes under readOnlyRootFilesystem, and the SIGTERM timing.
TEST(DeployKubernetes, ImageUserPortsProbesCacheAndShutdownAgree) {
  const std::string dockerfile = RepoFile("Dockerfile");
  const std::string deployment = RepoFile("deploy/k8s/deployment.yaml");
  const size_t runtime = dockerfile.find(" AS runtime");
  ASSERT_NE(runtime, std::string::npos);
  const std::string stage = dockerfile.substr(runtime);

  // User and group: the image's uid/gid 10001 is what the pod runs as, never root.
  EXPECT_EQ(FirstInt(stage, R"(groupadd [^\n]*--gid (\d+))"), 10001);
  EXPECT_EQ(FirstInt(stage, R"(useradd [^\n]*--uid (\d+))"), 10001);
  EXPECT_EQ(FirstInt(stage, R"(useradd [^\n]*--gid (\d+))"), 10001);
  EXPECT_EQ(FirstInt(stage, R"(\nUSER (\d+))"), 10001);
  EXPECT_EQ(FirstInt(deployment, R"(runAsGroup: (\d+))"), 10001);
  EXPECT_EQ(FirstInt(deployment, R"(fsGroup: (\d+))"), 10001);
  EXPECT_NE(deployment.find("runAsNonRoot: true"), std::string::npos);

  // Ports: what the image EXPOSEs and its CMD binds are the Deployment's container ports.
  const int grpc_port = FirstInt(deployment, R"(name: grpc\s+containerPort: (\d+))");
  const int metrics_port = FirstInt(deployment, R"(name: http-metrics\s+containerPort: (\d+))");
  EXPECT_EQ(FirstInt(stage, R"(\nEXPOSE (\d+))"), grpc_port);
  EXPECT_EQ(FirstInt(stage, R"(\nEXPOSE \d+ (\d+))"), metrics_port);
  EXPECT_EQ(FirstInt(stage, R"re("--port=(\d+)")re"), grpc_port);
  EXPECT_EQ(FirstInt(stage, R"re("--metrics-port=(\d+)")re"), metrics_port);

  // Probe endpoints: every httpGet path is one the metrics HTTP server registers, on its port.
  const std::string http_server = RepoFile("server/metrics/http_server.cc");
  ASSERT_FALSE(http_server.empty());
  const std::regex http_get(R"(httpGet:\s+path: (\S+)\s+port: (\S+))");
  int http_probes = 0;
  for (std::sregex_iterator it(deployment.begin(), deployment.end(), http_get), end; it != end; ++it) {
    ++http_probes;
    const std::string path = (*it)[1];
    const std::string port = (*it)[2];
    EXPECT_NE(http_server.find("Get(\"" + path + "\""), std::string::npos)
        << "probe path " << path << " is not served";
    EXPECT_TRUE(port == "http-metrics" || port == std::to_string(metrics_port)) << port;
  }
  EXPECT_GE(http_probes, 1);

  // Cache: the image's SBSERVE_CACHE_DIR is owned by the user, a VOLUME, and, with a read-only
  // root filesystem, an emptyDir mount in the Deployment.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(stage, m, std::regex(R"(SBSERVE_CACHE_DIR=(/\S+))")));
  const std::string cache_dir = m[1];
  EXPECT_NE(stage.find("VOLUME [\"" + cache_dir + "\"]"), std::string::npos) << cache_dir;
  EXPECT_NE(stage.find("-o 10001 -g 10001 " + cache_dir), std::string::npos) << cache_dir;
  EXPECT_NE(deployment.find("readOnlyRootFilesystem: true"), std::string::npos);
  ASSERT_TRUE(std::regex_search(
      deployment, m, std::regex(R"(- name: ([a-z0-9-]+)\s+mountPath: )" + cache_dir + R"(\s)")))
      << "no volume mounted at " << cache_dir;
  const std::string volume = m[1];
  const size_t volumes = deployment.rfind("\n      volumes:");
  ASSERT_NE(volumes, std::string::npos);
  EXPECT_TRUE(std::regex_search(deployment.substr(volumes),
                                std::regex(R"(- name: )" + volume + R"(\s+emptyDir:)")))
      << "volume " << volume << " is not an emptyDir";

  // SIGTERM timing: the drain the pod gets is its --drain-timeout flag, else sbserve's default
  // (the image's CMD and the ConfigMap leave it alone); the grace period must cover the preStop
  // sleep plus that drain.
  const std::string options = RepoFile("server/options.h");
  const int default_drain = FirstInt(options, R"(drain_timeout = absl::Seconds\((\d+)\))");
  ASSERT_GT(default_drain, 0) << "server/options.h: drain_timeout default not found";
  const int flag_drain = FirstInt(deployment, R"(--drain-timeout=(\d+)s)");
  const int drain = flag_drain > 0 ? flag_drain : default_drain;
  const int grace = FirstInt(deployment, R"(terminationGracePeriodSeconds: (\d+))");
  const int pre_stop = FirstInt(deployment, R"re(command: \["/bin/sleep", "(\d+)"\])re");
  EXPECT_GT(grace, pre_stop + drain);
  EXPECT_EQ(stage.find("\"--drain-timeout"), std::string::npos) << "the CMD sets a drain timeout";
  // Plain Docker: the stop timeout the k8s README recommends covers the image's default drain.
  EXPECT_GT(FirstInt(RepoFile("deploy/k8s/README.md"), R"(docker stop -t (\d+))"), default_drain);
  EXPECT_EQ(RepoFile("deploy/k8s/configmap.yaml").find("SBSERVE_DRAIN_TIMEOUT"), std::string::npos);
}

}  // namespace
}  // namespace sbserve::metrics
