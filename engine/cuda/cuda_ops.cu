#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "engine/cuda/activation.cuh"
#include "engine/cuda/cuda_ops.h"
#include "kernels/cuda_check.h"
#include "kernels/pdl.h"

namespace sbserve::cuda {
namespace {

constexpr int kThreads = 256;

inline int Blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

__global__ void EmbedKernel(const int32_t* ids, const __nv_bfloat16* wte, int64_t n, int64_t dim, float m_emb,
                            float* h) {
  kernels::PdlWait();  // h is read by the kernel before (the previous step's last one)
  const int64_t t = blockIdx.x;
  const __nv_bfloat16* row = wte + static_cast<int64_t>(ids[t]) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) h[t * dim + i] = __bfloat162float(row[i]) * m_emb;
}

// One block per row; fp32 statistics with a block reduction.
__global__ void NormKernel(bool rms, const float* x, const int32_t* rows, int64_t dim, const float* w,
                           const float* b, float eps, __nv_bfloat16* y) {
  // Launched as a programmatic dependent; the small-batch GEMM after it may start its weight prefetch.
  kernels::PdlWait();
  kernels::PdlLaunchDependents();
  const int64_t r = blockIdx.x;
  const float* xr = x + (rows ? static_cast<int64_t>(rows[r]) : r) * dim;
  __shared__ float red[32];
  auto block_sum = [&](float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.f;
    if (threadIdx.x < 32) {
      s = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
      if (threadIdx.x == 0) red[0] = s;
    }
    __syncthreads();
    s = red[0];
    __syncthreads();
    return s;
  };
  float mean = 0.f;
  if (!rms) {
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
    mean = block_sum(s) / dim;
  }
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = xr[i] - mean;
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / dim + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = (xr[i] - mean) * inv * w[i];
    if (b) v += b[i];
    y[r * dim + i] = __float2bfloat16(v);
  }
}

// One block of 256 threads per row, the row held in registers as float4 (kItems per thread): one
// read of x instead of three, one or two block reductions. For dim % 4 == 0 and dim <= 8192.
constexpr int kNormThreads = 256;
template <int kItems>
__global__ void __launch_bounds__(kNormThreads) NormRegKernel(bool rms, const float* x, const int32_t* rows,
                                                              int64_t dim, const float* w, const float* b, float eps,
                                                              __nv_bfloat16* y) {
  kernels::PdlWait();  // as in NormKernel
  kernels::PdlLaunchDependents();
  const int64_t r = blockIdx.x;
  const float4* xr = reinterpret_cast<const float4*>(x + (rows ? static_cast<int64_t>(rows[r]) : r) * dim);
  const int n4 = static_cast<int>(dim / 4);
  float4 v[kItems];
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int i = threadIdx.x + k * kNormThreads;
    v[k] = i < n4 ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    s += (v[k].x + v[k].y) + (v[k].z + v[k].w);
  }
  __shared__ float red[kNormThreads / 32];
  auto block_sum = [&](float t) {
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
    __syncthreads();  // readers of the previous sum are done
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = t;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < kNormThreads / 32; ++j) total += red[j];
    return total;
  };
  float mean = 0.f;
  if (!rms) mean = block_sum(s) / dim;
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    if (threadIdx.x + k * kNormThreads < n4) {
      const float a = v[k].x - mean, c = v[k].y - mean, d = v[k].z - mean, e = v[k].w - mean;
      ss += (a * a + c * c) + (d * d + e * e);
    }
  }
  const float inv = rsqrtf(block_sum(ss) / dim + eps);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  const float4* b4 = reinterpret_cast<const float4*>(b);
  uint2* y4 = reinterpret_cast<uint2*>(y + r * dim);
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int i = threadIdx.x + k * kNormThreads;
    if (i >= n4) continue;
    const float4 g = w4[i];
    float o0 = (v[k].x - mean) * inv * g.x, o1 = (v[k].y - mean) * inv * g.y;
    float o2 = (v[k].z - mean) * inv * g.z, o3 = (v[k].w - mean) * inv * g.w;
    if (b) {
      const float4 h = b4[i];
      o0 += h.x, o1 += h.y, o2 += h.z, o3 += h.w;
    }
    const __nv_bfloat162 lo = __floats2bfloat162_rn(o0, o1), hi = __floats2bfloat162_rn(o2, o3);
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    y4[i] = packed;
  }
}

