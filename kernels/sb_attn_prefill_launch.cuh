// Host launch of the varlen prefill kernel for one head dim (instantiated in
// sb_attn_prefill_bf16_hdim*.cu, dispatched from sb_attn.cu).
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda_check.h"
#include "kernels/sb_attn_launch.h"
#include "kernels/sb_attn_params.h"
#include "kernels/sb_attn_prefill_kernel.cuh"
#include "kernels/sb_attn_prefill_sm90_kernel.cuh"

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

// The Hopper kernel (d = 64): one warpgroup of 64 rows per CTA and 4 stages of (K, V) tiles, so
// that 3 CTAs (73 KB of shared memory each) share an SM. SB_PREFILL_SM90_WG / _STAGES / _MIN_BLOCKS
// build variants for measurements. The wide one (SbPrefillKernel::kWgmmaWide): 3 warpgroups of
// 64 rows share each tile, one CTA (89 KB) per SM: as many warps per SM, a third of the K/V reads.
#ifndef SB_PREFILL_SM90_WG
#define SB_PREFILL_SM90_WG 1
#endif
#ifndef SB_PREFILL_SM90_STAGES
#define SB_PREFILL_SM90_STAGES 4
#endif
#ifndef SB_PREFILL_SM90_MIN_BLOCKS
#define SB_PREFILL_SM90_MIN_BLOCKS 3
#endif
using SbPrefillSm90Config =
    SbPrefillSm90Traits<64, SB_PREFILL_SM90_WG, SB_PREFILL_SM90_STAGES, SB_PREFILL_SM90_MIN_BLOCKS>;
using SbPrefillSm90WideConfig = SbPrefillSm90Traits<64, 3, 4, 1>;

// `extra`: the kernel's arguments after (params, log2_bs), e.g. the TMA kernels' tensor maps.
template <typename Tr, typename Kernel, typename... Extra>
absl::Status LaunchPrefillKernel(Kernel kernel, const SbAttnPrefillParams& p, int log2_bs, cudaStream_t stream,
                                 const Extra&... extra) {
  SB_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  const dim3 grid(p.num_heads, p.batch, (p.max_seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM);
  kernel<<<grid, Tr::kNThreads, Tr::kSmemBytes, stream>>>(SbPrefillKernelParams::From(p), log2_bs, extra...);
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

// The tensor maps of the TMA kernels: the K and V caches as [slots][Hkv][64] bf16, boxes of
// 2 slots x 1 head x 64 dims, 128-byte swizzled. The encoder comes from the driver at first use
// (the runtime links no libcuda).
inline absl::Status SbKvTmaMapsFor(const SbKvCache& cache, int num_kv_heads, SbKvTmaMaps* maps) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return absl::InternalError("stick-breaking prefill: the driver has no cuTensorMapEncodeTiled");
  const cuuint64_t dims[3] = {64, static_cast<cuuint64_t>(num_kv_heads),
                              static_cast<cuuint64_t>(cache.num_blocks) * static_cast<cuuint64_t>(cache.block_size)};
  const cuuint64_t strides[2] = {64 * 2, static_cast<cuuint64_t>(num_kv_heads) * 64 * 2};
  const cuuint32_t box[3] = {64, 1, 2};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  for (auto [map, base] : {std::pair{&maps->k, cache.k}, std::pair{&maps->v, cache.v}}) {
    const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, base, dims, strides, box, elem_strides,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
      return absl::InternalError(absl::StrCat("stick-breaking prefill: cuTensorMapEncodeTiled failed (", r, ")"));
  }
  return absl::OkStatus();
}

template <typename Tr>
absl::Status LaunchPrefillTmaKernel(const SbAttnPrefillParams& p, int log2_bs, cudaStream_t stream) {
  SbKvTmaMaps maps;
  if (absl::Status st = SbKvTmaMapsFor(p.cache, p.num_kv_heads, &maps); !st.ok()) return st;
  return LaunchPrefillKernel<Tr>(sb_attn_prefill_sm90_tma_kernel<Tr>, p, log2_bs, stream, maps);
}

template <int kHeadDim>
absl::Status LaunchSbAttnPrefill(const SbAttnPrefillParams& p, int log2_bs, SbPrefillKernel kernel,
                                 cudaStream_t stream) {
  const bool early_exit = p.early_exit_log_threshold > 0.f;
  const bool wgmma = kernel != SbPrefillKernel::kMma;
  if constexpr (kHeadDim == 64) {
    // SbAttnPrefillKernelFor: no TMA kernel with early exit or with blocks of one slot.
    if (kernel == SbPrefillKernel::kWgmmaTma && !early_exit)
      return LaunchPrefillTmaKernel<SbPrefillSm90Config>(p, log2_bs, stream);
    if (kernel == SbPrefillKernel::kWgmmaWideTma && !early_exit)
      return LaunchPrefillTmaKernel<SbPrefillSm90WideConfig>(p, log2_bs, stream);
    if (kernel == SbPrefillKernel::kWgmmaWide && !early_exit) {  // SbAttnPrefillKernelFor: no wide early exit
      using Tr = SbPrefillSm90WideConfig;
      return LaunchPrefillKernel<Tr>(sb_attn_prefill_sm90_kernel<Tr, false>, p, log2_bs, stream);
    }
    if (wgmma) {
      using Tr = SbPrefillSm90Config;
      return LaunchPrefillKernel<Tr>(
          early_exit ? sb_attn_prefill_sm90_kernel<Tr, true> : sb_attn_prefill_sm90_kernel<Tr, false>, p, log2_bs,
          stream);
    }
  }
  if (wgmma) return absl::InternalError("stick-breaking prefill: no wgmma kernel for this head_dim");
  using Tr = typename SbPrefillConfig<kHeadDim>::Traits;
  return LaunchPrefillKernel<Tr>(
      early_exit ? sb_attn_prefill_bf16_kernel<Tr, true> : sb_attn_prefill_bf16_kernel<Tr, false>, p, log2_bs, stream);
}

}  // namespace sbserve::kernels
