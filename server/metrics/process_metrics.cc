#include "server/metrics/process_metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

namespace sbserve::metrics {
namespace {

std::vector<std::string_view> SplitSpaces(std::string_view text) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t')) ++i;
    size_t j = i;
    while (j < text.size() && text[j] != ' ' && text[j] != '\n' && text[j] != '\t') ++j;
    if (j > i) out.push_back(text.substr(i, j - i));
    i = j;
  }
  return out;
}

template <typename T>
bool ParseNumber(std::string_view s, T* out) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

absl::StatusOr<ProcStat> ParseProcStat(std::string_view text) {
  const size_t close = text.rfind(')');
  if (close == std::string_view::npos || text.find('(') == std::string_view::npos ||
      text.find('(') > close) {
    return absl::InvalidArgumentError("proc stat: no (comm) field");
  }
  // Tokens after the command name: index 0 is field 3 (state).
  const std::vector<std::string_view> f = SplitSpaces(text.substr(close + 1));
  constexpr size_t kField = 3;
  if (f.size() < 24 - kField + 1) return absl::InvalidArgumentError("proc stat: too few fields");
  ProcStat st;
  if (!ParseNumber(f[14 - kField], &st.utime_ticks) || !ParseNumber(f[15 - kField], &st.stime_ticks) ||
      !ParseNumber(f[22 - kField], &st.start_ticks) || !ParseNumber(f[23 - kField], &st.vsize_bytes) ||
      !ParseNumber(f[24 - kField], &st.rss_pages)) {
    return absl::InvalidArgumentError("proc stat: a field is not a number");
  }
  return st;
}

absl::StatusOr<uint64_t> ParseBootTime(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::vector<std::string_view> f = SplitSpaces(text.substr(pos, end - pos));
    uint64_t btime = 0;
    if (f.size() == 2 && f[0] == "btime" && ParseNumber(f[1], &btime)) return btime;
    pos = end + 1;
  }
  return absl::InvalidArgumentError("proc stat: no btime line");
}

absl::StatusOr<int64_t> ParseMaxOpenFiles(std::string_view text) {
  constexpr std::string_view kKey = "Max open files";
  const size_t at = text.find(kKey);
  if (at == std::string_view::npos) return absl::InvalidArgumentError("limits: no Max open files");
  size_t end = text.find('\n', at);
  if (end == std::string_view::npos) end = text.size();
  const std::vector<std::string_view> f = SplitSpaces(text.substr(at + kKey.size(), end - at - kKey.size()));
  if (f.empty()) return absl::InvalidArgumentError("limits: Max open files has no value");
  if (f[0] == "unlimited") return -1;
  int64_t soft = 0;
  if (!ParseNumber(f[0], &soft)) return absl::InvalidArgumentError("limits: Max open files is not a number");
  return soft;
}

absl::StatusOr<int64_t> CountDirectoryEntries(const std::string& dir, bool skip_own_fd) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return absl::UnavailableError("cannot open " + dir);
  // Listing /proc/self/fd shows the descriptor of the listing itself; it is not the process's.
  const std::string own = skip_own_fd ? std::to_string(dirfd(d)) : std::string();
  int64_t n = 0;
  while (const dirent* e = readdir(d)) {
    const std::string_view name(e->d_name);
    if (name != "." && name != ".." && name != own) ++n;
  }
  closedir(d);
  return n;
}

namespace {

struct ProcessCollector {
  ProcessMetricsOptions options;
  double boot_time = 0;
  Counter* cpu = nullptr;
  Gauge* resident = nullptr;
  Gauge* virtual_memory = nullptr;
  Gauge* open_fds = nullptr;
  Gauge* max_fds = nullptr;
  Gauge* start_time = nullptr;
  std::mutex mu;               // serializes overlapping scrapes (the CPU counter's delta)
  double cpu_reported = 0;     // seconds already added to `cpu`

