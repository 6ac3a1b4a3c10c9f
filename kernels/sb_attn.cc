// Entry points of the stick-breaking attention kernels: argument checks and the single
// runtime -> template dispatch.
#include "kernels/sb_attn.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <utility>

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

// Query heads per decode CTA: the largest of 8, 6, 4, 2, 1 dividing G (as SB_DECODE_GROUP_SWITCH).
int DecodeHeadsPerCta(int group) {
  for (int k : {8, 6, 4, 2}) {
    if (group % k == 0) return k;
  }
  return 1;
}

int DecodeCtasPerSm(int head_dim, int heads_per_cta, bool tc) {
  switch (heads_per_cta * 1000 + head_dim) {
    case 1064: return SbAttnDecodeCtasPerSm<64, 1>(tc);
    case 2064: return SbAttnDecodeCtasPerSm<64, 2>(tc);
    case 4064: return SbAttnDecodeCtasPerSm<64, 4>(tc);
    case 6064: return SbAttnDecodeCtasPerSm<64, 6>(tc);
    case 8064: return SbAttnDecodeCtasPerSm<64, 8>(tc);
    case 1128: return SbAttnDecodeCtasPerSm<128, 1>(tc);
    case 2128: return SbAttnDecodeCtasPerSm<128, 2>(tc);
    case 4128: return SbAttnDecodeCtasPerSm<128, 4>(tc);
    case 6128: return SbAttnDecodeCtasPerSm<128, 6>(tc);
    case 8128: return SbAttnDecodeCtasPerSm<128, 8>(tc);
    default: return 0;
  }
}

// The choice named by environment variable `var` among `choices` (name, value); kAuto when it is
// unset or names none of them.
template <typename Kernel>
Kernel KernelFromEnv(const char* var, std::initializer_list<std::pair<const char*, Kernel>> choices) {
  const char* e = std::getenv(var);
  if (e != nullptr)
    for (const auto& [name, value] : choices)
      if (std::strcmp(e, name) == 0) return value;
  return Kernel::kAuto;
}

// SBSERVE_PREFILL_KERNEL=mma, wgmma, wgmma-wide, wgmma-tma or wgmma-wide-tma overrides the default
// prefill kernel (A/B runs); the wgmma ones still need a device and build that can run them.
SbPrefillKernel PrefillKernelFromEnv() {
  using enum SbPrefillKernel;
  static const SbPrefillKernel k = KernelFromEnv<SbPrefillKernel>(
      "SBSERVE_PREFILL_KERNEL", {{SbPrefillKernelName(kMma), kMma},
                                 {SbPrefillKernelName(kWgmma), kWgmma},
                                 {SbPrefillKernelName(kWgmmaWide), kWgmmaWide},
                                 {SbPrefillKernelName(kWgmmaTma), kWgmmaTma},
                                 {SbPrefillKernelName(kWgmmaWideTma), kWgmmaWideTma}});
  return k;
}

// Whether the kernels were compiled for sm_90a (the only target with wgmma).
constexpr bool WgmmaBuilt() {
#ifdef SBSERVE_KERNELS_SM90A
  return true;
#else
  return false;
#endif
}

// Whether the current device has compute capability 9.0 (sm_90a code runs only there).
bool DeviceIsSm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
}

// SBSERVE_DECODE_KERNEL=cuda-core or tensor-core overrides the default split kernel (A/B runs).
SbDecodeKernel DecodeKernelFromEnv() {
  static const SbDecodeKernel k = KernelFromEnv<SbDecodeKernel>(
      "SBSERVE_DECODE_KERNEL", {{"cuda-core", SbDecodeKernel::kCudaCore}, {"tensor-core", SbDecodeKernel::kTensorCore}});
  return k;
}

