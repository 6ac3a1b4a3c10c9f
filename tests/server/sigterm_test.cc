// The real sbserve binary as a subprocess: start-up states, SIGTERM drain with streams in flight,
// and the drain timeout.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "sbserve/v1/sbserve.grpc.pb.h"

namespace {

using grpc::health::v1::HealthCheckResponse;

class Process {
 public:
  explicit Process(std::vector<std::string> args) {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> argv;
      static std::string bin = SBSERVE_BINARY;
      argv.push_back(bin.data());
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
    close(fds[1]);
    out_ = fdopen(fds[0], "r");
  }
  ~Process() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ != nullptr) fclose(out_);
  }

  // Reads stdout lines until one contains `needle`; returns that line ("" at EOF).
  std::string WaitFor(const std::string& needle) {
    char buf[4096];
    while (fgets(buf, sizeof buf, out_) != nullptr) {
      std::string line(buf);
      if (line.find(needle) != std::string::npos) return line;
    }
    return "";
  }

  void Signal(int sig) { kill(pid_, sig); }

  // Exit code, or -1 when it did not exit within `timeout_s` (or died from a signal).
  int Wait(double timeout_s) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  bool reaped_ = false;
};

// Starts sbserve on a free port; returns the port (0 on failure).
int StartServer(Process& p) {
  const std::string line = p.WaitFor("listening on");
  const size_t colon = line.find(':', line.find("listening on"));
  if (colon == std::string::npos) return 0;
  return std::atoi(line.c_str() + colon + 1);
}

std::vector<std::string> BaseArgs() {
  return {"--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--cpu-threads", "2", "--kv-cache-mb", "64"};
}

HealthCheckResponse::ServingStatus Health(const std::shared_ptr<grpc::Channel>& ch, const std::string& svc) {
  auto stub = grpc::health::v1::Health::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(svc);
  HealthCheckResponse resp;
  if (!stub->Check(&ctx, req, &resp).ok()) return HealthCheckResponse::UNKNOWN;
  return resp.status();
}

sbserve::v1::GenerateRequest Req(int max_tokens) {
  sbserve::v1::GenerateRequest r;
  r.set_text("drain test prompt");
  r.mutable_sampling()->set_temperature(0);
  r.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(max_tokens));
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

TEST(Sbserve, LoadingThenServing) {
  std::vector<std::string> args = BaseArgs();
  args.insert(args.end(), {"--load-delay", "1s"});
  Process p(args);
  const int port = StartServer(p);
  ASSERT_GT(port, 0);
  auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  EXPECT_EQ(Health(ch, ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health(ch, "sbserve.v1.SbServe"), HealthCheckResponse::NOT_SERVING);
  ASSERT_NE(p.WaitFor("sbserve ready"), "");
  EXPECT_EQ(Health(ch, "sbserve.v1.SbServe"), HealthCheckResponse::SERVING);
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(30), 0);
}

TEST(Sbserve, SigtermDrainsStreamsInFlightAndExitsZero) {
  Process p(BaseArgs());
  const int port = StartServer(p);
  ASSERT_GT(port, 0);
  ASSERT_NE(p.WaitFor("sbserve ready"), "");
  auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  auto stub = sbserve::v1::SbServe::NewStub(ch);

  constexpr int kStreams = 4;
  constexpr int kTokens = 600;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<sbserve::v1::GenerateResponse>>> readers;
  std::vector<int> got(kStreams, 0);
  for (int i = 0; i < kStreams; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub->Generate(ctxs.back().get(), Req(kTokens)));
    sbserve::v1::GenerateResponse msg;
    ASSERT_TRUE(readers.back()->Read(&msg));
    got[i] += msg.token_ids_size();
  }
  p.Signal(SIGTERM);
  // Readiness drops at once; liveness stays; new work is refused.
  HealthCheckResponse::ServingStatus ready = HealthCheckResponse::SERVING;
  for (int i = 0; i < 200 && ready == HealthCheckResponse::SERVING; ++i) {
    ready = Health(ch, "sbserve.v1.SbServe");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(ready, HealthCheckResponse::NOT_SERVING);
  {
    grpc::ClientContext ctx;
    auto r = stub->Generate(&ctx, Req(3));
    sbserve::v1::GenerateResponse msg;
    while (r->Read(&msg)) {
    }
    EXPECT_EQ(r->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  // Every stream in flight completes in full.
  for (int i = 0; i < kStreams; ++i) {
    sbserve::v1::GenerateResponse msg;
    while (readers[i]->Read(&msg)) got[i] += msg.token_ids_size();
    grpc::Status st = readers[i]->Finish();
    EXPECT_TRUE(st.ok()) << i << ": " << st.error_message();
    EXPECT_EQ(got[i], kTokens) << i;
  }
  EXPECT_EQ(p.Wait(30), 0);
}

TEST(Sbserve, DrainTimeoutCancelsWhatIsLeftAndExitsZero) {
  std::vector<std::string> args = BaseArgs();
  args.insert(args.end(), {"--drain-timeout", "300ms"});
  Process p(args);
  const int port = StartServer(p);
  ASSERT_GT(port, 0);
  ASSERT_NE(p.WaitFor("sbserve ready"), "");
  auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  auto stub = sbserve::v1::SbServe::NewStub(ch);
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, Req(2000));
  sbserve::v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  int got = msg.token_ids_size();
  const auto t0 = std::chrono::steady_clock::now();
  p.Signal(SIGTERM);
  while (reader->Read(&msg)) got += msg.token_ids_size();
  // What the drain timeout leaves is ended UNAVAILABLE (README: --drain-timeout), so clients
  // retry elsewhere.
  grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_LT(got, 2000);
  EXPECT_EQ(p.Wait(30), 0);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
}

// A fatal device error in the real binary (injected: SBSERVE_TEST_FATAL_TOKEN, see server/main.cc):
// the request in flight ends with an error, readiness turns NOT_SERVING, the server drains what is
// left and the process exits 3, so that an orchestrator restarts it.
TEST(Sbserve, FatalDeviceErrorDrainsAndExitsThree) {
  setenv("SBSERVE_TEST_FATAL_TOKEN", "2047", 1);
  Process p(BaseArgs());
  unsetenv("SBSERVE_TEST_FATAL_TOKEN");
  const int port = StartServer(p);
  ASSERT_GT(port, 0);
  ASSERT_NE(p.WaitFor("sbserve ready"), "");
  auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  EXPECT_EQ(Health(ch, "sbserve.v1.SbServe"), HealthCheckResponse::SERVING);
  auto stub = sbserve::v1::SbServe::NewStub(ch);
  // A healthy request first: the injection fires only on its token.
  {
    grpc::ClientContext ctx;
    sbserve::v1::GenerateRequest r = Req(3);
    auto reader = stub->Generate(&ctx, r);
    sbserve::v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  grpc::ClientContext ctx;
  sbserve::v1::GenerateRequest r;
  r.mutable_token_ids()->add_ids(5);
  r.mutable_token_ids()->add_ids(2047);
  r.mutable_token_ids()->add_ids(9);
  r.mutable_stopping()->set_max_tokens(4);
  auto reader = stub->Generate(&ctx, r);
  sbserve::v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
  }
  const grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INTERNAL) << st.error_message();
  EXPECT_NE(st.error_message().find("injected fatal device error"), std::string::npos) << st.error_message();
  EXPECT_EQ(p.Wait(60), 3);
}

}  // namespace