  void Collect() {
    std::lock_guard<std::mutex> lock(mu);
    std::string text;
    if (ReadFile(options.proc_self + "/stat", &text)) {
      if (absl::StatusOr<ProcStat> st = ParseProcStat(text); st.ok()) {
        const double cpu_seconds =
            static_cast<double>(st->utime_ticks + st->stime_ticks) / options.clock_ticks_per_second;
        if (cpu_seconds > cpu_reported) {
          cpu->Increment(cpu_seconds - cpu_reported);
          cpu_reported = cpu_seconds;
        }
        resident->Set(static_cast<double>(st->rss_pages) * options.page_size_bytes);
        virtual_memory->Set(static_cast<double>(st->vsize_bytes));
        start_time->Set(boot_time + static_cast<double>(st->start_ticks) / options.clock_ticks_per_second);
      }
    }
    if (absl::StatusOr<int64_t> n = CountDirectoryEntries(options.proc_self + "/fd", options.live_fd_dir);
        n.ok()) {
      open_fds->Set(static_cast<double>(*n));
    }
    if (ReadFile(options.proc_self + "/limits", &text)) {
      if (absl::StatusOr<int64_t> m = ParseMaxOpenFiles(text); m.ok() && *m >= 0) {
        max_fds->Set(static_cast<double>(*m));
      }
    }
  }
};

template <typename T>
absl::Status Child(absl::StatusOr<Family<T>*> family, T** out) {
  if (!family.ok()) return family.status();
  absl::StatusOr<T*> child = (*family)->WithLabels({});
  if (!child.ok()) return child.status();
  *out = *child;
  return absl::OkStatus();
}

}  // namespace

absl::Status RegisterProcessMetrics(Registry& registry, ProcessMetricsOptions options) {
  auto c = std::make_shared<ProcessCollector>();
  if (options.clock_ticks_per_second <= 0) options.clock_ticks_per_second = static_cast<double>(sysconf(_SC_CLK_TCK));
  if (options.page_size_bytes <= 0) options.page_size_bytes = static_cast<double>(sysconf(_SC_PAGESIZE));
  if (options.clock_ticks_per_second <= 0 || options.page_size_bytes <= 0) {
    return absl::UnavailableError("sysconf gives no clock tick rate or page size");
  }
  std::string text;
  if (!ReadFile(options.proc_stat, &text)) return absl::UnavailableError("cannot read " + options.proc_stat);
  absl::StatusOr<uint64_t> boot = ParseBootTime(text);
  if (!boot.ok()) return boot.status();
  if (!ReadFile(options.proc_self + "/stat", &text) || !ParseProcStat(text).ok()) {
    return absl::UnavailableError("cannot read or parse " + options.proc_self + "/stat");
  }
  c->boot_time = static_cast<double>(*boot);
  c->options = std::move(options);

  if (absl::Status s = Child(registry.AddCounter("process_cpu_seconds",
                                                 "Total user and system CPU time spent in seconds."),
                             &c->cpu);
      !s.ok()) {
    return s;
  }
  const struct {
    const char* name;
    const char* help;
    Gauge** out;
  } gauges[] = {
      {"process_resident_memory_bytes", "Resident memory size in bytes.", &c->resident},
      {"process_virtual_memory_bytes", "Virtual memory size in bytes.", &c->virtual_memory},
      {"process_open_fds", "Number of open file descriptors.", &c->open_fds},
      {"process_max_fds", "Maximum number of open file descriptors (soft limit).", &c->max_fds},
      {"process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
       &c->start_time},
  };
  for (const auto& g : gauges) {
    if (absl::Status s = Child(registry.AddGauge(g.name, g.help), g.out); !s.ok()) return s;
  }
  c->Collect();
  registry.AddCollector([c] { c->Collect(); });
  return absl::OkStatus();
}

absl::Status RegisterBuildInfo(Registry& registry, const BuildInfo& info) {
  absl::StatusOr<GaugeFamily*> family = registry.AddGauge(
      "sbserve_build_info",
      "Always 1; the labels name the sbserve version, the serving backend, the CUDA runtime it "
      "was built against and the model.",
      {"version", "backend", "cuda", "model"});
  if (!family.ok()) return family.status();
  absl::StatusOr<Gauge*> g = (*family)->WithLabels({info.version, info.backend, info.cuda, info.model});
  if (!g.ok()) return g.status();
  (*g)->Set(1);
  return absl::OkStatus();
}

}  // namespace sbserve::metrics
