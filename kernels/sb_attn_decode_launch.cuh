// Host launch of the paged decode split + combine kernels for one (head dim, heads per CTA)
// (instantiated in sb_attn_decode_bf16_hdim*.cu, dispatched from sb_attn.cu).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "kernels/cuda_check.h"
#include "kernels/sb_attn_decode_kernel.cuh"
#include "kernels/sb_attn_launch.h"
#include "kernels/sb_attn_params.h"

namespace sbserve::kernels {

template <int kHeadDim, int kG>
absl::Status LaunchSbAttnDecode(const SbAttnDecodeParams& p, int log2_bs, const SbDecodeSplit& split,
                                cudaStream_t stream) {
  float* o_part = static_cast<float*>(p.workspace);
  float* p_part = o_part + static_cast<int64_t>(p.batch) * p.num_heads * split.num_splits * kHeadDim;
  const int groups = (p.num_heads / p.num_kv_heads) / kG;
  const dim3 grid(split.num_splits, p.num_kv_heads * groups, p.batch);
  sb_attn_decode_split_bf16_kernel<kHeadDim, kG><<<grid, kDecodeThreads, 0, stream>>>(
      p, log2_bs, split.keys_per_split, split.num_splits, o_part, p_part);
  SB_CUDA_CHECK_LAUNCH();
  sb_attn_decode_combine_bf16_kernel<kHeadDim><<<p.batch * p.num_heads, kHeadDim, 0, stream>>>(
      p, log2_bs, split.keys_per_split, split.num_splits, o_part, p_part);
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

}  // namespace sbserve::kernels
