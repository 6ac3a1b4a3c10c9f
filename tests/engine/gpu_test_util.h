// Helpers of the GPU tests (label "gpu"): they skip, visibly, without a CUDA device.
#pragma once

#include <cuda_runtime.h>

namespace sbserve::testing {

// True when a CUDA device is present; clears the error the runtime records when none is.
inline bool HaveGpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

}  // namespace sbserve::testing
