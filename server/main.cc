// sbserve: the model server binary. `sbserve --help` lists every flag and environment variable.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <span>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "engine/backend.h"
#include "server/options.h"
#include "server/server.h"
#include "spdlog/spdlog.h"

namespace {

// Testing only (SBSERVE_TEST_FATAL_TOKEN=ID): a step whose batch holds token ID at position 1 of
// a sequence fails with a fatal device error, as a sticky CUDA error would. It lets a test drive
// the real binary through the fatal path (drain, exit 3) without breaking a GPU.
class FatalTokenBackend final : public sbserve::ForwardingBackend {
 public:
  FatalTokenBackend(std::unique_ptr<sbserve::Backend> inner, int32_t token)
      : ForwardingBackend(std::move(inner)), token_(token) {}
  absl::Status Forward(const sbserve::Batch& batch, std::span<float> logits) override {
    for (size_t t = 0; t < batch.tokens.size(); ++t) {
      if (batch.tokens[t] == token_ && batch.positions[t] == 1) {
        return sbserve::MarkFatalBackendError(absl::InternalError("injected fatal device error (SBSERVE_TEST_FATAL_TOKEN)"));
      }
    }
    return ForwardingBackend::Forward(batch, logits);
  }

 private:
  int32_t token_;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool help = false;
  absl::StatusOr<sbserve::ServerOptions> options = sbserve::ParseServerOptions(args, &help);
  if (help) {
    std::cout << sbserve::ServerUsage();
    return 0;
  }
  if (!options.ok()) {
    std::cerr << "sbserve: " << options.status().message() << "\n";
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(options->log_level));
  if (const char* v = std::getenv("SBSERVE_TEST_FATAL_TOKEN"); v != nullptr) {
    int32_t token = 0;
    if (absl::SimpleAtoi(v, &token)) {
      spdlog::warn("SBSERVE_TEST_FATAL_TOKEN={}: a step with that token at position 1 fails as a fatal device error", token);
      options->wrap_backend = [token](std::unique_ptr<sbserve::Backend> b) -> std::unique_ptr<sbserve::Backend> {
        return std::make_unique<FatalTokenBackend>(std::move(b), token);
      };
    }
  }

  // Signals go to one waiting thread, never to a thread inside gRPC or the engine.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  sbserve::Server server(*options);
  if (absl::Status s = server.Start(); !s.ok()) {
    spdlog::error("start failed: {}", s.ToString());
    return 1;
  }
  std::cout << server.Banner() << std::flush;

  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  int exit_code = 0;
  // A fatal device error: the server has turned not ready and stopped admitting; drain what is in
  // flight and exit non-zero so that the orchestrator restarts the process.
  server.SetFatalHandler([&](const absl::Status& s) {
    spdlog::critical("fatal backend error, draining and exiting: {}", s.ToString());
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
    exit_code = 3;
    cv.notify_all();
  });
  // The signal thread is joined before the server goes: main wakes it with a SIGTERM of its own
  // (exiting set) when no signal ended the run, so that no late signal reaches a stopped server.
  std::atomic<bool> exiting{false};
  std::thread signal_thread([&] {
    int sig = 0;
    for (;;) {
      sigwait(&signals, &sig);
      if (exiting.load()) return;
      if (sig != SIGHUP) break;
      // SIGHUP: re-read the TLS files; live connections and streams are untouched.
      if (absl::Status s = server.ReloadTls(); s.ok()) {
        spdlog::info("received SIGHUP; TLS certificates reloaded");
      } else {
        spdlog::warn("received SIGHUP; TLS reload failed, keeping the previous certificates: {}", s.ToString());
      }
    }
    spdlog::info("received {}; draining (readiness NOT_SERVING, new requests UNAVAILABLE)",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server.BeginDrain();
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
    cv.notify_all();
  });
  auto join_signal_thread = [&] {
    exiting.store(true);
    pthread_kill(signal_thread.native_handle(), SIGTERM);  // ESRCH when it already ended: fine
    signal_thread.join();
  };

  if (absl::Status s = server.LoadModel(); !s.ok()) {
    spdlog::error("model load failed: {}", s.ToString());
    join_signal_thread();
    server.Shutdown();
    return 1;
  }
  if (server.ready()) std::cout << "sbserve ready" << std::endl;

  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stop; });
  }
  const absl::Time t0 = absl::Now();
  const bool drained = server.WaitDrained(options->drain_timeout);
  spdlog::info("drain {} after {}", drained ? "complete" : "timed out; cancelling what is left",
               absl::FormatDuration(absl::Now() - t0));
  join_signal_thread();
  server.Shutdown();
  spdlog::info("sbserve stopped");
  return exit_code;
}
