// Programmatic dependent launch (Hopper): a kernel launched with LaunchPdl may be scheduled while
// the kernel before it in the stream still runs. It must call PdlWait() before touching anything that
// kernel writes (and before writing anything it reads); PdlWait returns once that kernel has
// completed and its memory is visible. A kernel calls PdlLaunchDependents() to let the next one be
// scheduled early. Both are no-ops when the kernel was launched without the attribute, or has no
// dependent. Inside a captured graph the launches become programmatic edges.
//
// SBSERVE_PDL=0 in the environment launches plainly (for A/B measurements).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace sbserve::kernels {

inline bool PdlEnabled() {
  static const bool on = [] {
    const char* e = std::getenv("SBSERVE_PDL");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

template <typename... KernelArgs, typename... Args>
cudaError_t LaunchPdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = PdlEnabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

#ifdef __CUDACC__
__device__ __forceinline__ void PdlWait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void PdlLaunchDependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
#endif

}  // namespace sbserve::kernels
