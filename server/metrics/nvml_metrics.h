// GPU gauges of the serving device from NVML. libnvidia-ml is opened with dlopen at run time, so
// nothing links against it: a CPU build, or a host without the NVIDIA driver, simply registers
// nothing. Documented in server/metrics/METRICS.md.
//
//   if (absl::Status s = RegisterNvmlMetrics(registry, {.pci_bus_id = bus_id}); !s.ok())
//     spdlog::info("no GPU metrics: {}", s.message());
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/metrics/registry.h"

namespace sbserve::metrics {

// The gauge names RegisterNvmlMetrics adds, each with the label `gpu` (the NVML device index).
const std::vector<std::string>& NvmlMetricNames();

struct NvmlMetricsOptions {
  std::string library = "libnvidia-ml.so.1";  // the driver's NVML; tests load a fake one
  // The serving device: by PCI bus id ("0000:3B:00.0", what cudaDeviceGetPCIBusId returns) when
  // given, since CUDA ordinals and NVML indices differ under CUDA_VISIBLE_DEVICES; else by index.
  std::string pci_bus_id;
  unsigned int index = 0;
  // Several serving devices (data-parallel serving): each gets its own series; pci_bus_id and
  // index are then ignored.
  std::vector<std::string> pci_bus_ids;
};

// Loads NVML, finds the device and registers sbserve_gpu_memory_used_bytes,
// sbserve_gpu_memory_total_bytes, sbserve_gpu_utilization_ratio and sbserve_gpu_sm_clock_hertz
// with a collector that reads them on every scrape (a reading that fails keeps the last value).
// UNAVAILABLE, with nothing registered, when the library, one of its functions or a device is
// missing or nvmlInit fails.
absl::Status RegisterNvmlMetrics(Registry& registry, const NvmlMetricsOptions& options = {});

}  // namespace sbserve::metrics
