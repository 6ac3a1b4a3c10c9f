#include "kernels/sb_attn_prefill_launch.cuh"

namespace sbserve::kernels {
template absl::Status LaunchSbAttnPrefill<64>(const SbAttnPrefillParams&, int, SbPrefillKernel, cudaStream_t);
}  // namespace sbserve::kernels
