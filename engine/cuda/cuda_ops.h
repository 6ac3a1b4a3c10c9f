// Element-wise and row-wise CUDA kernels of the CUDA backend (everything but GEMMs and attention).
// Activations between GEMMs are bf16; the residual stream is fp32.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

struct CUstream_st;

namespace sbserve::cuda {

// h[t, :] = float(wte[ids[t], :]) * m_emb.            wte [V, D] bf16, h [N, D] fp32
absl::Status Embed(const int32_t* ids, const void* wte, int64_t n, int64_t dim, float m_emb, float* h,
                   CUstream_st* stream);

// y[r, :] = bf16(norm(x[rows ? rows[r] : r, :]) * w (+ b)).   x [*, D] fp32, y [n, D] bf16
absl::Status Norm(bool rms, const float* x, const int32_t* rows, int64_t n, int64_t dim, const float* w,
                  const float* b, float eps, void* y, CUstream_st* stream);

// Splits c_attn output [N, Hkv, (G+2) d] (+ bias [(G+2) d Hkv]) into q [N, H, d], k/v [N, Hkv, d] (bf16).
absl::Status SplitQkv(const void* qkv, const float* bias, int64_t n, int num_kv_heads, int group, int head_dim,
                      void* q, void* k, void* v, CUstream_st* stream);

// h[i] += r * (y[i] + bias[i % D]).   y fp32 [N, D]
absl::Status ResidualAdd(float* h, const float* y, const float* bias, int64_t n, int64_t dim, float r,
                         CUstream_st* stream);

// GLU: out[t, i] = act(fc[t, I + i] + bg) * (fc[t, i] + bu); plain: out = act(fc + b).  bf16 in and out.
// act: 0 silu, 1 gelu (erf), 2 gelu tanh, 3 relu.
absl::Status Activation(int act, bool glu, const void* fc, const float* bias, int64_t n, int64_t inner, void* out,
                        CUstream_st* stream);

// dst[i] = bf16(src[i]).
absl::Status F32ToBf16(const float* src, int64_t n, void* dst, CUstream_st* stream);

// Fed tokens of an overlapped step: ids[pairs[2i]] = src[pairs[2i + 1]] for i < n (src: the drawn
// ids of the step launched before).
absl::Status FeedTokens(int32_t* ids, const int32_t* pairs, int n, const int32_t* src, CUstream_st* stream);

}  // namespace sbserve::cuda
