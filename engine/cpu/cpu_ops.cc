#include "engine/cpu/cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/cpu/thread_pool.h"

namespace sbserve {
namespace {

// The 32-byte vector type below only lives inside inlined helpers; no ABI crosses a boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

// 8 floats as one value: GCC lowers it to one AVX register in the AVX2 clone and two SSE
// registers otherwise. Written out because GCC kept the equivalent four-array loop
// of Dot4 scalar (vfmadd231ss), 7.5 GFLOP/s per core; this form reaches ~19.
typedef float V8 __attribute__((vector_size(32)));

__attribute__((always_inline)) inline V8 Load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

__attribute__((always_inline)) inline float Sum8(const V8& v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// Dot product with 8 independent partial sums; GCC vectorises this form itself (30 GFLOP/s per
// core as a GEMV on the developer VM, twice the explicit-vector version; tests/bench/engine.md).
__attribute__((always_inline)) inline float Dot(const float* a, const float* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) s[k] += a[i + k] * b[i + k];
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + tail;
}

// Four rows of x against one row of W: W's row is loaded once for four outputs.
__attribute__((always_inline)) inline void Dot4(const float* x0, const float* x1, const float* x2,
                                                const float* x3, const float* w, int64_t n, float* out) {
  V8 s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const V8 wv = Load8(w + i);
    s0 += Load8(x0 + i) * wv;
    s1 += Load8(x1 + i) * wv;
    s2 += Load8(x2 + i) * wv;
    s3 += Load8(x3 + i) * wv;
  }
  float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  for (; i < n; ++i) {
    t0 += x0[i] * w[i];
    t1 += x1[i] * w[i];
    t2 += x2[i] * w[i];
    t3 += x3[i] * w[i];
  }
  out[0] = Sum8(s0) + t0;
  out[1] = Sum8(s1) + t1;
  out[2] = Sum8(s2) + t2;
  out[3] = Sum8(s3) + t3;
}

inline float Gelu(float x) { return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f)); }
inline float GeluTanh(float x) {
  return 0.5f * x * (1.f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
inline float Silu(float x) { return x / (1.f + std::exp(-x)); }
inline float Relu(float x) { return x > 0.f ? x : 0.f; }

// Output block of the GEMM; cloned for AVX2+FMA machines (runtime dispatch), plain x86-64
// otherwise. Outputs are walked in blocks of ~64 KB of W so a block stays in cache while every
// group of 4 input rows passes over it (streaming all of W per row group ran at a quarter of the
// speed: 7.5 against 30 GFLOP/s per core measured on the developer VM, tests/bench/engine.md).
__attribute__((target_clones("arch=haswell", "default"))) void GemmRows(const float* x, int64_t n, int64_t in,
                                                                         const float* w, int64_t out,
                                                                         const float* bias, float* y,
                                                                         int64_t o_begin, int64_t o_end) {
  const int64_t block = std::max<int64_t>(4, 16384 / std::max<int64_t>(in, 1));
  for (int64_t ob = o_begin; ob < o_end; ob += block) {
    const int64_t oe = std::min(o_end, ob + block);
    int64_t r = 0;
    for (; r + 4 <= n; r += 4) {
      const float* x0 = x + r * in;
      for (int64_t o = ob; o < oe; ++o) {
        float v[4];
        Dot4(x0, x0 + in, x0 + 2 * in, x0 + 3 * in, w + o * in, in, v);
        const float b = bias ? bias[o] : 0.f;
        for (int k = 0; k < 4; ++k) y[(r + k) * out + o] = v[k] + b;
      }
    }
    for (; r < n; ++r) {
      for (int64_t o = ob; o < oe; ++o) {
        y[r * out + o] = Dot(x + r * in, w + o * in, in) + (bias ? bias[o] : 0.f);
      }
    }
  }
}

}  // namespace

void CpuGemm(ThreadPool* pool, const float* x, int64_t n, int64_t in, const float* w, int64_t out,
             const float* bias, float* y) {
  // Parallel over output features in blocks: each task streams its slice of W once per 4 rows of x.
  ParallelFor(pool, out, 16, [&](int64_t o_begin, int64_t o_end) {
    GemmRows(x, n, in, w, out, bias, y, o_begin, o_end);
  });
}

void CpuNorm(ThreadPool* pool, NormKind kind, const float* x, int64_t n, int64_t dim, const float* weight,
             const float* bias, double eps, float* y) {
  ParallelFor(pool, n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      if (kind == NormKind::kRmsNorm) {
        double ms = 0;
        for (int64_t i = 0; i < dim; ++i) ms += static_cast<double>(xr[i]) * xr[i];
        const float inv = static_cast<float>(1.0 / std::sqrt(ms / dim + eps));
        for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * weight[i];
      } else {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < dim; ++i) mean += xr[i];
        mean /= dim;
        for (int64_t i = 0; i < dim; ++i) var += (xr[i] - mean) * (xr[i] - mean);
        var /= dim;
        const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
        for (int64_t i = 0; i < dim; ++i) {
          yr[i] = static_cast<float>(xr[i] - mean) * inv * weight[i] + (bias ? bias[i] : 0.f);
        }
      }
    }
  });
}

void CpuActivation(ThreadPool* pool, const std::string& activation, bool glu, const float* in, int64_t n,
                   int64_t inner, float* y) {
  float (*act)(float) = Silu;
  if (activation == "geglu" || activation == "gelu") act = Gelu;
  if (activation == "gelu_pytorch_tanh") act = GeluTanh;
  if (activation == "reglu" || activation == "relu") act = Relu;
  ParallelFor(pool, n, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (glu) {
        const float* up = in + r * 2 * inner;
        const float* gate = up + inner;
        for (int64_t i = 0; i < inner; ++i) y[r * inner + i] = up[i] * act(gate[i]);
      } else {
        for (int64_t i = 0; i < inner; ++i) y[r * inner + i] = act(in[r * inner + i]);
      }
    }
  });
}

}  // namespace sbserve