SbDecodeSplit ChooseDecodeSplit(const SbAttnDecodeParams& p, int num_sms, bool tc) {
  const int max_keys = std::max(1, p.max_context - 1);
  int kps = p.keys_per_split;
  if (kps <= 0) {
    // Enough CTAs for ~16 per SM, but at most 1024 keys per CTA (a slot then walks <= 64 keys).
    const int64_t pairs = static_cast<int64_t>(p.batch) * p.num_kv_heads;
    const int64_t want_splits = std::max<int64_t>(1, (16LL * num_sms + pairs - 1) / pairs);
    kps = static_cast<int>((max_keys + want_splits - 1) / want_splits);
    kps = std::clamp((kps + 63) / 64 * 64, 64, 1024);
    // Few sequences: the CTAs resident at once (registers bound them: 7 per SM at d = 64 with one
    // head per CTA, 3 at d = 128 with 4) hold several splits of every (sequence, head group), and
    // the rule above gives several waves of short CTAs (1 x 32768 at d = 128, 32 heads on 8 KV
    // heads: 2048 CTAs of 128 keys, 44% of copy bandwidth on the H100 then; see tests/bench/kernels.md). Take one wave of longer
    // CTAs instead.
    const int heads_per_cta = DecodeHeadsPerCta(p.num_heads / p.num_kv_heads);
    const int64_t ctas_per_split = static_cast<int64_t>(p.batch) * (p.num_heads / heads_per_cta);
    const int64_t resident = static_cast<int64_t>(DecodeCtasPerSm(p.head_dim, heads_per_cta, tc)) * num_sms;
    const int64_t splits = (max_keys + kps - 1) / kps;
    const int64_t one_wave = resident / ctas_per_split;  // splits per (sequence, head group)
    if (one_wave >= 2 && ctas_per_split * splits > resident)
      kps = static_cast<int>(((max_keys + one_wave - 1) / one_wave + 63) / 64 * 64);
  }
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
  if (!SbRowStrideValid(p.q_row_stride, static_cast<int64_t>(p.num_heads) * p.head_dim) ||
      p.q_row_stride > (int64_t{1} << 30))
    return absl::InvalidArgumentError("stick-breaking prefill: q_row_stride must be 0 or a multiple of 8 in [H * d, 2^30]");
  if (!(p.early_exit_log_threshold >= 0.f) || p.early_exit_log_threshold > 1e30f)
    return absl::InvalidArgumentError("stick-breaking prefill: early_exit_log_threshold must be finite and >= 0");
  const int log2_bs = Log2IfPow2(p.cache.block_size);
  const SbPrefillKernel kernel = SbAttnPrefillKernelFor(p);
  return SB_HEADDIM_SWITCH(p.head_dim, kHeadDim,
                           [&] { return LaunchSbAttnPrefill<kHeadDim>(p, log2_bs, kernel, stream); });
}

const char* SbPrefillKernelName(SbPrefillKernel kernel) {
  switch (kernel) {
    case SbPrefillKernel::kMma: return "mma";
    case SbPrefillKernel::kWgmma: return "wgmma";
    case SbPrefillKernel::kWgmmaWide: return "wgmma-wide";
    case SbPrefillKernel::kWgmmaTma: return "wgmma-tma";
    case SbPrefillKernel::kWgmmaWideTma: return "wgmma-wide-tma";
    case SbPrefillKernel::kAuto: break;
  }
  return "auto";
}

bool SbAttnPrefillHasWgmma(int head_dim) { return head_dim == 64 && WgmmaBuilt() && DeviceIsSm90(); }

SbPrefillKernel SbAttnPrefillKernelFor(const SbAttnPrefillParams& p) {
  SbPrefillKernel k = p.kernel;
  if (k == SbPrefillKernel::kAuto) k = PrefillKernelFromEnv();
  const bool early_exit = p.early_exit_log_threshold > 0.f;
  // Default: the mma kernel, except for long sequences without early exit on sm_90, where the wide
  // wgmma kernel (192 query rows per K/V tile) runs. The 1-warpgroup wgmma kernel measured at parity
  // with the mma kernel (0-14% slower by row on the H200); the wide one faster from
  // kWidePrefillMinSeqlen rows on (tests/bench/kernels.md). Below it the default path asks the
  // device nothing.
  if (k == SbPrefillKernel::kAuto) {
    k = !early_exit && p.max_seqlen_q >= kWidePrefillMinSeqlen && SbAttnPrefillHasWgmma(p.head_dim)
            ? SbPrefillKernel::kWgmmaWide
            : SbPrefillKernel::kMma;
  }
  // A TMA box holds a key pair of one block, and the tensor maps span num_blocks slots with 32-bit
  // coordinates: otherwise the same kernel with cp.async loads runs (the line after handles early
  // exit for both).
  const int64_t slots = int64_t{p.cache.num_blocks} * p.cache.block_size;
  if ((k == SbPrefillKernel::kWgmmaTma || k == SbPrefillKernel::kWgmmaWideTma) &&
      (early_exit || p.cache.block_size < 2 || slots < 1 || slots > INT32_MAX))
    k = k == SbPrefillKernel::kWgmmaTma ? SbPrefillKernel::kWgmma : SbPrefillKernel::kWgmmaWide;
  if (k == SbPrefillKernel::kWgmmaWide && early_exit) k = SbPrefillKernel::kWgmma;
  if (k != SbPrefillKernel::kMma && !SbAttnPrefillHasWgmma(p.head_dim)) k = SbPrefillKernel::kMma;
  return k;
}

