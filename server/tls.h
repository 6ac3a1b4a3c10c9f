// TLS material for the gRPC port, reloadable without dropping connections.
//
// The configured PEM files are validated (the key matches the certificate, the CA bundle parses)
// and copied into a private directory, generation by generation, behind a symlink `current`
// that is swapped atomically. gRPC's FileWatcherCertificateProvider watches `current/*` once a
// second, so Reload() (SIGHUP) reaches new handshakes within about a second, while established
// connections and their streams keep the keys they were set up with. A file changed on disk
// without SIGHUP is not picked up, and a Reload() with broken files keeps the old ones.
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"

namespace sbserve {

class TlsFiles {
 public:
  // `client_ca` may be empty (no client certificates requested).
  static absl::StatusOr<std::unique_ptr<TlsFiles>> Create(std::string cert, std::string key, std::string client_ca);
  ~TlsFiles();  // removes the private directory
  TlsFiles(const TlsFiles&) = delete;
  TlsFiles& operator=(const TlsFiles&) = delete;

  // Re-reads the configured files. On an error the previous material stays in use.
  absl::Status Reload();
  // TLS server credentials over the watched copies (mTLS when a client CA was given).
  std::shared_ptr<grpc::ServerCredentials> GrpcCredentials();
  bool mtls() const { return !client_ca_.empty(); }
  // Sets up an OpenSSL SSL_CTX (passed as void*) for the HTTP port: every handshake takes the
  // current certificate, key and client CA, so Reload() reaches it too. Returns false on error.
  bool SetupSslCtx(void* ssl_ctx);

  struct Parsed;  // OpenSSL objects of one generation (tls.cc)

 private:
  TlsFiles(std::string cert, std::string key, std::string client_ca)
      : cert_(std::move(cert)), key_(std::move(key)), client_ca_(std::move(client_ca)) {}

  std::string cert_, key_, client_ca_;
  std::string dir_;  // private copies
  std::mutex mu_;
  int generation_ = 0;
  std::shared_ptr<Parsed> parsed_;  // the current generation for the HTTP port, guarded by mu_
};

// Checks PEM material: the certificate chain parses, the key parses and belongs to the first
// certificate, the CA bundle (if any) holds at least one certificate.
absl::Status ValidateTlsPem(const std::string& cert_pem, const std::string& key_pem, const std::string& ca_pem);

}  // namespace sbserve
