// TLS and mTLS on the real server (gRPC and HTTP ports), with certificates made by the openssl
// command at test time: the right CA, a wrong CA, an expired certificate, a plaintext client,
// mTLS with and without a client certificate, and a SIGHUP-style reload under a live stream.
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "sbserve/v1/sbserve.grpc.pb.h"
#include "server/server.h"
#include "tests/server/live_server.h"

namespace sbserve {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A scratch directory of certificates: CAs and leaf certificates signed by them.
class Pki {
 public:
  Pki() {
    std::string tmpl = (fs::temp_directory_path() / "sbserve-tls-test-XXXXXX").string();
    EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  ~Pki() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  void Ca(const std::string& name) {
    Run(absl::StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ", name,
                     ".key -out ", name, ".pem -days 2 -subj /CN=", name));
  }
  // A leaf for localhost / 127.0.0.1 (server) or a client, valid for `days` (negative: expired).
  void Leaf(const std::string& name, const std::string& ca, int days, bool client = false) {
    Run(absl::StrCat("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ", name, ".key -out ",
                     name, ".csr -subj /CN=", client ? "test-client" : "localhost"));
    Run(absl::StrCat("printf '", client ? "extendedKeyUsage=clientAuth" : "subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth",
                     "\\n' > ", name, ".ext"));
    Run(absl::StrCat("openssl x509 -req -in ", name, ".csr -CA ", ca, ".pem -CAkey ", ca, ".key -CAcreateserial -out ",
                     name, ".pem -days ", days, " -extfile ", name, ".ext"));
  }

 private:
  void Run(const std::string& cmd) {
    const int rc = std::system(absl::StrCat("cd ", dir_, " && ", cmd, " >/dev/null 2>&1").c_str());
    ASSERT_EQ(rc, 0) << cmd;
  }
  std::string dir_;
};

ServerOptions TlsOptions(const Pki& pki, const std::string& leaf, const std::string& client_ca = "") {
  ServerOptions o = testing::LoopbackServerOptions();
  o.tls_cert = pki.Path(leaf + ".pem");
  o.tls_key = pki.Path(leaf + ".key");
  if (!client_ca.empty()) o.tls_client_ca = pki.Path(client_ca + ".pem");
  return o;
}

std::shared_ptr<grpc::Channel> TlsChannel(int port, const Pki& pki, const std::string& ca,
                                          const std::string& client = "") {
  grpc::SslCredentialsOptions so;
  so.pem_root_certs = Slurp(pki.Path(ca + ".pem"));
  if (!client.empty()) {
    so.pem_cert_chain = Slurp(pki.Path(client + ".pem"));
    so.pem_private_key = Slurp(pki.Path(client + ".key"));
  }
  grpc::ChannelArguments args;  // a fresh connection per channel, never a shared subchannel
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  return grpc::CreateCustomChannel(absl::StrCat("localhost:", port), grpc::SslCredentials(so), args);
}

grpc::Status Info(const std::shared_ptr<grpc::Channel>& ch) {
  auto stub = v1::SbServe::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::ServerInfo info;
  return stub->GetServerInfo(&ctx, {}, &info);
}

// HTTPS GET /health; -1 when no response (handshake refused).
int HttpsHealth(int port, const Pki& pki, const std::string& ca, const std::string& client = "") {
  std::unique_ptr<httplib::SSLClient> cli =
      client.empty() ? std::make_unique<httplib::SSLClient>("localhost", port)
                     : std::make_unique<httplib::SSLClient>("localhost", port, pki.Path(client + ".pem"),
                                                            pki.Path(client + ".key"));
  cli->set_ca_cert_path(pki.Path(ca + ".pem").c_str());
  cli->enable_server_certificate_verification(true);
  cli->set_connection_timeout(5, 0);
  cli->set_read_timeout(5, 0);
  auto res = cli->Get("/health");
  return res ? res->status : -1;
}

int PlainHealth(int port) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(5, 0);
  cli.set_read_timeout(5, 0);
  auto res = cli.Get("/health");
  return res ? res->status : -1;
}

