#include "kernels/sb_attn_decode_launch.cuh"

namespace sbserve::kernels {
template absl::Status LaunchSbAttnDecode<128, 1>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 2>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 4>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 6>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 8>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template int SbAttnDecodeCtasPerSm<128, 1>(bool);
template int SbAttnDecodeCtasPerSm<128, 2>(bool);
template int SbAttnDecodeCtasPerSm<128, 4>(bool);
template int SbAttnDecodeCtasPerSm<128, 6>(bool);
template int SbAttnDecodeCtasPerSm<128, 8>(bool);
}  // namespace sbserve::kernels
