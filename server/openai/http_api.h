// The OpenAI-compatible HTTP front door: POST /v1/completions, POST /v1/chat/completions,
// GET /v1/models, POST /tokenize, POST /detokenize, GET /health, GET /ready and GET /metrics on
// its own listener (--http-port), beside gRPC. Requests go to the same Engine through the same
// validation (server/convert.cc), admission, API keys, TLS material and metrics as gRPC.
//
// Threads: httplib serves each connection on one worker for the connection's life. A
// generation's handler submits its n engine requests and then waits for their events (engine
// thread -> mutex-guarded queue -> this worker); it never runs on the engine thread. While
// waiting it polls the connection every 50 ms, so a client that goes away is noticed without a
// write and its requests are aborted (Engine::Abort; their KV is freed at the next step).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "server/metrics/registry.h"
#include "server/openai/chat_template.h"
#include "server/service.h"

namespace sbserve::openai {

struct HttpApiOptions {
  std::string host = "0.0.0.0";
  int port = 0;  // 0: any free port
  std::string served_model_name = "sbserve";
  // One worker per open connection (httplib); more connections than this wait in the queue.
  int worker_threads = 256;
  int keep_alive_timeout_s = 5;  // an idle keep-alive connection is closed after this long
  int io_timeout_s = 60;         // reading a request, writing to a client that does not read
  size_t max_body_bytes = 64 << 20;  // larger bodies: 413
  // Set: HTTPS with this SSL_CTX* setup (as void*), the gRPC port's TLS material.
  std::function<bool(void* ssl_ctx)> tls_setup;
  std::function<bool()> ready;       // GET /ready
  bool metrics_need_key = false;     // GET /metrics needs an API key too (keys on, not --metrics-open)
};

class HttpApiServer {
 public:
  // `ctx` and `registry` must outlive this object.
  HttpApiServer(ServiceContext* ctx, metrics::Registry* registry, HttpApiOptions options);
  ~HttpApiServer();  // Stop()
  HttpApiServer(const HttpApiServer&) = delete;
  HttpApiServer& operator=(const HttpApiServer&) = delete;

  absl::Status Start();
  void Stop();
  int port() const;

  // The chat template, set while loading, before ctx->engine is published. Null: chat requests
  // get 400 with `why_none`.
  void SetChatTemplate(std::unique_ptr<ChatTemplate> chat_template, std::string why_none);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sbserve::openai
