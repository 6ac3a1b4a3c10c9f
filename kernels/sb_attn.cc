// Entry points of the stick-breaking attention kernels: argument checks and the single
// runtime -> template dispatch.
#include "kernels/sb_attn.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_check.h"
#include "kernels/sb_attn_launch.h"
#include "kernels/static_switch.h"

namespace sbserve::kernels {
namespace {

int Log2IfPow2(int v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

absl::Status CheckCommon(const SbKvCache& cache, int heads, int kv_heads, int head_dim, float scale) {
  if (cache.k == nullptr || cache.v == nullptr || cache.block_tables == nullptr)
    return absl::InvalidArgumentError("stick-breaking attention: KV cache pointers must be set");
  if (Log2IfPow2(cache.block_size) < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("stick-breaking attention: block_size ", cache.block_size, " must be a power of two"));
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat("stick-breaking attention: num_heads ", heads,
                                                   " must be a positive multiple of num_kv_heads ", kv_heads));
  if (head_dim != 64 && head_dim != 128)
    return absl::InvalidArgumentError(absl::StrCat("stick-breaking attention: head_dim ", head_dim,
                                                   " is not supported (supported: bf16 with head_dim 64, 128)"));
  if (!(scale > 0.f) || scale > 1e30f)
    return absl::InvalidArgumentError(absl::StrCat("stick-breaking attention: scale ", scale, " must be finite and > 0"));
  return absl::OkStatus();
}

SbDecodeSplit ChooseDecodeSplit(const SbAttnDecodeParams& p, int num_sms) {
  // Enough CTAs for ~16 per SM, but at most 1024 keys per CTA (a slot then walks <= 64 keys).
  const int max_keys = std::max(1, p.max_context - 1);
  const int64_t pairs = static_cast<int64_t>(p.batch) * p.num_kv_heads;
  const int64_t want_splits = std::max<int64_t>(1, (16LL * num_sms + pairs - 1) / pairs);
  int kps = static_cast<int>((max_keys + want_splits - 1) / want_splits);
  kps = std::clamp((kps + 63) / 64 * 64, 64, 1024);
  SbDecodeSplit s;
  s.keys_per_split = kps;
  s.num_splits = (max_keys + kps - 1) / kps;
  return s;
}

int NumSms(int hint) {
  if (hint > 0) return hint;
  int dev = 0;
  int sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 132;
  return sms;
}

}  // namespace

absl::Status SbAttnPrefill(const SbAttnPrefillParams& p, CUstream_st* stream) {
  if (absl::Status s = CheckCommon(p.cache, p.num_heads, p.num_kv_heads, p.head_dim, p.scale); !s.ok()) return s;
  if (p.batch < 0 || p.total_q < 0 || p.max_seqlen_q < 0)
    return absl::InvalidArgumentError("stick-breaking prefill: negative batch, total_q or max_seqlen_q");
  if (p.batch == 0 || p.total_q == 0 || p.max_seqlen_q == 0) return absl::OkStatus();
  if (p.q == nullptr || p.o == nullptr || p.cu_seqlens_q == nullptr || p.context_lens == nullptr)
    return absl::InvalidArgumentError("stick-breaking prefill: q, o, cu_seqlens_q and context_lens must be set");
  if (p.remainder == SbRemainder::kHeadBias && p.head_bias == nullptr)
    return absl::InvalidArgumentError("stick-breaking prefill: the head-bias remainder needs head_bias");
  if (p.batch > 65535) return absl::InvalidArgumentError("stick-breaking prefill: batch above 65535");
  const int log2_bs = Log2IfPow2(p.cache.block_size);
  return SB_HEADDIM_SWITCH(p.head_dim, kHeadDim,
                           [&] { return LaunchSbAttnPrefill<kHeadDim>(p, log2_bs, stream); });
}

size_t SbAttnDecodeWorkspaceBytes(const SbAttnDecodeParams& p) {
  if (p.batch <= 0 || p.num_heads <= 0) return 0;
  const SbDecodeSplit split = ChooseDecodeSplit(p, NumSms(p.num_sms));
  return static_cast<size_t>(p.batch) * p.num_heads * split.num_splits * (p.head_dim + 1) * sizeof(float);
}

absl::Status SbAttnDecode(const SbAttnDecodeParams& p, CUstream_st* stream) {
  if (absl::Status s = CheckCommon(p.cache, p.num_heads, p.num_kv_heads, p.head_dim, p.scale); !s.ok()) return s;
  if (p.batch < 0) return absl::InvalidArgumentError("stick-breaking decode: negative batch");
  if (p.batch == 0) return absl::OkStatus();
  if (p.q == nullptr || p.o == nullptr || p.context_lens == nullptr || p.workspace == nullptr)
    return absl::InvalidArgumentError("stick-breaking decode: q, o, context_lens and workspace must be set");
  if (p.remainder == SbRemainder::kHeadBias && p.head_bias == nullptr)
    return absl::InvalidArgumentError("stick-breaking decode: the head-bias remainder needs head_bias");
  if (p.max_context < 1) return absl::InvalidArgumentError("stick-breaking decode: max_context must be >= 1");
  if (p.batch > 65535) return absl::InvalidArgumentError("stick-breaking decode: batch above 65535");
  const int log2_bs = Log2IfPow2(p.cache.block_size);
  const SbDecodeSplit split = ChooseDecodeSplit(p, NumSms(p.num_sms));
  const int group = p.num_heads / p.num_kv_heads;
  return SB_HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
    return SB_DECODE_GROUP_SWITCH(group, kG, [&] {
      return LaunchSbAttnDecode<kHeadDim, kG>(p, log2_bs, split, stream);
    });
  });
}

}  // namespace sbserve::kernels