TEST(Tls, RightCaWrongCaExpiredAndPlaintext) {
  Pki pki;
  pki.Ca("ca");
  pki.Ca("other");
  pki.Leaf("srv", "ca", 2);
  pki.Leaf("old", "ca", -1);
  {
    Server server(TlsOptions(pki, "srv"));
    ASSERT_TRUE(server.Start().ok());
    EXPECT_TRUE(Info(TlsChannel(server.port(), pki, "ca")).ok());
    const grpc::Status wrong = Info(TlsChannel(server.port(), pki, "other"));
    EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAVAILABLE) << wrong.error_message();
    const grpc::Status plain =
        Info(grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()), grpc::InsecureChannelCredentials()));
    EXPECT_EQ(plain.error_code(), grpc::StatusCode::UNAVAILABLE) << plain.error_message();

    EXPECT_EQ(HttpsHealth(server.metrics_port(), pki, "ca"), 200);
    EXPECT_EQ(HttpsHealth(server.metrics_port(), pki, "other"), -1);
    EXPECT_NE(PlainHealth(server.metrics_port()), 200);
  }
  {
    Server server(TlsOptions(pki, "old"));
    ASSERT_TRUE(server.Start().ok());
    const grpc::Status expired = Info(TlsChannel(server.port(), pki, "ca"));
    EXPECT_EQ(expired.error_code(), grpc::StatusCode::UNAVAILABLE) << expired.error_message();
    EXPECT_EQ(HttpsHealth(server.metrics_port(), pki, "ca"), -1);
  }
  // A key that does not belong to the certificate is refused at start.
  ServerOptions bad = TlsOptions(pki, "srv");
  bad.tls_key = pki.Path("old.key");
  Server server(bad);
  EXPECT_FALSE(server.Start().ok());
}

TEST(Tls, MutualTlsRequiresAClientCertificateFromTheClientCa) {
  Pki pki;
  pki.Ca("ca");
  pki.Ca("clients");
  pki.Ca("rogue");
  pki.Leaf("srv", "ca", 2);
  pki.Leaf("alice", "clients", 2, /*client=*/true);
  pki.Leaf("mallory", "rogue", 2, /*client=*/true);
  Server server(TlsOptions(pki, "srv", "clients"));
  ASSERT_TRUE(server.Start().ok());
  EXPECT_TRUE(Info(TlsChannel(server.port(), pki, "ca", "alice")).ok());
  EXPECT_FALSE(Info(TlsChannel(server.port(), pki, "ca")).ok());             // no client certificate
  EXPECT_FALSE(Info(TlsChannel(server.port(), pki, "ca", "mallory")).ok());  // signed by another CA
  EXPECT_EQ(HttpsHealth(server.metrics_port(), pki, "ca", "alice"), 200);
  EXPECT_EQ(HttpsHealth(server.metrics_port(), pki, "ca"), -1);
  EXPECT_EQ(HttpsHealth(server.metrics_port(), pki, "ca", "mallory"), -1);
}

// ReloadTls (SIGHUP) switches both ports to new certificates for new connections while a stream
// opened before keeps going to its normal end.
TEST(Tls, ReloadSwitchesCertificatesWithoutDroppingLiveStreams) {
  Pki pki;
  pki.Ca("ca1");
  pki.Ca("ca2");
  pki.Leaf("a", "ca1", 2);
  pki.Leaf("b", "ca2", 2);
  fs::copy_file(pki.Path("a.pem"), pki.Path("live.pem"));
  fs::copy_file(pki.Path("a.key"), pki.Path("live.key"));
  Server server(TlsOptions(pki, "live"));
  ASSERT_TRUE(server.Start().ok());
  ASSERT_TRUE(server.LoadModel().ok());

  auto stub = v1::SbServe::NewStub(TlsChannel(server.port(), pki, "ca1"));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  v1::GenerateRequest req;
  req.set_text("a stream across a certificate reload");
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stopping()->set_max_tokens(300);
  req.mutable_stopping()->set_ignore_eos(true);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  uint32_t tokens = msg.token_ids_size();

  fs::copy_file(pki.Path("b.pem"), pki.Path("live.pem"), fs::copy_options::overwrite_existing);
  fs::copy_file(pki.Path("b.key"), pki.Path("live.key"), fs::copy_options::overwrite_existing);
  ASSERT_TRUE(server.ReloadTls().ok());
  bool switched = false;
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end && !switched;) {
    switched = Info(TlsChannel(server.port(), pki, "ca2")).ok();
    if (!switched) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(switched);
  EXPECT_FALSE(Info(TlsChannel(server.port(), pki, "ca1")).ok());
  EXPECT_EQ(HttpsHealth(server.metrics_port(), pki, "ca2"), 200);
  EXPECT_EQ(HttpsHealth(server.metrics_port(), pki, "ca1"), -1);

  while (reader->Read(&msg)) tokens += msg.token_ids_size();
  const grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(tokens, 300u);
  EXPECT_EQ(msg.finish_reason(), v1::FINISH_REASON_LENGTH);

  // Broken files on reload keep the current certificates.
  std::ofstream(pki.Path("live.key")) << "not a key";
  EXPECT_FALSE(server.ReloadTls().ok());
  EXPECT_TRUE(Info(TlsChannel(server.port(), pki, "ca2")).ok());
}

}  // namespace
}  // namespace sbserve