bool SbAttnPrefillUsesWgmma(const SbAttnPrefillParams& p) { return SbAttnPrefillKernelFor(p) != SbPrefillKernel::kMma; }

bool SbAttnDecodeUsesTensorCores(const SbAttnDecodeParams& p) {
  SbDecodeKernel k = p.kernel;
  if (k == SbDecodeKernel::kAuto) k = DecodeKernelFromEnv();
  // Default: tensor cores when query heads share a KV head (GQA, MQA), where they read each K/V
  // row once for the whole group instead of once per group of lanes (tests/bench/kernels.md,
  // H200: 32 x 128 on 8 KV heads 70 -> 91% of copy at B = 64, 54 -> 76% at B = 1 x 32768). With
  // one query head per KV head both kernels measured within 2% of each other; the CUDA-core one
  // stays.
  if (k == SbDecodeKernel::kAuto)
    k = p.num_kv_heads > 0 && p.num_heads / p.num_kv_heads >= 2 ? SbDecodeKernel::kTensorCore
                                                                : SbDecodeKernel::kCudaCore;
  return k == SbDecodeKernel::kTensorCore;
}

size_t SbAttnDecodeWorkspaceBytes(const SbAttnDecodeParams& p) {
  if (p.batch <= 0 || p.num_heads <= 0) return 0;
  const SbDecodeSplit split = ChooseDecodeSplit(p, NumSms(p.num_sms), SbAttnDecodeUsesTensorCores(p));
  // o and P partials, plus one published-flag per partial with the early exit.
  const int per_part = p.head_dim + 1 + (p.early_exit_log_threshold > 0.f ? 1 : 0);
  return static_cast<size_t>(p.batch) * p.num_heads * split.num_splits * per_part * sizeof(float);
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
  if (!SbRowStrideValid(p.q_row_stride, static_cast<int64_t>(p.num_heads) * p.head_dim))
    return absl::InvalidArgumentError("stick-breaking decode: q_row_stride must be 0 or a multiple of 8 of at least H * d");
  if (!(p.early_exit_log_threshold >= 0.f) || p.early_exit_log_threshold > 1e30f)
    return absl::InvalidArgumentError("stick-breaking decode: early_exit_log_threshold must be finite and >= 0");
  if (p.keys_per_split < 0 || p.keys_per_split % 64 != 0)
    return absl::InvalidArgumentError("stick-breaking decode: keys_per_split must be 0 or a positive multiple of 64");
  if ((p.k_new == nullptr) != (p.v_new == nullptr))
    return absl::InvalidArgumentError("stick-breaking decode: k_new and v_new must be set together");
  if (!SbRowStrideValid(p.kv_row_stride, static_cast<int64_t>(p.num_kv_heads) * p.head_dim))
    return absl::InvalidArgumentError("stick-breaking decode: kv_row_stride must be 0 or a multiple of 8 of at least Hkv * d");
  const int log2_bs = Log2IfPow2(p.cache.block_size);
  const bool tc = SbAttnDecodeUsesTensorCores(p);
  const SbDecodeSplit split = ChooseDecodeSplit(p, NumSms(p.num_sms), tc);
  if (p.early_exit_log_threshold > 0.f && split.num_splits > 65535)
    return absl::InvalidArgumentError("stick-breaking decode: early exit supports at most 65535 key chunks");
  const int group = p.num_heads / p.num_kv_heads;
  return SB_HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
    return SB_DECODE_GROUP_SWITCH(group, kG, [&] {
      return LaunchSbAttnDecode<kHeadDim, kG>(p, log2_bs, split, tc, stream);
    });
  });
}

}  // namespace sbserve::kernels
