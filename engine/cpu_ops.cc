#include "engine/cpu_ops.h"

#include <cmath>

#include "engine/thread_pool.h"

namespace sbserve {
namespace {

// Dot product with 8 independent partial sums so the compiler can vectorise without reassociating.
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
__attribute__((always_inline)) inline void Dot4(const float* x0, const float* x1, const float* x2, const float* x3, const float* w, int64_t n,
                 float* out) {
  float s0[8] = {}, s1[8] = {}, s2[8] = {}, s3[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) {
      const float wv = w[i + k];
      s0[k] += x0[i + k] * wv;
      s1[k] += x1[i + k] * wv;
      s2[k] += x2[i + k] * wv;
      s3[k] += x3[i + k] * wv;
    }
  }
  float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  for (; i < n; ++i) {
    t0 += x0[i] * w[i];
    t1 += x1[i] * w[i];
    t2 += x2[i] * w[i];
    t3 += x3[i] * w[i];
  }
  auto sum = [](const float* s) { return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])); };
  out[0] = sum(s0) + t0;
  out[1] = sum(s1) + t1;
  out[2] = sum(s2) + t2;
  out[3] = sum(s3) + t3;
}

inline float Gelu(float x) { return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f)); }
inline float GeluTanh(float x) {
  return 0.5f * x * (1.f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
inline float Silu(float x) { return x / (1.f + std::exp(-x)); }
inline float Relu(float x) { return x > 0.f ? x : 0.f; }

// Row block of the GEMM; cloned for AVX2+FMA machines (runtime dispatch), plain x86-64 otherwise.
__attribute__((target_clones("arch=haswell", "default"))) void GemmRows(const float* x, int64_t n, int64_t in,
                                                                         const float* w, int64_t out,
                                                                         const float* bias, float* y,
                                                                         int64_t o_begin, int64_t o_end) {
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) {
    const float* x0 = x + r * in;
    for (int64_t o = o_begin; o < o_end; ++o) {
      float v[4];
      Dot4(x0, x0 + in, x0 + 2 * in, x0 + 3 * in, w + o * in, in, v);
      const float b = bias ? bias[o] : 0.f;
      for (int k = 0; k < 4; ++k) y[(r + k) * out + o] = v[k] + b;
    }
  }
  for (; r < n; ++r) {
    for (int64_t o = o_begin; o < o_end; ++o) {
      y[r * out + o] = Dot(x + r * in, w + o * in, in) + (bias ? bias[o] : 0.f);
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