__global__ void SplitQkvKernel(const __nv_bfloat16* qkv, const float* bias, int64_t n, int hkv, int group, int d,
                               __nv_bfloat16* q, __nv_bfloat16* k, __nv_bfloat16* v) {
  const int64_t per_tok = static_cast<int64_t>(hkv) * (group + 2) * d;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * per_tok) return;
  const int64_t t = i / per_tok;
  const int64_t c = i % per_tok;
  const int g = static_cast<int>(c / ((group + 2) * d));
  const int within = static_cast<int>(c % ((group + 2) * d));
  __nv_bfloat16 val = qkv[i];
  if (bias) val = __float2bfloat16(__bfloat162float(val) + bias[c]);
  const int H = hkv * group;
  if (within < group * d) {
    q[(t * H + g * group) * d + within] = val;
  } else if (within < (group + 1) * d) {
    k[(t * hkv + g) * d + within - group * d] = val;
  } else {
    v[(t * hkv + g) * d + within - (group + 1) * d] = val;
  }
}

__global__ void ResidualKernel(float* h, const float* y, const float* bias, int64_t total, int64_t dim, float r) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  h[i] += r * (y[i] + (bias ? bias[i % dim] : 0.f));
}

__global__ void ActivationKernel(int act, bool glu, const __nv_bfloat16* fc, const float* bias, int64_t n,
                                 int64_t inner, __nv_bfloat16* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * inner) return;
  const int64_t t = i / inner, c = i % inner;
  if (glu) {
    float up = __bfloat162float(fc[t * 2 * inner + c]);
    float gate = __bfloat162float(fc[t * 2 * inner + inner + c]);
    if (bias) {
      up += bias[c];
      gate += bias[inner + c];
    }
    out[i] = __float2bfloat16(up * Act(act, gate));
  } else {
    float x = __bfloat162float(fc[i]);
    if (bias) x += bias[c];
    out[i] = __float2bfloat16(Act(act, x));
  }
}

// GLU without bias, 8 outputs per thread: one 16-byte load of the up half, one of the gate half,
// one 16-byte store (inner % 8 == 0).
__global__ void GluVec8Kernel(int act, const __nv_bfloat16* fc, int64_t n, int64_t inner, __nv_bfloat16* out) {
  const int64_t vecs = inner / 8;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * vecs) return;
  const int64_t t = i / vecs, c = (i % vecs) * 8;
  const uint4 up4 = *reinterpret_cast<const uint4*>(fc + t * 2 * inner + c);
  const uint4 gate4 = *reinterpret_cast<const uint4*>(fc + t * 2 * inner + inner + c);
  const __nv_bfloat162* up = reinterpret_cast<const __nv_bfloat162*>(&up4);
  const __nv_bfloat162* gate = reinterpret_cast<const __nv_bfloat162*>(&gate4);
  uint4 res;
  __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(&res);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 u = __bfloat1622float2(up[j]);
    const float2 g = __bfloat1622float2(gate[j]);
    o[j] = __floats2bfloat162_rn(u.x * Act(act, g.x), u.y * Act(act, g.y));
  }
  *reinterpret_cast<uint4*>(out + t * inner + c) = res;
}

__global__ void F32ToBf16Kernel(const float* src, int64_t n, __nv_bfloat16* dst) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __float2bfloat16(src[i]);
}

__global__ void FeedKernel(int32_t* ids, const int32_t* pairs, int n, const int32_t* src) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) ids[pairs[2 * i]] = src[pairs[2 * i + 1]];
}

}  // namespace

