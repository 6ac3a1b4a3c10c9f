// Declarations of the per-(head dim, heads per CTA) launchers; the definitions live in the
// instantiation files sb_attn_{prefill,decode}_bf16_hdim*.cu. Host code only.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "kernels/sb_attn_params.h"

namespace sbserve::kernels {

// Whether a row stride in elements (q_row_stride, kv_row_stride) is 0 (rows packed) or a multiple of 8
// (16-byte rows) of at least min_elems.
inline bool SbRowStrideValid(int64_t stride, int64_t min_elems) {
  return stride == 0 || (stride % 8 == 0 && stride >= min_elems);
}

// How decode splits the keys; chosen on the host from host-known bounds.
struct SbDecodeSplit {
  int keys_per_split = 0;  // multiple of 64
  int num_splits = 0;      // ceil(max keys / keys_per_split), >= 1
};

template <int kHeadDim>
absl::Status LaunchSbAttnPrefill(const SbAttnPrefillParams& p, int log2_bs, SbPrefillKernel kernel, cudaStream_t stream);

// tensor_core: the MMA split kernel (sb_attn_decode_mma_kernel.cuh), else the CUDA-core one.
template <int kHeadDim, int kG>
absl::Status LaunchSbAttnDecode(const SbAttnDecodeParams& p, int log2_bs, const SbDecodeSplit& split,
                                bool tensor_core, cudaStream_t stream);

// Decode split-kernel CTAs that fit on one SM at once (0 if the query failed).
template <int kHeadDim, int kG>
int SbAttnDecodeCtasPerSm(bool tensor_core);

}  // namespace sbserve::kernels
