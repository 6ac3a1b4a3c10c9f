// Every setting of sbserve, from command-line flags and SBSERVE_* environment variables.
// A flag beats its environment variable, which beats the default. `sbserve --help` prints the
// table; the README's "Flags" section documents it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/backend.h"
#include "engine/engine.h"

namespace sbserve {

struct ServerOptions {
  std::string model;              // checkpoint directory; empty: the demo model
  std::string host = "0.0.0.0";
  int port = 50051;               // 0: pick a free port
  std::string metrics_host = "0.0.0.0";
  int metrics_port = 8080;        // 0: pick a free port; -1: no HTTP endpoint
  int probe_port = -1;            // open /health, /ready, /metrics: plain HTTP, no key; -1: off
  std::string backend = "auto";   // auto | cpu | cuda
  int device = 0;
  // Data-parallel serving: "" (one engine on --device), "all" or "0,1,..." (one engine per CUDA
  // device), "cpu:N" (N engines on the CPU backend). See ParseDevices.
  std::string devices;
  double affinity_slack = 0.05;  // EnginePoolOptions::affinity_slack
  int cpu_threads = 0;
  // Batch-invariant CUDA engines (CudaBackendOptions::deterministic); a model's config.json can
  // also ask for it ("deterministic": true). The CPU backend is batch-invariant already.
  bool deterministic = false;
  EngineOptions engine;
  absl::Duration drain_timeout = absl::Seconds(30);
  absl::Duration load_delay = absl::ZeroDuration();  // testing: hold the loading state this long
  std::string log_level = "info";
  bool log_requests = true;
  int max_message_bytes = 64 << 20;
  // Testing: wraps each backend the server builds, one per engine in engine order (fault
  // injection in tests); null in production.
  std::function<std::unique_ptr<Backend>(std::unique_ptr<Backend>)> wrap_backend;
  // TLS on the gRPC and HTTP ports when both are set (PEM files); re-read on SIGHUP.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;  // set: mTLS, a client certificate signed by this CA is required
  std::string api_keys_file;  // set: every sbserve.v1 RPC needs `authorization: Bearer KEY`
  bool metrics_open = false;  // with API keys: GET /metrics without a key (probes are always open)
  // The OpenAI-compatible HTTP API (server/openai/): its own listener, off by default.
  std::string http_host = "0.0.0.0";
  int http_port = -1;               // 0: pick a free port; -1: off
  int http_threads = 256;           // HTTP connections served at once
  std::string served_model_name;    // model id on the HTTP API; empty: the checkpoint directory's name
  std::string chat_template;        // Jinja file; empty: tokenizer_config.json's chat_template
};

// --devices, parsed: `all` (every CUDA device), the listed CUDA ordinals, or `cpu_engines` engines
// on the CPU backend; nothing set for "" (one engine, --device).
struct DeviceList {
  bool all = false;
  std::vector<int> cuda;
  int cpu_engines = 0;
};
absl::StatusOr<DeviceList> ParseDevices(const std::string& value);

// Parses args (argv without the program name) over the environment. `help` is set when --help
// was given; the returned options are then the defaults.
absl::StatusOr<ServerOptions> ParseServerOptions(const std::vector<std::string>& args, bool* help);
std::string ServerUsage();

}  // namespace sbserve