absl::Status FeedTokens(int32_t* ids, const int32_t* pairs, int n, const int32_t* src, CUstream_st* stream) {
  if (n == 0) return absl::OkStatus();
  FeedKernel<<<Blocks(n), kThreads, 0, stream>>>(ids, pairs, n, src);
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

absl::Status Embed(const int32_t* ids, const void* wte, int64_t n, int64_t dim, float m_emb, float* h,
                   CUstream_st* stream) {
  if (n == 0) return absl::OkStatus();
  SB_CUDA_RETURN_IF_ERROR(kernels::LaunchPdl(EmbedKernel, dim3(static_cast<unsigned>(n)), dim3(kThreads), 0, stream, ids,
                                             static_cast<const __nv_bfloat16*>(wte), n, dim, m_emb, h));
  return absl::OkStatus();
}

absl::Status Norm(bool rms, const float* x, const int32_t* rows, int64_t n, int64_t dim, const float* w,
                  const float* b, float eps, void* y, CUstream_st* stream) {
  if (n == 0) return absl::OkStatus();
  // The register-resident kernel (one read of x) where it fits; SBSERVE_NORM_KERNEL=v1 forces the
  // three-pass kernel (A/B runs; tests/bench/engine.md has both).
  static const bool v1 = [] {
    const char* e = std::getenv("SBSERVE_NORM_KERNEL");
    return e != nullptr && std::string(e) == "v1";
  }();
  const int items = static_cast<int>((dim / 4 + kNormThreads - 1) / kNormThreads);
  const bool aligned = dim % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(w) % 16 == 0 && (b == nullptr || reinterpret_cast<uintptr_t>(b) % 16 == 0) &&
                       reinterpret_cast<uintptr_t>(y) % 8 == 0;
  auto* out = static_cast<__nv_bfloat16*>(y);
  const unsigned grid = static_cast<unsigned>(n);
  cudaError_t err = cudaSuccess;
  if (!v1 && aligned && items >= 1 && items <= 8) {
    using Kernel = void (*)(bool, const float*, const int32_t*, int64_t, const float*, const float*, float,
                            __nv_bfloat16*);
    static constexpr Kernel kByItems[] = {NormRegKernel<1>, NormRegKernel<2>, NormRegKernel<3>, NormRegKernel<4>,
                                          NormRegKernel<5>, NormRegKernel<6>, NormRegKernel<7>, NormRegKernel<8>};
    err = kernels::LaunchPdl(kByItems[items - 1], dim3(grid), dim3(kNormThreads), 0, stream, rms, x, rows, dim, w, b,
                             eps, out);
  } else {
    err = kernels::LaunchPdl(NormKernel, dim3(grid), dim3(512), 0, stream, rms, x, rows, dim, w, b, eps, out);
  }
  SB_CUDA_RETURN_IF_ERROR(err);
  return absl::OkStatus();
}

absl::Status SplitQkv(const void* qkv, const float* bias, int64_t n, int num_kv_heads, int group, int head_dim,
                      void* q, void* k, void* v, CUstream_st* stream) {
  const int64_t total = n * num_kv_heads * (group + 2) * head_dim;
  if (total == 0) return absl::OkStatus();
  SplitQkvKernel<<<Blocks(total), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(qkv), bias, n, num_kv_heads, group, head_dim,
      static_cast<__nv_bfloat16*>(q), static_cast<__nv_bfloat16*>(k), static_cast<__nv_bfloat16*>(v));
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

absl::Status ResidualAdd(float* h, const float* y, const float* bias, int64_t n, int64_t dim, float r,
                         CUstream_st* stream) {
  if (n == 0) return absl::OkStatus();
  ResidualKernel<<<Blocks(n * dim), kThreads, 0, stream>>>(h, y, bias, n * dim, dim, r);
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

absl::Status Activation(int act, bool glu, const void* fc, const float* bias, int64_t n, int64_t inner, void* out,
                        CUstream_st* stream) {
  if (n == 0) return absl::OkStatus();
  if (glu && bias == nullptr && inner % 8 == 0) {
    GluVec8Kernel<<<Blocks(n * inner / 8), kThreads, 0, stream>>>(act, static_cast<const __nv_bfloat16*>(fc), n, inner,
                                                                 static_cast<__nv_bfloat16*>(out));
    SB_CUDA_CHECK_LAUNCH();
    return absl::OkStatus();
  }
  ActivationKernel<<<Blocks(n * inner), kThreads, 0, stream>>>(
      act, glu, static_cast<const __nv_bfloat16*>(fc), bias, n, inner, static_cast<__nv_bfloat16*>(out));
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

absl::Status F32ToBf16(const float* src, int64_t n, void* dst, CUstream_st* stream) {
  if (n == 0) return absl::OkStatus();
  F32ToBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(src, n, static_cast<__nv_bfloat16*>(dst));
  SB_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

}  // namespace sbserve::cuda
