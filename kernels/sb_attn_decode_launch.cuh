// Host launch of the paged decode split + combine kernels for one (head dim, heads per CTA)
// (instantiated in sb_attn_decode_bf16_hdim*.cu, dispatched from sb_attn.cu).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "kernels/cuda_check.h"
#include "kernels/pdl.h"
#include "kernels/sb_attn_decode_kernel.cuh"
#include "kernels/sb_attn_decode_mma_kernel.cuh"
#include "kernels/sb_attn_launch.h"
#include "kernels/sb_attn_params.h"

namespace sbserve::kernels {

// The MMA split kernel's dynamic shared memory is above the 48 KB default: raise its limit once.
template <int kHeadDim, int kG>
cudaError_t SbDecodeMmaAllowSmem() {
  static const cudaError_t e =
      cudaFuncSetAttribute(sb_attn_decode_split_mma_kernel<kHeadDim, kG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           SbDecodeMmaTraits<kHeadDim, kG>::kSmemBytes);
  return e;
}

template <int kHeadDim, int kG>
absl::Status LaunchSbAttnDecode(const SbAttnDecodeParams& p, int log2_bs, const SbDecodeSplit& split,
                                bool tensor_core, cudaStream_t stream) {
  const int64_t parts = static_cast<int64_t>(p.batch) * p.num_heads * split.num_splits;
  float* o_part = static_cast<float*>(p.workspace);
  float* p_part = o_part + parts * kHeadDim;
  const int hgs = p.num_heads / kG;  // CTAs per (sequence, split)
  unsigned* flags = nullptr;
  dim3 grid(split.num_splits, hgs, p.batch);
  if (p.early_exit_log_threshold > 0.f) {
    flags = reinterpret_cast<unsigned*>(p_part + parts);
    SB_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(flags, 0, parts * sizeof(unsigned), stream));
    grid = dim3(hgs, p.batch, split.num_splits);  // newest chunks first
  }
  // Without the early exit, given the counters, the split grid combines its chunks itself.
  unsigned* done = flags == nullptr ? p.done_counters : nullptr;
  if (tensor_core) {
    SB_CUDA_RETURN_IF_ERROR((SbDecodeMmaAllowSmem<kHeadDim, kG>()));
    SB_CUDA_RETURN_IF_ERROR(LaunchPdl(sb_attn_decode_split_mma_kernel<kHeadDim, kG>, grid, dim3(kDecodeThreads),
                                      SbDecodeMmaTraits<kHeadDim, kG>::kSmemBytes, stream, p, log2_bs,
                                      split.keys_per_split, split.num_splits, o_part, p_part, flags, done));
  } else {
    SB_CUDA_RETURN_IF_ERROR(LaunchPdl(sb_attn_decode_split_bf16_kernel<kHeadDim, kG>, grid, dim3(kDecodeThreads), 0,
                                      stream, p, log2_bs, split.keys_per_split, split.num_splits, o_part, p_part,
                                      flags, done));
  }
  if (done != nullptr) return absl::OkStatus();
  // The combine is a programmatic dependent launch: its CTAs are scheduled while the last split
  // CTAs run and wait in griddepcontrol.wait for the split grid's results, which hides the launch
  // gap between the two kernels.
  SB_CUDA_RETURN_IF_ERROR(LaunchPdl(sb_attn_decode_combine_bf16_kernel<kHeadDim>, dim3(p.batch * p.num_heads),
                                    dim3(kHeadDim * kCombineGroups), 0, stream, p, log2_bs, split.keys_per_split,
                                    split.num_splits, static_cast<const float*>(o_part),
                                    static_cast<const float*>(p_part)));
  return absl::OkStatus();
}

// Split-kernel CTAs resident per SM (queried once per process; the kernel's resources are fixed).
template <int kHeadDim, int kG>
int SbAttnDecodeCtasPerSm(bool tensor_core) {
  static const int cuda_core = [] {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, sb_attn_decode_split_bf16_kernel<kHeadDim, kG>,
                                                      kDecodeThreads, 0) != cudaSuccess)
      return 0;
    return blocks;
  }();
  static const int mma = [] {
    int blocks = 0;
    if (SbDecodeMmaAllowSmem<kHeadDim, kG>() != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, sb_attn_decode_split_mma_kernel<kHeadDim, kG>,
                                                      kDecodeThreads, SbDecodeMmaTraits<kHeadDim, kG>::kSmemBytes) !=
            cudaSuccess)
      return 0;
    return blocks;
  }();
  return tensor_core ? mma : cuda_core;
}

}  // namespace sbserve::kernels
