#include "kernels/sb_attn_decode_launch.cuh"

namespace sbserve::kernels {
template absl::Status LaunchSbAttnDecode<128, 1>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 2>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 4>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 6>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template absl::Status LaunchSbAttnDecode<128, 8>(const SbAttnDecodeParams&, int, const SbDecodeSplit&, cudaStream_t);
template int SbAttnDecodeCtasPerSm<128, 1>();
template int SbAttnDecodeCtasPerSm<128, 2>();
template int SbAttnDecodeCtasPerSm<128, 4>();
template int SbAttnDecodeCtasPerSm<128, 6>();
template int SbAttnDecodeCtasPerSm<128, 8>();
}  // namespace sbserve::kernels
