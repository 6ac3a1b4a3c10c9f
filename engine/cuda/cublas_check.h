// Checks of cuBLAS / cuBLASLt calls, in the style of kernels/cuda_check.h: a failed call returns an
// INTERNAL status naming the statement, file and line, and cuBLAS's reason. And the model's GEMM as
// cuBLAS's default runs it, for the backend, the GEMM tuner and small_gemm_bench.
#pragma once

#include <cublas_v2.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#define SB_CUBLAS_RETURN_IF_ERROR(stmt)                                                              \
  do {                                                                                               \
    cublasStatus_t sb_blas_st_ = (stmt);                                                             \
    if (sb_blas_st_ != CUBLAS_STATUS_SUCCESS)                                                        \
      return absl::InternalError(absl::StrCat(__FILE__, ":", __LINE__, ": ", #stmt, " failed: ",     \
                                              cublasGetStatusString(sb_blas_st_)));                  \
  } while (0)

namespace sbserve::cuda {

// Row-major y[n, out] = alpha · x[n, in] · W[out, in]ᵀ + beta · y (x, W bf16; y bf16 or fp32; fp32
// accumulation) on `blas`'s stream: column-major yᵀ[out, n] = W · xᵀ, cuBLAS's default algorithm.
inline absl::Status CublasGemm(cublasHandle_t blas, const void* x, int64_t n, int64_t in, const void* w, int64_t out,
                               void* y, bool y_f32, float alpha, float beta) {
  SB_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                                         static_cast<int>(in), &alpha, w, CUDA_R_16BF, static_cast<int>(in), x,
                                         CUDA_R_16BF, static_cast<int>(in), &beta, y,
                                         y_f32 ? CUDA_R_32F : CUDA_R_16BF, static_cast<int>(out), CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace sbserve::cuda
