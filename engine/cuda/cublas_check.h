// Checks of cuBLAS / cuBLASLt calls, in the style of kernels/cuda_check.h: a failed call returns an
// INTERNAL status naming the statement, file and line, and cuBLAS's reason.
#pragma once

#include <cublas_v2.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#define SB_CUBLAS_RETURN_IF_ERROR(stmt)                                                              \
  do {                                                                                               \
    cublasStatus_t sb_blas_st_ = (stmt);                                                             \
    if (sb_blas_st_ != CUBLAS_STATUS_SUCCESS)                                                        \
      return absl::InternalError(absl::StrCat(__FILE__, ":", __LINE__, ": ", #stmt, " failed: ",     \
                                              cublasGetStatusString(sb_blas_st_)));                  \
  } while (0)
