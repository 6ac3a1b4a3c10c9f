#include "server/options.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace sbserve {
namespace {

TEST(ServerOptions, DefaultsEnvironmentAndFlags) {
  bool help = false;
  unsetenv("SBSERVE_PORT");
  unsetenv("SBSERVE_MAX_BATCH_TOKENS");
  auto o = ParseServerOptions({}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->port, 50051);
  EXPECT_EQ(o->metrics_port, 8080);
  EXPECT_EQ(o->drain_timeout, absl::Seconds(30));

  setenv("SBSERVE_PORT", "6000", 1);
  setenv("SBSERVE_MAX_BATCH_TOKENS", "1024", 1);
  o = ParseServerOptions({"--port=7000", "--drain-timeout", "1500ms", "--kv-cache-mb", "32", "--log-requests=false"},
                         &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->port, 7000);  // the flag beats the environment
  EXPECT_EQ(o->engine.max_batch_tokens, 1024);
  EXPECT_EQ(o->drain_timeout, absl::Milliseconds(1500));
  EXPECT_EQ(o->engine.kv_cache_bytes, int64_t{32} << 20);
  EXPECT_FALSE(o->log_requests);
  unsetenv("SBSERVE_PORT");
  unsetenv("SBSERVE_MAX_BATCH_TOKENS");
}

TEST(ServerOptions, ErrorsNameTheFlagOrVariable) {
  bool help = false;
  auto o = ParseServerOptions({"--port", "70000"}, &help);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("--port"), std::string::npos);
  o = ParseServerOptions({"--no-such-flag=1"}, &help);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("no-such-flag"), std::string::npos);
  o = ParseServerOptions({"--backend", "tpu"}, &help);
  ASSERT_FALSE(o.ok());
  o = ParseServerOptions({"--max-queued-requests", "-1"}, &help);
  ASSERT_FALSE(o.ok());
  for (const char* bad : {"0", "1.5", "-0.2", "nan", "x"}) {
    o = ParseServerOptions({"--gpu-memory-utilization", bad}, &help);
    ASSERT_FALSE(o.ok()) << bad;
    EXPECT_NE(o.status().message().find("--gpu-memory-utilization"), std::string::npos);
  }
  o = ParseServerOptions({"--gpu-memory-utilization", "1"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->engine.gpu_memory_utilization, 1.0);
  o = ParseServerOptions({"--kv-cache-mb", "-1"}, &help);
  ASSERT_FALSE(o.ok());
  setenv("SBSERVE_DRAIN_TIMEOUT", "soon", 1);
  o = ParseServerOptions({}, &help);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("SBSERVE_DRAIN_TIMEOUT"), std::string::npos);
  unsetenv("SBSERVE_DRAIN_TIMEOUT");
  o = ParseServerOptions({"--help"}, &help);
  EXPECT_TRUE(help);
  EXPECT_NE(ServerUsage().find("SBSERVE_MAX_QUEUED_TOKENS"), std::string::npos);
}

TEST(ServerOptions, PrefixCachingIsOnByDefaultAndTakesTrueOrFalse) {
  bool help = false;
  unsetenv("SBSERVE_ENABLE_PREFIX_CACHING");
  auto o = ParseServerOptions({}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->engine.enable_prefix_caching);
  o = ParseServerOptions({"--enable-prefix-caching=false"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->engine.enable_prefix_caching);
  o = ParseServerOptions({"--enable-prefix-caching", "0", "--enable-prefix-caching", "1"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->engine.enable_prefix_caching);
  setenv("SBSERVE_ENABLE_PREFIX_CACHING", "false", 1);
  o = ParseServerOptions({}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->engine.enable_prefix_caching);
  unsetenv("SBSERVE_ENABLE_PREFIX_CACHING");
  o = ParseServerOptions({"--enable-prefix-caching=off"}, &help);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("--enable-prefix-caching"), std::string::npos);
}

// --deterministic is off by default, stands alone as true, and takes true or false.
TEST(ServerOptions, DeterministicIsOffByDefaultAndMayStandAlone) {
  bool help = false;
  unsetenv("SBSERVE_DETERMINISTIC");
  auto o = ParseServerOptions({}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->deterministic);
  o = ParseServerOptions({"--deterministic"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->deterministic);
  o = ParseServerOptions({"--deterministic", "--port", "5000"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->deterministic);
  EXPECT_EQ(o->port, 5000);
  o = ParseServerOptions({"--deterministic", "false"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->deterministic);
  o = ParseServerOptions({"--deterministic=true"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->deterministic);
  setenv("SBSERVE_DETERMINISTIC", "1", 1);
  o = ParseServerOptions({}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->deterministic);
  unsetenv("SBSERVE_DETERMINISTIC");
  o = ParseServerOptions({"--deterministic=yes"}, &help);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("--deterministic"), std::string::npos);
  // Flags that are not boolean still need their value.
  o = ParseServerOptions({"--port"}, &help);
  EXPECT_FALSE(o.ok());
}

TEST(ServerOptions, TlsFlagsGoTogether) {
  bool help = false;
  EXPECT_FALSE(ParseServerOptions({"--tls-cert=/c.pem"}, &help).ok());
  EXPECT_FALSE(ParseServerOptions({"--tls-key=/k.pem"}, &help).ok());
  EXPECT_FALSE(ParseServerOptions({"--tls-client-ca=/ca.pem"}, &help).ok());
  auto o = ParseServerOptions({"--tls-cert=/c.pem", "--tls-key=/k.pem", "--tls-client-ca=/ca.pem"}, &help);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->tls_cert, "/c.pem");
  EXPECT_EQ(o->tls_key, "/k.pem");
  EXPECT_EQ(o->tls_client_ca, "/ca.pem");
}

}  // namespace
}  // namespace sbserve
