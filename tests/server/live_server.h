// Pieces shared by the tests that run the real server in-process on loopback.
#pragma once

#include <cstdint>
#include <string>

#include "server/options.h"

namespace sbserve::testing {

// Both ports on 127.0.0.1, picked free (0); the CPU backend on 2 threads; no request log; a 64 MiB
// KV cache. Tests override what they are about.
inline ServerOptions LoopbackServerOptions() {
  ServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_host = "127.0.0.1";
  o.metrics_port = 0;
  o.http_host = "127.0.0.1";  // the OpenAI HTTP API stays off (-1) unless a test turns it on
  o.cpu_threads = 2;
  o.log_requests = false;
  o.engine.kv_cache_bytes = int64_t{64} << 20;
  return o;
}

// Value of one sample line ("name{labels} value") of a Prometheus text page; -1 when absent.
inline double MetricValue(const std::string& page, const std::string& series) {
  size_t at = 0;
  while ((at = page.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || page[at - 1] == '\n') return std::stod(page.substr(at + series.size() + 1));
    at += series.size();
  }
  return -1;
}

}  // namespace sbserve::testing
