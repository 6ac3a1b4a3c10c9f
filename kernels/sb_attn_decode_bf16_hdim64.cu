#include "kernels/sb_attn_decode_launch.cuh"

namespace sbserve::kernels {
template absl::Status LaunchSbAttnDecode<64, 1>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template absl::Status LaunchSbAttnDecode<64, 2>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template absl::Status LaunchSbAttnDecode<64, 4>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template absl::Status LaunchSbAttnDecode<64, 6>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template absl::Status LaunchSbAttnDecode<64, 8>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, bool, cudaStream_t);
template int SbAttnDecodeCtasPerSm<64, 1>(bool);
template int SbAttnDecodeCtasPerSm<64, 2>(bool);
template int SbAttnDecodeCtasPerSm<64, 4>(bool);
template int SbAttnDecodeCtasPerSm<64, 6>(bool);
template int SbAttnDecodeCtasPerSm<64, 8>(bool);
}  // namespace sbserve::kernels
