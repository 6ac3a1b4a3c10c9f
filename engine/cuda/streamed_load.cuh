// The weight load of the GEMM kernels that stream their weights once (small_gemm.cu,
// skinny_gemm.cu): 16 bytes that bypass L1 (nothing reads them again). Weights are nobody's output,
// so the load is not volatile and may be scheduled freely.
#pragma once

#include <cuda_runtime.h>

namespace sbserve::cuda {

// kL2Hint also asks L2 to fetch the 256 bytes around the chunk (its row's next bytes) at once.
template <bool kL2Hint = false>
__device__ __forceinline__ uint4 LoadStreamed(const void* p) {
  uint4 v;
  if constexpr (kL2Hint) {
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else {
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  }
  return v;
}

}  // namespace sbserve::cuda
