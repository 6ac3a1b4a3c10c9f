#include "kernels/sb_attn_decode_launch.cuh"

namespace sbserve::kernels {
template absl::Status LaunchSbAttnDecode<128, 1>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 2>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 4>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 6>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 8>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
}  // namespace sbserve::kernels
