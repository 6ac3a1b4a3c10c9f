#include "kernels/sb_attn_prefill_launch.cuh"

namespace sbserve::kernels {
template absl::Status LaunchSbAttnPrefill<128>(const SbAttnPrefillParams&, int, bool, cudaStream_t);
}  // namespace sbserve::kernels
