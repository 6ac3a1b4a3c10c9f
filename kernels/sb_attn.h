// Host entry points of the stick-breaking attention kernels. Every call is asynchronous on
// `stream` and returns INVALID_ARGUMENT for an unsupported shape (the message lists what is
// supported) or INTERNAL naming the failed CUDA statement.
//
// Supported: bf16 q/k/v/o, fp32 rem; head_dim 64 and 128; any H % Hkv == 0; block size a power
// of two >= 1. Order within one step: SbKvAppend, then SbAttnPrefill / SbAttnDecode.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/sb_attn_params.h"

namespace sbserve::kernels {

absl::Status SbKvAppend(const SbKvAppendParams& params, CUstream_st* stream);

absl::Status SbAttnPrefill(const SbAttnPrefillParams& params, CUstream_st* stream);

// The prefill kernel SbAttnPrefill runs for these parameters: params.kernel, else
// SBSERVE_PREFILL_KERNEL=mma|wgmma|wgmma-wide, else the default: the wide wgmma kernel when
// max_seqlen_q >= kWidePrefillMinSeqlen without early exit, the mma kernel otherwise. A wgmma
// kernel runs only where it can (an sm_90a build on a device of compute capability 9.0, head_dim
// 64; the mma kernel otherwise); the wide one has no early exit (the 1-warpgroup one runs instead).
inline constexpr int kWidePrefillMinSeqlen = 8192;
SbPrefillKernel SbAttnPrefillKernelFor(const SbAttnPrefillParams& params);
// "mma", "wgmma", "wgmma-wide" ("auto" for kAuto): the names SBSERVE_PREFILL_KERNEL takes.
const char* SbPrefillKernelName(SbPrefillKernel kernel);
// Whether that is one of the wgmma kernels.
bool SbAttnPrefillUsesWgmma(const SbAttnPrefillParams& params);
// Whether the wgmma prefill can run here for this head_dim (what SbPrefillKernel::kWgmma needs).
bool SbAttnPrefillHasWgmma(int head_dim);

// Whether SbAttnDecode runs the tensor-core split kernel for these parameters (params.kernel, else
// SBSERVE_DECODE_KERNEL=cuda-core|tensor-core in the environment, else the default).
bool SbAttnDecodeUsesTensorCores(const SbAttnDecodeParams& params);

// Bytes of scratch SbAttnDecode needs for these shapes (depends on batch, heads, head_dim,
// max_context, num_sms, keys_per_split, the split kernel and whether the early exit is on).
size_t SbAttnDecodeWorkspaceBytes(const SbAttnDecodeParams& params);
absl::Status SbAttnDecode(const SbAttnDecodeParams& params, CUstream_st* stream);

}  // namespace sbserve::kernels
