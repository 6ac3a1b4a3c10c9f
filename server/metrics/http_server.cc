#include "server/metrics/http_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "server/metrics/text_format.h"

namespace sbserve::metrics {

class MetricsHttpServer::Impl {
 public:
  Impl(const Registry& registry, MetricsHttpServerOptions options)
      : registry_(registry), options_(std::move(options)) {}

  ~Impl() { Stop(); }

  absl::Status Start() {
    if (started_) return absl::FailedPreconditionError("metrics HTTP server already started");
    if (options_.tls_setup) {
      auto setup = options_.tls_setup;
      server_ = std::make_unique<httplib::SSLServer>([setup](SSL_CTX& ctx) { return setup(&ctx); });
    } else {
      server_ = std::make_unique<httplib::Server>();
    }
    if (!server_->is_valid()) return absl::InvalidArgumentError("metrics HTTP server: TLS setup failed");
    httplib::Server& srv = *server_;
    const int threads = options_.worker_threads > 0 ? options_.worker_threads : 1;
    srv.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    // One request per connection ("Connection: close"): an idle keep-alive connection would hold a
    // worker until its keep-alive timeout, and httplib 0.11 loses pipelined requests after the
    // first one, so closing at once is the honest answer to a pipelining client.
    srv.set_keep_alive_max_count(1);
    const int idle = options_.idle_timeout_s > 0 ? options_.idle_timeout_s : 1;
    srv.set_keep_alive_timeout(idle);
    // httplib's default also sets SO_REUSEPORT, which would let a second process bind the same
    // port and silently take half the scrapes and probes. SO_REUSEADDR alone still allows a quick
    // restart while old connections sit in TIME_WAIT.
    srv.set_socket_options([this](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
      listen_fd_ = sock;
    });
    srv.set_read_timeout(idle, 0);
    srv.set_write_timeout(idle, 0);
    srv.set_payload_max_length(64 << 10);  // GET only; nothing large is ever expected

    srv.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (options_.authorize_metrics && !options_.authorize_metrics(req.get_header_value("Authorization"))) {
        res.status = 401;
        res.set_header("WWW-Authenticate", "Bearer");
        res.set_content("API key required (Authorization: Bearer KEY)\n", "text/plain; charset=utf-8");
        return;
      }
      res.set_content(registry_.Serialize(), std::string(kTextContentType));
    });
    srv.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const bool live = !options_.live || options_.live();
      res.status = live ? 200 : 503;
      res.set_content(live ? "ok\n" : "not live\n", "text/plain; charset=utf-8");
    });
    srv.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
      const bool ready = !options_.ready || options_.ready();
      res.status = ready ? 200 : 503;
      res.set_content(ready ? "ready\n" : "not ready\n", "text/plain; charset=utf-8");
    });

    int bound = -1;
    if (options_.port == 0) {
      bound = srv.bind_to_any_port(options_.host);
    } else if (srv.bind_to_port(options_.host, options_.port)) {
      bound = options_.port;
    }
    if (bound <= 0) {
      return absl::UnavailableError(Cat("metrics HTTP server cannot bind ", options_.host,
                                                 ":", std::to_string(options_.port)));
    }
    // httplib 0.11 listens with a backlog of 5: a burst of connections (a scrape, probes and a few
    // idle clients at once) overflows it and the kernel drops SYNs, which clients only resend a
    // second later. listen() again on the bound socket raises the backlog.
    if (listen_fd_ >= 0) ::listen(listen_fd_, 1024);
    port_.store(bound);
    started_ = true;
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    // httplib's stop() only acts once the listen loop has marked itself running; waiting for that
    // here makes a Stop() right after Start() reliable. The loop starts within microseconds.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!srv.is_running()) {
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::InternalError("metrics HTTP server thread did not start");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return absl::OkStatus();
  }

  void Stop() {
    if (!started_) return;
    server_->stop();
    if (thread_.joinable()) thread_.join();
    started_ = false;
  }

  int port() const { return port_.load(); }
  bool running() const { return started_ && server_->is_running(); }

 private:
  const Registry& registry_;
  const MetricsHttpServerOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<int> port_{0};
  socket_t listen_fd_ = -1;
  std::atomic<bool> started_{false};  // read by running() from any thread
};

MetricsHttpServer::MetricsHttpServer(const Registry& registry, MetricsHttpServerOptions options)
    : impl_(std::make_unique<Impl>(registry, std::move(options))) {}

MetricsHttpServer::~MetricsHttpServer() = default;

absl::Status MetricsHttpServer::Start() { return impl_->Start(); }
void MetricsHttpServer::Stop() { impl_->Stop(); }
int MetricsHttpServer::port() const { return impl_->port(); }
bool MetricsHttpServer::running() const { return impl_->running(); }

}  // namespace sbserve::metrics
