// Host launch of the varlen prefill kernel for one head dim (instantiated in
// sb_attn_prefill_bf16_hdim*.cu, dispatched from sb_attn.cu).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "kernels/cuda_check.h"
#include "kernels/sb_attn_launch.h"
#include "kernels/sb_attn_params.h"
#include "kernels/sb_attn_prefill_kernel.cuh"

namespace sbserve::kernels {

// Tile shapes: d = 64 gives each warp two m16 tiles so every K/V fragment read from shared memory
// feeds two MMAs (one m-tile per warp makes shared-memory reads as costly as the softplus);
// d = 128 keeps one m-tile per warp so that O and S fit the register file. Both re-read Q
// fragments from shared memory for every key tile: the freed registers let 3 (d = 64) or 2
// (d = 128) CTAs share an SM, which measured 16% faster at d = 128 and within +-4% at d = 64
// (H100, tests/bench/kernels.md).
template <int kHeadDim>
struct SbPrefillConfig;
template <>
struct SbPrefillConfig<64> {
  using Traits = SbPrefillTraits<64, 4, 2, 3, false>;
};
template <>
struct SbPrefillConfig<128> {
  using Traits = SbPrefillTraits<128, 8, 1, 2, false>;
};

template <int kHeadDim>
absl::Status LaunchSbAttnPrefill(const SbAttnPrefillParams& p, int log2_bs, cudaStream_t stream) {
  using Tr = typename SbPrefillConfig<kHeadDim>::Traits;
  auto kernel = p.early_exit_log_threshold > 0.f ? sb_attn_prefill_bf16_kernel<Tr, true>
                                                 : sb_attn_prefill_bf16_kernel<Tr, false>;
  SB_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  const dim3 grid(p.num_heads, p.batch, (p.max_seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM);
  kernel<<<grid, Tr::kNThreads, Tr::kSmemBytes, stream>>>(SbPrefillKernelParams::From(p), log2_bs);
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

}  // namespace sbserve::kernels
