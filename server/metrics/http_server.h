// The operations HTTP endpoint: GET /metrics (Prometheus text format 0.0.4), GET /health
// (liveness) and GET /ready (readiness), for scrapers and plain HTTP probes.
//
// Robust to idle, slow and pipelining clients within the library's limits: every response ends
// its connection ("Connection: close"), so an idle keep-alive client holds no worker; a
// connection that sends nothing is closed after idle_timeout_s; a pool of worker_threads keeps
// probes answered while that many minus one connections are slow. httplib 0.11 reads ahead and
// drops bytes past the first request, so of pipelined requests only the first is answered and the
// connection is then closed at once (a compliant client retries the rest).
//
//   MetricsHttpServer http(registry, {.host = "0.0.0.0", .port = 8080,
//                                     .live = [&] { return true; },
//                                     .ready = [&] { return serving.load(); }});
//   if (absl::Status s = http.Start(); !s.ok()) ...
//   LOG << "metrics on port " << http.port();
//   ...
//   http.Stop();
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "server/metrics/registry.h"

namespace sbserve::metrics {

struct MetricsHttpServerOptions {
  std::string host = "0.0.0.0";
  int port = 8080;  // 0 picks a free port; read it back with port()
  // Probe callbacks, called on HTTP worker threads (make them cheap and thread-safe).
  // An empty function counts as "true".
  std::function<bool()> live;   // GET /health: 200 "ok" when true, 503 otherwise
  std::function<bool()> ready;  // GET /ready: 200 "ready" when true, 503 otherwise
  // httplib (0.11) serves each connection on one worker thread for the connection's whole life,
  // so the pool must outnumber the idle and slow connections a probe may have to get past;
  // the threads sleep in poll() and cost only their stacks.
  int worker_threads = 128;
  // How long a connection may stay open without sending a request; also the per-read and
  // per-write timeout. A slow-loris client holds a worker for at most this long per byte.
  int idle_timeout_s = 1;
  // Set: HTTPS. Called once with the OpenSSL SSL_CTX* (as void*) to install certificates and
  // verification; false fails Start().
  std::function<bool(void* ssl_ctx)> tls_setup;
  // Set: GET /metrics needs an `Authorization` header this accepts (401 otherwise). /health and
  // /ready stay open for probes.
  std::function<bool(const std::string& authorization)> authorize_metrics;
};

class MetricsHttpServer {
 public:
  // `registry` must outlive this object.
  MetricsHttpServer(const Registry& registry, MetricsHttpServerOptions options);
  ~MetricsHttpServer();  // Stops the server if running.
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds host:port and starts serving on a background thread; returns once requests are
  // accepted. UNAVAILABLE when the address cannot be bound, FAILED_PRECONDITION if started twice.
  absl::Status Start();
  // Stops accepting, finishes requests in progress and joins the thread. Idempotent. Start and
  // Stop are meant for one controlling thread; port() and running() may be called from any.
  void Stop();
  // The bound port (the chosen one when options.port was 0); 0 before Start.
  int port() const;
  bool running() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sbserve::metrics
