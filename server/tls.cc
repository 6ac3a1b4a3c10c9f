#include "server/tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace sbserve {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadAll(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, ": cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteAll(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
  return absl::OkStatus();
}

}  // namespace

struct TlsFiles::Parsed {
  X509* cert = nullptr;
  STACK_OF(X509)* chain = nullptr;  // intermediates after the leaf
  EVP_PKEY* key = nullptr;
  X509_STORE* ca = nullptr;
  ~Parsed() {
    if (cert != nullptr) X509_free(cert);
    if (chain != nullptr) sk_X509_pop_free(chain, X509_free);
    if (key != nullptr) EVP_PKEY_free(key);
    if (ca != nullptr) X509_STORE_free(ca);
  }
};

namespace {

std::shared_ptr<TlsFiles::Parsed> ParsePem(const std::string& cert_pem, const std::string& key_pem,
                                           const std::string& ca_pem);

}  // namespace

absl::Status ValidateTlsPem(const std::string& cert_pem, const std::string& key_pem, const std::string& ca_pem) {
  BIO* cb = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
  BIO_free(cb);
  if (cert == nullptr) return absl::InvalidArgumentError("--tls-cert: no PEM certificate");
  BIO* kb = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
  BIO_free(kb);
  if (key == nullptr) {
    X509_free(cert);
    return absl::InvalidArgumentError("--tls-key: no PEM private key");
  }
  const bool match = X509_check_private_key(cert, key) == 1;
  EVP_PKEY_free(key);
  X509_free(cert);
  if (!match) return absl::InvalidArgumentError("--tls-key does not belong to --tls-cert");
  if (!ca_pem.empty()) {
    BIO* ab = BIO_new_mem_buf(ca_pem.data(), static_cast<int>(ca_pem.size()));
    X509* ca = PEM_read_bio_X509(ab, nullptr, nullptr, nullptr);
    BIO_free(ab);
    if (ca == nullptr) return absl::InvalidArgumentError("--tls-client-ca: no PEM certificate");
    X509_free(ca);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TlsFiles>> TlsFiles::Create(std::string cert, std::string key, std::string client_ca) {
  std::unique_ptr<TlsFiles> t(new TlsFiles(std::move(cert), std::move(key), std::move(client_ca)));
  const char* tmp = getenv("TMPDIR");
  std::string tmpl = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/sbserve-tls-XXXXXX");
  if (mkdtemp(tmpl.data()) == nullptr) return absl::InternalError(absl::StrCat("cannot create ", tmpl));
  t->dir_ = tmpl;
  if (absl::Status s = t->Reload(); !s.ok()) return s;
  return t;
}

TlsFiles::~TlsFiles() {
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

absl::Status TlsFiles::Reload() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::string> cert = ReadAll(cert_, "--tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadAll(key_, "--tls-key");
  if (!key.ok()) return key.status();
  std::string ca;
  if (!client_ca_.empty()) {
    absl::StatusOr<std::string> c = ReadAll(client_ca_, "--tls-client-ca");
    if (!c.ok()) return c.status();
    ca = *std::move(c);
  }
  if (absl::Status s = ValidateTlsPem(*cert, *key, ca); !s.ok()) return s;
  const int gen = generation_ + 1;
  const fs::path gdir = fs::path(dir_) / absl::StrCat("g", gen);
  std::error_code ec;
  fs::create_directory(gdir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", gdir.string()));
  if (absl::Status s = WriteAll(gdir / "cert.pem", *cert); !s.ok()) return s;
  if (absl::Status s = WriteAll(gdir / "key.pem", *key); !s.ok()) return s;
  if (!ca.empty()) {
    if (absl::Status s = WriteAll(gdir / "ca.pem", ca); !s.ok()) return s;
  }
  // Atomic switch: a watcher sees either the old or the new generation, never a mix.
  const fs::path link = fs::path(dir_) / "current";
  const fs::path tmp_link = fs::path(dir_) / "current.tmp";
  fs::remove(tmp_link, ec);
  fs::create_directory_symlink(gdir.filename(), tmp_link, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot link ", tmp_link.string()));
  fs::rename(tmp_link, link, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot switch ", link.string()));
  parsed_ = ParsePem(*cert, *key, ca);
  // The generation before the previous one can no longer be in a watcher's hands.
  if (gen > 2) fs::remove_all(fs::path(dir_) / absl::StrCat("g", gen - 2), ec);
  generation_ = gen;
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> TlsFiles::GrpcCredentials() {
  const std::string cur = absl::StrCat(dir_, "/current/");
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      cur + "key.pem", cur + "cert.pem", mtls() ? cur + "ca.pem" : std::string(), /*refresh_interval_sec=*/1);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (mtls()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

namespace {

std::shared_ptr<TlsFiles::Parsed> ParsePem(const std::string& cert_pem, const std::string& key_pem,
                                           const std::string& ca_pem) {
  auto p = std::make_shared<TlsFiles::Parsed>();
  BIO* cb = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  p->cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
  p->chain = sk_X509_new_null();
  while (X509* extra = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr)) sk_X509_push(p->chain, extra);
  BIO_free(cb);
  BIO* kb = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  p->key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
  BIO_free(kb);
  if (p->cert == nullptr || p->key == nullptr) return nullptr;
  if (!ca_pem.empty()) {
    p->ca = X509_STORE_new();
    BIO* ab = BIO_new_mem_buf(ca_pem.data(), static_cast<int>(ca_pem.size()));
    while (X509* c = PEM_read_bio_X509(ab, nullptr, nullptr, nullptr)) {
      X509_STORE_add_cert(p->ca, c);
      X509_free(c);
    }
    BIO_free(ab);
  }
  return p;
}

}  // namespace

bool TlsFiles::SetupSslCtx(void* ctx_ptr) {
  SSL_CTX* ctx = static_cast<SSL_CTX*>(ctx_ptr);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
  if (mtls()) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  // Per handshake: install the current generation on the new connection.
  SSL_CTX_set_cert_cb(
      ctx,
      [](SSL* ssl, void* arg) -> int {
        auto* self = static_cast<TlsFiles*>(arg);
        std::shared_ptr<Parsed> p;
        {
          std::lock_guard<std::mutex> lock(self->mu_);
          p = self->parsed_;
        }
        if (p == nullptr) return 0;
        if (SSL_use_cert_and_key(ssl, p->cert, p->key, p->chain, 1) != 1) return 0;
        if (p->ca != nullptr && SSL_set1_verify_cert_store(ssl, p->ca) != 1) return 0;
        return 1;
      },
      this);
  return true;
}

}  // namespace sbserve
