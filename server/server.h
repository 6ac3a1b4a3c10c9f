// The sbserve process around the engine: gRPC server (service, health, reflection), metrics
// HTTP endpoint, model loading and the drain sequence.
//
// Lifecycle: Start() listens at once, live and not ready; LoadModel() builds the backend and the
// engine and turns ready; BeginDrain() turns not ready and refuses new requests; WaitDrained()
// lets in-flight requests finish; Shutdown() ends the rest and stops everything.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "server/options.h"

namespace sbserve {

// The service name whose health status is readiness ("" is liveness).
inline constexpr char kReadinessService[] = "sbserve.v1.SbServe";

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();  // Shutdown()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  absl::Status Start();
  absl::Status LoadModel();
  void BeginDrain();
  bool WaitDrained(absl::Duration timeout);  // true when nothing was left in flight
  void Shutdown();
  // Re-reads --tls-cert/--tls-key/--tls-client-ca (SIGHUP). New handshakes on both ports use
  // them within about a second; open connections and streams are untouched. On an error the
  // previous material stays. FAILED_PRECONDITION when TLS is off.
  absl::Status ReloadTls();

  int port() const;          // bound gRPC port
  int metrics_port() const;  // bound HTTP port; 0 when off
  int probe_port() const;    // bound open (plain, no key) HTTP port; 0 when off
  int http_port() const;     // bound OpenAI HTTP API port; 0 when off
  bool ready() const;
  // Called once, on an engine thread, when any engine's backend reports a fatal device error; the
  // server has then turned not ready and begun draining (every engine). The process should exit
  // non-zero after the drain.
  void SetFatalHandler(std::function<void(const absl::Status&)> handler);
  // How to talk to this server (printed at start-up).
  std::string Banner() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sbserve
