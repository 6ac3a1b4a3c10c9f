// CreateCudaBackend for trees built without CUDA: callers fall back to the CPU backend.
#include "engine/backend.h"

namespace sbserve {

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const Checkpoint&, const CudaBackendOptions&) {
  return absl::UnavailableError("this build has no CUDA backend (configured with SBSERVE_CUDA=OFF)");
}

}  // namespace sbserve
