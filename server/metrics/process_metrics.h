// Process metrics read from procfs at scrape time, under the standard names that Prometheus'
// client libraries export (process_resident_memory_bytes, process_cpu_seconds_total, ...), and
// sbserve_build_info. Documented in server/metrics/METRICS.md.
//
//   Registry registry;
//   if (absl::Status s = RegisterProcessMetrics(registry); !s.ok()) ...   // Linux only
//   RegisterBuildInfo(registry, {.version = "0.1.0", .backend = "cpu", .cuda = "none", .model = "demo"});
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/metrics/registry.h"

namespace sbserve::metrics {

// The fields of /proc/<pid>/stat that the process metrics use, in the kernel's units.
struct ProcStat {
  uint64_t utime_ticks = 0;      // field 14, user CPU time in clock ticks
  uint64_t stime_ticks = 0;      // field 15, system CPU time in clock ticks
  uint64_t start_ticks = 0;      // field 22, start time in clock ticks after boot
  uint64_t vsize_bytes = 0;      // field 23, virtual memory size in bytes
  int64_t rss_pages = 0;         // field 24, resident set size in pages
};

// Parses the content of /proc/<pid>/stat. The command name (field 2) is in parentheses and may
// itself contain spaces and parentheses, so the fields are counted from the last ')'.
// INVALID_ARGUMENT when the text is not in that format.
absl::StatusOr<ProcStat> ParseProcStat(std::string_view text);

// The boot time in seconds since the epoch: the "btime" line of /proc/stat.
absl::StatusOr<uint64_t> ParseBootTime(std::string_view proc_stat_text);

// The soft limit of "Max open files" in /proc/<pid>/limits; -1 when it is "unlimited".
absl::StatusOr<int64_t> ParseMaxOpenFiles(std::string_view limits_text);

// Number of entries in a directory (excluding . and ..). With `skip_own_fd`, for a live
// /proc/self/fd, the entry of the descriptor that the listing itself holds is not counted.
absl::StatusOr<int64_t> CountDirectoryEntries(const std::string& dir, bool skip_own_fd = false);

struct ProcessMetricsOptions {
  std::string proc_self = "/proc/self";  // tests point this at a fake tree
  std::string proc_stat = "/proc/stat";
  bool live_fd_dir = true;               // proc_self/fd is this process's live fd table
  double clock_ticks_per_second = 0;     // 0: sysconf(_SC_CLK_TCK)
  double page_size_bytes = 0;            // 0: sysconf(_SC_PAGESIZE)
};

// Registers process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds and process_start_time_seconds,
// and a collector that refreshes them from procfs on every scrape. A file that cannot be read at
// scrape time leaves its metric at the last value. UNAVAILABLE when procfs cannot be read at
// registration (not Linux); errors of Registry::Add* otherwise.
absl::Status RegisterProcessMetrics(Registry& registry, ProcessMetricsOptions options = {});

struct BuildInfo {
  std::string version;  // sbserve's version, e.g. "0.1.0"
  std::string backend;  // the backend serving: "cpu" or "cuda"
  std::string cuda;     // the CUDA runtime version built against, e.g. "12.8"; "none" in CPU builds
  std::string model;    // the model's name (the last component of its directory)
};

// Registers sbserve_build_info{version, backend, cuda, model} = 1.
absl::Status RegisterBuildInfo(Registry& registry, const BuildInfo& info);

}  // namespace sbserve::metrics
