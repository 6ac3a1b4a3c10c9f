// How much the engine can hold and take: the KV cache size, the step size and the admission
// limits, resolved from the flags and, where they are left at 0 ("auto"), from the backend's
// memory as measured after a warm-up forward at the largest step the scheduler can build.
//
// KV cache, in order of precedence:
//   --kv-blocks N       exactly N blocks (may be smaller than one context: longer requests are
//                       refused at admission; tests use it to force preemption);
//   --kv-cache-mb M     M MiB; refused when that is less than one request of the full context;
//   auto (CUDA)         --gpu-memory-utilization × device memory, minus what is in use after the
//                       warm-up (weights, activations, workspaces, graphs, the CUDA context and any
//                       other process on the device), like vLLM;
//   auto (CPU)          1/16 of MemAvailable, at most 1 GiB, at least one full context;
//   auto (other)        256 MiB (test backends that report no memory).
// Admission (auto): queued prompt tokens up to what the engine prefills in kAdmissionHorizon at
// its measured prefill rate, and never below the KV token capacity; queued requests up to
// max(256, 4 × max_num_seqs).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/backend.h"

namespace sbserve {

struct EngineOptions;

// A burst the engine can prefill within this time is queued rather than refused.
inline constexpr absl::Duration kAdmissionHorizon = absl::Seconds(10);

struct CapacityPlan {
  int max_batch_tokens = 0;
  int num_blocks = 0;             // KV blocks; the backend's cache is initialised with them
  int64_t max_queued_tokens = 0;
  int max_queued_requests = 0;
  double prefill_tokens_per_s = 0;  // measured in the warm-up; 0 when none ran
  MemoryInfo memory;              // after the final KV allocation (zero when unreported)
  int64_t activation_bytes = 0;   // device memory the warm-up forward added (CUDA)
  std::string summary;            // one line for the startup log
};

// Resolves the auto settings of `options`, runs the warm-up when needed and initialises the
// backend's KV cache. INVALID_ARGUMENT (with the numbers) for an impossible configuration.
absl::StatusOr<CapacityPlan> PlanCapacity(const EngineOptions& options, Backend& backend);

}  // namespace sbserve
