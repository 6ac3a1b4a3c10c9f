// One family of CUDA error checks for kernels/: each names the failed statement, file and line.
//   SB_CUDA_RETURN_IF_ERROR(stmt)  in functions returning absl::Status
//   SB_CUDA_CHECK_LAUNCH()         after each launch; with SBSERVE_CUDA_SYNC_DEBUG defined it also
//                                  synchronises so that an asynchronous fault names its kernel
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sbserve::kernels {

inline absl::Status CudaErrorStatus(cudaError_t err, const char* stmt, const char* file, int line) {
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", stmt, " failed: ",
                                          cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

}  // namespace sbserve::kernels

#define SB_CUDA_RETURN_IF_ERROR(stmt)                                                   \
  do {                                                                                  \
    cudaError_t sb_cuda_err_ = (stmt);                                                  \
    if (sb_cuda_err_ != cudaSuccess)                                                    \
      return ::sbserve::kernels::CudaErrorStatus(sb_cuda_err_, #stmt, __FILE__, __LINE__); \
  } while (0)

#ifdef SBSERVE_CUDA_SYNC_DEBUG
#define SB_CUDA_CHECK_LAUNCH()                           \
  do {                                                   \
    SB_CUDA_RETURN_IF_ERROR(cudaGetLastError());         \
    SB_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());    \
  } while (0)
#else
#define SB_CUDA_CHECK_LAUNCH() SB_CUDA_RETURN_IF_ERROR(cudaGetLastError())
#endif
