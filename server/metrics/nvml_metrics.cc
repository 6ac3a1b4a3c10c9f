#include "server/metrics/nvml_metrics.h"

#include <dlfcn.h>

#include <memory>
#include <string>
#include <vector>

namespace sbserve::metrics {
namespace {

// The few NVML declarations used here (nvml.h is not needed to build): return code 0 is
// NVML_SUCCESS, the device handle is opaque, clock type 1 is NVML_CLOCK_SM (in MHz).
using NvmlReturn = int;
using NvmlDevice = void*;
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct NvmlUtilization {
  unsigned int gpu;     // percent of the sample period in which a kernel ran
  unsigned int memory;  // percent of the sample period in which device memory was read or written
};
constexpr NvmlReturn kNvmlSuccess = 0;
constexpr int kNvmlClockSm = 1;

struct NvmlApi {
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*by_index)(unsigned int, NvmlDevice*) = nullptr;
  NvmlReturn (*by_pci_bus_id)(const char*, NvmlDevice*) = nullptr;
  NvmlReturn (*get_index)(NvmlDevice, unsigned int*) = nullptr;
  NvmlReturn (*memory_info)(NvmlDevice, NvmlMemory*) = nullptr;
  NvmlReturn (*utilization)(NvmlDevice, NvmlUtilization*) = nullptr;
  NvmlReturn (*clock_info)(NvmlDevice, int, unsigned int*) = nullptr;
};

template <typename F>
bool Resolve(void* lib, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  return *out != nullptr;
}

struct NvmlCollector {
  struct Device {
    NvmlDevice handle = nullptr;
    Gauge* memory_used = nullptr;
    Gauge* memory_total = nullptr;
    Gauge* utilization = nullptr;
    Gauge* sm_clock = nullptr;
  };
  NvmlApi api;
  std::vector<Device> devices;

  // NVML calls are thread-safe, and each gauge is set from one reading.
  void Collect() const {
    for (const Device& d : devices) {
      NvmlMemory mem{};
      if (api.memory_info(d.handle, &mem) == kNvmlSuccess) {
        d.memory_used->Set(static_cast<double>(mem.used));
        d.memory_total->Set(static_cast<double>(mem.total));
      }
      NvmlUtilization util{};
      if (api.utilization(d.handle, &util) == kNvmlSuccess) d.utilization->Set(util.gpu / 100.0);
      unsigned int mhz = 0;
      if (api.clock_info(d.handle, kNvmlClockSm, &mhz) == kNvmlSuccess) d.sm_clock->Set(mhz * 1e6);
    }
  }
};

}  // namespace

const std::vector<std::string>& NvmlMetricNames() {
  static const std::vector<std::string> names = {
      "sbserve_gpu_memory_used_bytes", "sbserve_gpu_memory_total_bytes",
      "sbserve_gpu_utilization_ratio", "sbserve_gpu_sm_clock_hertz"};
  return names;
}

absl::Status RegisterNvmlMetrics(Registry& registry, const NvmlMetricsOptions& options) {
  // Kept loaded for the life of the process: the collector calls into it on every scrape.
  void* lib = dlopen(options.library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = dlerror();
    return absl::UnavailableError("cannot load " + options.library + ": " + (err ? err : "?"));
  }
  auto c = std::make_shared<NvmlCollector>();
  NvmlApi& api = c->api;
  if (!Resolve(lib, "nvmlInit_v2", &api.init) || !Resolve(lib, "nvmlDeviceGetHandleByIndex_v2", &api.by_index) ||
      !Resolve(lib, "nvmlDeviceGetHandleByPciBusId_v2", &api.by_pci_bus_id) ||
      !Resolve(lib, "nvmlDeviceGetIndex", &api.get_index) ||
      !Resolve(lib, "nvmlDeviceGetMemoryInfo", &api.memory_info) ||
      !Resolve(lib, "nvmlDeviceGetUtilizationRates", &api.utilization) ||
      !Resolve(lib, "nvmlDeviceGetClockInfo", &api.clock_info)) {
    dlclose(lib);
    return absl::UnavailableError(options.library + " lacks an NVML function");
  }
  if (NvmlReturn r = api.init(); r != kNvmlSuccess) {
    dlclose(lib);
    return absl::UnavailableError("nvmlInit failed with code " + std::to_string(r));
  }
  // Every device is found before anything is registered: a missing one registers nothing.
  std::vector<std::string> wanted = options.pci_bus_ids;
  if (wanted.empty() && !options.pci_bus_id.empty()) wanted.push_back(options.pci_bus_id);
  std::vector<NvmlDevice> handles;
  if (wanted.empty()) {
    NvmlDevice d = nullptr;
    if (api.by_index(options.index, &d) != kNvmlSuccess) {
      return absl::UnavailableError("NVML has no device " + std::to_string(options.index));
    }
    handles.push_back(d);
  }
  for (const std::string& bus : wanted) {
    NvmlDevice d = nullptr;
    if (api.by_pci_bus_id(bus.c_str(), &d) != kNvmlSuccess) return absl::UnavailableError("NVML has no device " + bus);
    handles.push_back(d);
  }

  const char* help[] = {
      "Device memory in use on the serving GPU, in bytes (all processes).",
      "Device memory of the serving GPU, in bytes.",
      "Share of the last sample period (1/6 s to 1 s, by product) in which a kernel ran on the "
      "serving GPU, 0 to 1.",
      "SM clock of the serving GPU, in hertz.",
  };
  std::vector<GaugeFamily*> families;
  for (size_t i = 0; i < NvmlMetricNames().size(); ++i) {
    absl::StatusOr<GaugeFamily*> family = registry.AddGauge(NvmlMetricNames()[i], help[i], {"gpu"});
    if (!family.ok()) return family.status();
    families.push_back(*family);
  }
  for (NvmlDevice handle : handles) {
    unsigned int index = options.index;
    if (api.get_index(handle, &index) != kNvmlSuccess) index = options.index;
    const std::string gpu = std::to_string(index);
    NvmlCollector::Device d;
    d.handle = handle;
    Gauge** out[] = {&d.memory_used, &d.memory_total, &d.utilization, &d.sm_clock};
    for (size_t i = 0; i < families.size(); ++i) {
      absl::StatusOr<Gauge*> g = families[i]->WithLabels({gpu});
      if (!g.ok()) return g.status();
      *out[i] = *g;
    }
    c->devices.push_back(d);
  }
  c->Collect();
  registry.AddCollector([c] { c->Collect(); });
  return absl::OkStatus();
}

}  // namespace sbserve::metrics
