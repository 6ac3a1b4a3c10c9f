// Appends the K/V rows of a packed batch to the paged cache: token t of sequence b goes to
// position T - q_len + t. One CTA per token; a token's [Hkv, d] rows are contiguous in both the
// packed input (rows kv_row_stride apart) and the cache slot, so it is one 16-byte-wide copy.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda_check.h"
#include "kernels/pdl.h"
#include "kernels/sb_attn.h"
#include "kernels/sb_attn_device.cuh"
#include "kernels/sb_attn_launch.h"

namespace sbserve::kernels {
namespace {

__global__ void __launch_bounds__(128)
    sb_kv_append_bf16_kernel(const SbKvAppendParams p, const int log2_bs, const int vec_per_token,
                             const int64_t src_vec_stride) {
  PdlWait();  // launched as a programmatic dependent: k and v come from the kernel before
  PdlLaunchDependents();  // the decode attention after it may be scheduled (it waits for this grid)
  const int token = blockIdx.x;
  // Sequence of the token: last b with cu_seqlens_q[b] <= token.
  int lo = 0;
  int hi = p.batch - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.cu_seqlens_q[mid] <= token) lo = mid; else hi = mid - 1;
  }
  const int b = lo;
  const int q_start = p.cu_seqlens_q[b];
  const int q_len = p.cu_seqlens_q[b + 1] - q_start;
  const int pos = p.context_lens[b] - q_len + (token - q_start);
  const int64_t slot = device::CacheSlot(p.cache, b, pos, log2_bs);
  const uint4* k_src = static_cast<const uint4*>(p.k) + static_cast<int64_t>(token) * src_vec_stride;
  const uint4* v_src = static_cast<const uint4*>(p.v) + static_cast<int64_t>(token) * src_vec_stride;
  uint4* k_dst = static_cast<uint4*>(p.cache.k) + slot * vec_per_token;
  uint4* v_dst = static_cast<uint4*>(p.cache.v) + slot * vec_per_token;
  for (int i = threadIdx.x; i < vec_per_token; i += blockDim.x) {
    k_dst[i] = k_src[i];
    v_dst[i] = v_src[i];
  }
}

}  // namespace

absl::Status SbKvAppend(const SbKvAppendParams& p, CUstream_st* stream) {
  if (p.batch < 0 || p.total_q < 0) return absl::InvalidArgumentError("kv append: negative batch or total_q");
  if (p.batch == 0 || p.total_q == 0) return absl::OkStatus();
  if (p.k == nullptr || p.v == nullptr || p.cu_seqlens_q == nullptr || p.context_lens == nullptr ||
      p.cache.k == nullptr || p.cache.v == nullptr || p.cache.block_tables == nullptr)
    return absl::InvalidArgumentError("kv append: every pointer must be set");
  const int bs = p.cache.block_size;
  if (bs <= 0 || (bs & (bs - 1)) != 0)
    return absl::InvalidArgumentError("kv append: block_size must be a power of two");
  if (p.num_kv_heads <= 0 || p.head_dim <= 0 || (p.num_kv_heads * p.head_dim) % 8 != 0)
    return absl::InvalidArgumentError("kv append: num_kv_heads * head_dim must be a positive multiple of 8");
  int log2_bs = 0;
  while ((1 << log2_bs) < bs) ++log2_bs;
  const int vec_per_token = p.num_kv_heads * p.head_dim / 8;
  if (!SbRowStrideValid(p.kv_row_stride, static_cast<int64_t>(p.num_kv_heads) * p.head_dim))
    return absl::InvalidArgumentError("kv append: kv_row_stride must be 0 or a multiple of 8 of at least Hkv * d");
  const int64_t src_vec_stride = p.kv_row_stride != 0 ? p.kv_row_stride / 8 : vec_per_token;
  SB_CUDA_RETURN_IF_ERROR(LaunchPdl(sb_kv_append_bf16_kernel, dim3(p.total_q), dim3(128), 0, stream, p, log2_bs,
                                    vec_per_token, src_vec_stride));
  return absl::OkStatus();
}

}  // namespace sbserve::kernels
