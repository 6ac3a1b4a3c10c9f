// Process metrics from procfs (parsers on fixed text, a fake /proc tree, and this process's own
// /proc/self), sbserve_build_info, and the NVML gauges through a fake libnvidia-ml (no GPU needed)
// and with the library absent.
#include "server/metrics/process_metrics.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <iostream>
#include <regex>
#include <string>

#include "server/metrics/nvml_metrics.h"
#include "tests/server/metrics/test_util.h"

namespace sbserve::metrics {
namespace {

// The value of the sample line `series` (name plus labels, exactly) in `text`; NaN if absent.
double Sample(const std::string& text, const std::string& series) {
  const std::string prefix = series + " ";
  size_t at = 0;
  while ((at = text.find(prefix, at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::stod(text.substr(at + prefix.size()));
    at += prefix.size();
  }
  return std::nan("");
}

// A real /proc/<pid>/stat line whose command name holds spaces and parentheses.
constexpr char kStat[] =
    "4242 (sb (serve) x) S 1 4242 4242 0 -1 4194560 5390 0 12 0 "
    "250 75 0 0 20 0 9 0 123400 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 "
    "17 3 0 0 0 0 0\n";

TEST(ProcessMetrics, ParsesProcStatCountingFromTheLastParenthesis) {
  absl::StatusOr<ProcStat> st = ParseProcStat(kStat);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->utime_ticks, 250u);
  EXPECT_EQ(st->stime_ticks, 75u);
  EXPECT_EQ(st->start_ticks, 123400u);
  EXPECT_EQ(st->vsize_bytes, 987654321u);
  EXPECT_EQ(st->rss_pages, 2048);
  EXPECT_FALSE(ParseProcStat("4242 sbserve S 1 2 3").ok());
  EXPECT_FALSE(ParseProcStat("4242 (sbserve) S 1 2 3").ok());  // too few fields
  std::string bad = kStat;
  bad.replace(bad.find("250"), 3, "2x0");
  EXPECT_FALSE(ParseProcStat(bad).ok());
}

TEST(ProcessMetrics, ParsesBootTimeAndFdLimit) {
  EXPECT_EQ(ParseBootTime("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n").value(), 1700000000u);
  EXPECT_FALSE(ParseBootTime("cpu 1 2 3\n").ok());
  const char* limits =
      "Limit                     Soft Limit           Hard Limit           Units     \n"
      "Max cpu time              unlimited            unlimited            seconds   \n"
      "Max open files            1024                 1048576              files     \n";
  EXPECT_EQ(ParseMaxOpenFiles(limits).value(), 1024);
  EXPECT_EQ(ParseMaxOpenFiles("Max open files            unlimited            unlimited  files\n").value(), -1);
  EXPECT_FALSE(ParseMaxOpenFiles("Max processes 5 5\n").ok());
}

// A fake /proc tree: every value is known, including the tick rate and page size.
TEST(ProcessMetrics, ExportsAFakeProcTreeInBaseUnits) {
  testing::TempDir dir;
  const std::string self = dir.path() + "/self";
  ASSERT_EQ(mkdir(self.c_str(), 0755), 0);
  ASSERT_EQ(mkdir((self + "/fd").c_str(), 0755), 0);
  for (const char* fd : {"0", "1", "2", "7", "9"}) testing::WriteFile(self + "/fd/" + fd, "");
  testing::WriteFile(self + "/stat", kStat);
  testing::WriteFile(self + "/limits", "Max open files            4096                 8192       files\n");
  testing::WriteFile(dir.path() + "/stat", "cpu 1\nbtime 1700000000\n");

  Registry registry;
  ProcessMetricsOptions o;
  o.proc_self = self;
  o.proc_stat = dir.path() + "/stat";
  o.live_fd_dir = false;
  o.clock_ticks_per_second = 100;
  o.page_size_bytes = 4096;
  ASSERT_TRUE(RegisterProcessMetrics(registry, o).ok());
  std::string text = registry.Serialize();
  EXPECT_DOUBLE_EQ(Sample(text, "process_cpu_seconds_total"), 3.25);  // (250 + 75) / 100
  EXPECT_DOUBLE_EQ(Sample(text, "process_resident_memory_bytes"), 2048.0 * 4096);
  EXPECT_DOUBLE_EQ(Sample(text, "process_virtual_memory_bytes"), 987654321.0);
  EXPECT_DOUBLE_EQ(Sample(text, "process_open_fds"), 5);
  EXPECT_DOUBLE_EQ(Sample(text, "process_max_fds"), 4096);
  EXPECT_DOUBLE_EQ(Sample(text, "process_start_time_seconds"), 1700000000 + 1234.0);
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE process_resident_memory_bytes gauge\n"), std::string::npos);

  // Every scrape reads procfs again; the CPU counter follows without counting twice.
  std::string later = kStat;
  later.replace(later.find(" 250 75 "), 8, " 300 80 ");
  testing::WriteFile(self + "/stat", later);
  testing::WriteFile(self + "/fd/11", "");
  text = registry.Serialize();
  EXPECT_DOUBLE_EQ(Sample(text, "process_cpu_seconds_total"), 3.8);
  EXPECT_DOUBLE_EQ(Sample(text, "process_open_fds"), 6);
  text = registry.Serialize();
  EXPECT_DOUBLE_EQ(Sample(text, "process_cpu_seconds_total"), 3.8);
  // An unreadable file keeps the last values rather than dropping to zero.
  ASSERT_EQ(unlink((self + "/stat").c_str()), 0);
  text = registry.Serialize();
  EXPECT_DOUBLE_EQ(Sample(text, "process_cpu_seconds_total"), 3.8);
  EXPECT_DOUBLE_EQ(Sample(text, "process_resident_memory_bytes"), 2048.0 * 4096);
}

// Open descriptors counted independently of procfs: every fd that fcntl accepts.
int OpenFdsByProbing() {
  int n = 0;
  for (int fd = 0; fd < 65536; ++fd) n += fcntl(fd, F_GETFD) != -1;
  return n;
}

TEST(ProcessMetrics, ThisProcessFromTheRealProcfs) {
  Registry registry;
  ASSERT_TRUE(RegisterProcessMetrics(registry).ok());
  const std::string before = registry.Serialize();
  const double fds = Sample(before, "process_open_fds");
  // Exactly the process's descriptors: not the one the listing of /proc/self/fd holds itself.
  EXPECT_EQ(fds, OpenFdsByProbing());
  // Three descriptors more are three more open files (the listing's own is never counted).
  const int a = open("/dev/null", O_RDONLY), b = open("/dev/null", O_RDONLY), c = open("/dev/null", O_RDONLY);
  ASSERT_GE(a, 0);
  const std::string during = registry.Serialize();
  close(a), close(b), close(c);
  EXPECT_DOUBLE_EQ(Sample(during, "process_open_fds") - fds, 3) << during;
  EXPECT_DOUBLE_EQ(Sample(registry.Serialize(), "process_open_fds"), fds);
  // A few MiB resident at least, started within the last hour and not in the future.
  EXPECT_GT(Sample(before, "process_resident_memory_bytes"), 1 << 20);
  const double start = Sample(before, "process_start_time_seconds");
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(start, now + 2);
  EXPECT_GT(start, now - 3600);
  EXPECT_GE(Sample(before, "process_cpu_seconds_total"), 0);
  EXPECT_GT(Sample(before, "process_max_fds"), 0);
}

TEST(ProcessMetrics, NoProcfsIsUnavailableAndRegistersNothing) {
  Registry registry;
  ProcessMetricsOptions o;
  o.proc_self = "/nonexistent/self";
  o.proc_stat = "/nonexistent/stat";
  EXPECT_EQ(RegisterProcessMetrics(registry, o).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry.Serialize(), "");
}

TEST(BuildInfo, OneSeriesWithTheFourLabels) {
  Registry registry;
  ASSERT_TRUE(RegisterBuildInfo(registry, {"0.1.0", "cpu", "none", "demo"}).ok());
  EXPECT_NE(registry.Serialize().find(
                "sbserve_build_info{version=\"0.1.0\",backend=\"cpu\",cuda=\"none\",model=\"demo\"} 1\n"),
            std::string::npos)
      << registry.Serialize();
  EXPECT_EQ(RegisterBuildInfo(registry, {"0.1.0", "cpu", "none", "demo"}).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(NvmlMetrics, WithoutTheLibraryNothingIsRegistered) {
  Registry registry;
  NvmlMetricsOptions o;
  o.library = "libnvidia-ml-absent-for-this-test.so.1";
  const absl::Status s = RegisterNvmlMetrics(registry, o);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(registry.Serialize(), "");
}

TEST(NvmlMetrics, ALibraryWithoutNvmlIsRefused) {
  Registry registry;
  NvmlMetricsOptions o;
  o.library = "libm.so.6";
  EXPECT_EQ(RegisterNvmlMetrics(registry, o).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry.Serialize(), "");
}

TEST(NvmlMetrics, FakeLibraryByBusIdAndByIndex) {
  for (const bool by_bus : {true, false}) {
    SCOPED_TRACE(by_bus ? "by PCI bus id" : "by index");
    Registry registry;
    NvmlMetricsOptions o;
    o.library = FAKE_NVML_LIBRARY;
    if (by_bus) {
      o.pci_bus_id = "0000:3B:00.0";
    } else {
      o.index = 3;
    }
    ASSERT_TRUE(RegisterNvmlMetrics(registry, o).ok());
    const std::string text = registry.Serialize();
    EXPECT_DOUBLE_EQ(Sample(text, "sbserve_gpu_memory_total_bytes{gpu=\"3\"}"), 150.0 * (1ull << 30));
    EXPECT_DOUBLE_EQ(Sample(text, "sbserve_gpu_utilization_ratio{gpu=\"3\"}"), 0.87);
    EXPECT_DOUBLE_EQ(Sample(text, "sbserve_gpu_sm_clock_hertz{gpu=\"3\"}"), 1980e6);
    // Memory in use is read again on each scrape (the fake adds 1 GiB per reading).
    const double used = Sample(text, "sbserve_gpu_memory_used_bytes{gpu=\"3\"}");
    EXPECT_GT(used, 0);
    EXPECT_DOUBLE_EQ(Sample(registry.Serialize(), "sbserve_gpu_memory_used_bytes{gpu=\"3\"}") - used,
                     1 << 30);
    for (const std::string& name : NvmlMetricNames()) {
      EXPECT_NE(text.find("# TYPE " + name + " gauge\n"), std::string::npos) << name;
    }
  }
  // A device NVML does not know: UNAVAILABLE, no metrics.
  Registry registry;
  NvmlMetricsOptions o;
  o.library = FAKE_NVML_LIBRARY;
  o.pci_bus_id = "0000:AA:00.0";
  EXPECT_EQ(RegisterNvmlMetrics(registry, o).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry.Serialize(), "");
}

// Data-parallel serving: one series per serving GPU; one unknown device registers nothing.
TEST(NvmlMetrics, SeveralDevicesEachGetTheirSeries) {
  Registry registry;
  NvmlMetricsOptions o;
  o.library = FAKE_NVML_LIBRARY;
  o.pci_bus_ids = {"0000:3B:00.0", "0000:3C:00.0"};
  ASSERT_TRUE(RegisterNvmlMetrics(registry, o).ok());
  const std::string text = registry.Serialize();
  EXPECT_DOUBLE_EQ(Sample(text, "sbserve_gpu_utilization_ratio{gpu=\"3\"}"), 0.87);
  EXPECT_DOUBLE_EQ(Sample(text, "sbserve_gpu_utilization_ratio{gpu=\"4\"}"), 0.50);
  EXPECT_DOUBLE_EQ(Sample(text, "sbserve_gpu_memory_total_bytes{gpu=\"4\"}"), 150.0 * (1ull << 30));
  Registry missing;
  o.pci_bus_ids = {"0000:3B:00.0", "0000:AA:00.0"};
  EXPECT_EQ(RegisterNvmlMetrics(missing, o).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(missing.Serialize(), "");
}

// The driver's NVML when this host has one (skipped otherwise): device 0's readings are sane.
TEST(NvmlMetrics, RealDriverWhenPresent) {
  Registry registry;
  const absl::Status s = RegisterNvmlMetrics(registry, {});
  if (s.code() == absl::StatusCode::kUnavailable) GTEST_SKIP() << s;
  ASSERT_TRUE(s.ok()) << s;
  const std::string text = registry.Serialize();
  std::cout << text;
  const double total = Sample(text, "sbserve_gpu_memory_total_bytes{gpu=\"0\"}");
  const double used = Sample(text, "sbserve_gpu_memory_used_bytes{gpu=\"0\"}");
  const double util = Sample(text, "sbserve_gpu_utilization_ratio{gpu=\"0\"}");
  const double clock = Sample(text, "sbserve_gpu_sm_clock_hertz{gpu=\"0\"}");
  EXPECT_GT(total, 1e9);
  EXPECT_GT(used, 0);
  EXPECT_LE(used, total);
  EXPECT_GE(util, 0);
  EXPECT_LE(util, 1);
  EXPECT_GT(clock, 1e8);
  EXPECT_LT(clock, 5e9);
}

// METRICS.md documents every family registered here (the NVML ones by their fixed names).
TEST(ProcessMetrics, EveryFamilyIsDocumented) {
  const std::string doc = testing::ReadFile(std::string(SBSERVE_SOURCE_DIR) + "/server/metrics/METRICS.md");
  ASSERT_FALSE(doc.empty());
  Registry registry;
  ASSERT_TRUE(RegisterProcessMetrics(registry).ok());
  ASSERT_TRUE(RegisterBuildInfo(registry, {"0", "cpu", "none", "m"}).ok());
  std::vector<std::string> names = NvmlMetricNames();
  const std::string text = registry.Serialize();
  const std::regex type_line("# TYPE ([a-z_]+) ");
  for (std::sregex_iterator it(text.begin(), text.end(), type_line), end; it != end; ++it) {
    names.push_back((*it)[1]);
  }
  EXPECT_EQ(names.size(), NvmlMetricNames().size() + 7);
  for (const std::string& name : names) {
    EXPECT_NE(doc.find("`" + name + "`"), std::string::npos) << name << " not in METRICS.md";
  }
}

}  // namespace
}  // namespace sbserve::metrics
