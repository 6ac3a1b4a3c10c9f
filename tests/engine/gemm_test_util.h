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

// A GEMM's random operands, x [n, in] ~ N(0, 1) and W [rows, in] ~ N(0, 0.05) in bf16 (drawn in
// that order), their float64 product (Reference's ref and mag) and device copies.
struct GemmOperands {
  GemmOperands(int64_t n, int64_t in, int64_t rows, std::mt19937& rng)
      : x(RandomBf16(n * in, 1.f, rng)), w(RandomBf16(rows * in, 0.05f, rng)), dx(x.size()), dw(w.size()) {
    Reference(x, w, n, in, rows, &ref, &mag);
    dx.Put(x);
    dw.Put(w);
  }
  std::vector<uint16_t> x, w;
  Dev<uint16_t> dx, dw;
  std::vector<double> ref, mag;
};

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
inline constexpr uint16_t kNanBf16 = 0x7fc1;

// A GEMM kernel's three epilogues against ref and mag (Reference's) for `count` outputs: bf16 with
// alpha 0.5; fp32 with alpha 0.22 and beta 0 over NaN (y must not be read); fp32 with beta 1 over a
// base (the residual add); and nothing written past the output in any of them.
// gemm(y, y_f32, alpha, beta) runs the kernel under test and returns whether it succeeded.
template <typename Gemm>
void ExpectEpilogues(Gemm&& gemm, const std::vector<double>& ref, const std::vector<double>& mag, size_t count) {
  Dev<uint16_t> yb(count + kCanary);
  yb.Put(std::vector<uint16_t>(count + kCanary, kNanBf16));
  ASSERT_TRUE(gemm(yb.p, false, 0.5f, 0.f));
  const auto gb = yb.Get();
  for (size_t i = 0; i < count; ++i) {
    const double want = 0.5 * ref[i];
    ASSERT_NEAR(Bf16ToFloat(gb[i]), want, std::fabs(want) / 256 + 1e-5 * mag[i]) << "bf16 output " << i;
  }
  for (size_t i = count; i < gb.size(); ++i) ASSERT_EQ(gb[i], kNanBf16) << "wrote past the output at " << i;

  Dev<float> yf(count + kCanary);
  yf.Put(std::vector<float>(count + kCanary, std::nanf("")));
  ASSERT_TRUE(gemm(yf.p, true, 0.22f, 0.f));
  auto gf = yf.Get();
  for (size_t i = 0; i < count; ++i) ASSERT_NEAR(gf[i], 0.22 * ref[i], 4e-6 * mag[i] + 1e-7) << "fp32 output " << i;
  for (size_t i = count; i < gf.size(); ++i) ASSERT_TRUE(std::isnan(gf[i])) << "wrote past the output at " << i;
  std::vector<float> base(count + kCanary, std::nanf(""));
  for (size_t i = 0; i < count; ++i) base[i] = static_cast<float>(i % 7) - 3.f;
  yf.Put(base);
  ASSERT_TRUE(gemm(yf.p, true, 0.22f, 1.f));
  gf = yf.Get();
  for (size_t i = 0; i < count; ++i)
    ASSERT_NEAR(gf[i], base[i] + 0.22 * ref[i], 4e-6 * mag[i] + 1e-6) << "accumulated output " << i;
  for (size_t i = count; i < gf.size(); ++i) ASSERT_TRUE(std::isnan(gf[i])) << "wrote past the output at " << i;
}

// A fused GLU output `got` ([n, inner] bf16, then kCanary untouched kNanBf16) against ref, the
// float64 product with W's 2 · inner rows (up, then gate): up and gate rounded to bf16 as the
// unfused path stores them, then the activation. The tolerance allows the result's bf16 rounding
// and a neighbouring bf16 value of up or gate where the fp32 sum sits on a rounding edge (one ulp:
// 2^-7 relative; act' <= 1.13 for all four activations).
inline void ExpectGlu(const std::vector<uint16_t>& got, const std::vector<double>& ref, int64_t n, int64_t inner,
                      int act) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < inner; ++i) {
      const double up = Bf16ToFloat(FloatToBf16(static_cast<float>(ref[t * 2 * inner + i])));
      const double gate = Bf16ToFloat(FloatToBf16(static_cast<float>(ref[t * 2 * inner + inner + i])));
      const double want = up * Act(act, gate);
      const double tol = std::fabs(want) / 128 + std::fabs(up) * 1.2 * std::fabs(gate) / 128 + 1e-4;
      ASSERT_NEAR(Bf16ToFloat(got[t * inner + i]), want, tol) << "t=" << t << " i=" << i;
    }
  for (size_t i = static_cast<size_t>(n * inner); i < got.size(); ++i) ASSERT_EQ(got[i], kNanBf16);
}

}  // namespace sbserve::testing
