// Helpers of the GEMM kernel tests (small_gemm_test, skinny_gemm_test): device buffers, random bf16
// operands, the float64 product they are checked against, and the MLP activations in float64.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/model/dtype.h"

namespace sbserve::testing {

template <typename T>
struct Dev {
  explicit Dev(size_t n) : n(n) { EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void Put(const std::vector<T>& h) { ASSERT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess); }
  std::vector<T> Get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
  T* p = nullptr;
  size_t n;
};

inline std::vector<uint16_t> RandomBf16(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<uint16_t> v(n);
  for (auto& e : v) e = FloatToBf16(d(rng));
  return v;
}

// ref[t, o] = Σ_k x[t, k] · w[o, k] in float64, and Σ |x · w| (the scale of its rounding error).
inline void Reference(const std::vector<uint16_t>& x, const std::vector<uint16_t>& w, int64_t n, int64_t in,
                      int64_t rows, std::vector<double>* ref, std::vector<double>* mag) {
  ref->assign(n * rows, 0.0);
  mag->assign(n * rows, 0.0);
  std::vector<double> xf(x.size()), wf(w.size());
  for (size_t i = 0; i < x.size(); ++i) xf[i] = Bf16ToFloat(x[i]);
  for (size_t i = 0; i < w.size(); ++i) wf[i] = Bf16ToFloat(w[i]);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < rows; ++o) {
      double s = 0, m = 0;
      for (int64_t k = 0; k < in; ++k) {
        const double p = xf[t * in + k] * wf[o * in + k];
        s += p;
        m += std::fabs(p);
      }
      (*ref)[t * rows + o] = s;
      (*mag)[t * rows + o] = m;
    }
}

// act: 0 silu, 1 gelu (erf), 2 gelu tanh, 3 relu.
inline double Act(int act, double v) {
  switch (act) {
    case 0: return v / (1.0 + std::exp(-v));
    case 1: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    case 2: return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    default: return v > 0 ? v : 0;
  }
}

inline constexpr int kCanary = 64;  // elements past the output that must stay untouched

}  // namespace sbserve::testing
