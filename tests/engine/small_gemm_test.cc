// The small-batch GEMM kernels (engine/cuda/small_gemm.h) against a float64 product of the same
// bf16 operands: every row count they take, inner sizes that do and do not fill a warp's chunks,
// output counts that do not fill a warp's rows, the bf16 and fp32 outputs with alpha and beta, the
// fused GLU epilogue with every activation, untouched memory past the output, and what they refuse.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda/small_gemm.h"
#include "engine/model/dtype.h"
#include "tests/engine/gpu_test_util.h"

namespace sbserve {
namespace {

using testing::HaveGpu;

template <typename T>
struct Dev {
  explicit Dev(size_t n) : n(n) { EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess); }
  ~Dev() { cudaFree(p); }
  void Put(const std::vector<T>& h) { ASSERT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess); }
  std::vector<T> Get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
  T* p = nullptr;
  size_t n;
};

std::vector<uint16_t> RandomBf16(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<uint16_t> v(n);
  for (auto& e : v) e = FloatToBf16(d(rng));
  return v;
}

// ref[t, o] = Σ_k x[t, k] · w[row(o), k] in float64, and Σ |x · w| (the scale of its rounding error).
void Reference(const std::vector<uint16_t>& x, const std::vector<uint16_t>& w, int64_t n, int64_t in, int64_t rows,
               std::vector<double>* ref, std::vector<double>* mag) {
  ref->assign(n * rows, 0.0);
  mag->assign(n * rows, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < rows; ++o) {
      double s = 0, m = 0;
      for (int64_t k = 0; k < in; ++k) {
        const double p = static_cast<double>(Bf16ToFloat(x[t * in + k])) * Bf16ToFloat(w[o * in + k]);
        s += p;
        m += std::fabs(p);
      }
      (*ref)[t * rows + o] = s;
      (*mag)[t * rows + o] = m;
    }
}

double Act(int act, double v) {
  switch (act) {
    case 0: return v / (1.0 + std::exp(-v));
    case 1: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    case 2: return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    default: return v > 0 ? v : 0;
  }
}

constexpr int kCanary = 64;  // elements past the output that must stay untouched

TEST(SmallGemm, MatchesFloat64ForEveryRowCountAndEpilogue) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(3);
  struct Case {
    int64_t in, out;
  };
  // in: one chunk, a partial warp pass (264 = 33 chunks), the model's 2304 and 9216; out: 1, an odd
  // count (not a multiple of the rows per warp or of the warps per block), 256.
  const Case cases[] = {{8, 1}, {264, 37}, {2304, 3}, {2304, 256}, {9216, 37}};
  for (int variant = 0; variant < cuda::kSmallGemmVariants; ++variant)
  for (const Case& c : cases) {
    for (int n = 1; n <= cuda::kSmallGemmMaxRows; ++n) {
      SCOPED_TRACE(absl::StrCat("variant=", variant, " in=", c.in, " out=", c.out, " n=", n));
      cuda::SetSmallGemmVariant(variant);
      const auto x = RandomBf16(n * c.in, 1.f, rng);
      const auto w = RandomBf16(c.out * c.in, 0.05f, rng);
      std::vector<double> ref, mag;
      Reference(x, w, n, c.in, c.out, &ref, &mag);
      Dev<uint16_t> dx(x.size()), dw(w.size());
      dx.Put(x);
      dw.Put(w);
      const size_t count = static_cast<size_t>(n * c.out);

      // bf16 output, alpha = 0.5.
      Dev<uint16_t> yb(count + kCanary);
      yb.Put(std::vector<uint16_t>(count + kCanary, 0x7fc1));  // NaN
      ASSERT_TRUE(cuda::SmallGemm(dx.p, n, c.in, dw.p, c.out, yb.p, false, 0.5f, 0.f, nullptr).ok());
      const auto gb = yb.Get();
      for (size_t i = 0; i < count; ++i) {
        const double want = 0.5 * ref[i];
        const double got = Bf16ToFloat(gb[i]);
        ASSERT_NEAR(got, want, std::fabs(want) * (1.0 / 256) + 1e-5 * mag[i]) << "bf16 output " << i;
      }
      for (size_t i = count; i < gb.size(); ++i) ASSERT_EQ(gb[i], 0x7fc1) << "wrote past the output at " << i;

      // fp32 output: beta = 0 must not read y (NaN there), beta = 1 accumulates (the residual add).
      Dev<float> yf(count + kCanary);
      yf.Put(std::vector<float>(count + kCanary, std::nanf("")));
      ASSERT_TRUE(cuda::SmallGemm(dx.p, n, c.in, dw.p, c.out, yf.p, true, 0.22f, 0.f, nullptr).ok());
      auto gf = yf.Get();
      for (size_t i = 0; i < count; ++i) {
        ASSERT_NEAR(gf[i], 0.22 * ref[i], 4e-6 * mag[i] + 1e-7) << "fp32 output " << i;
      }
      for (size_t i = count; i < gf.size(); ++i) ASSERT_TRUE(std::isnan(gf[i])) << "wrote past the output at " << i;
      std::vector<float> base(count + kCanary);
      for (size_t i = 0; i < count; ++i) base[i] = static_cast<float>(i % 7) - 3.f;
      yf.Put(base);
      ASSERT_TRUE(cuda::SmallGemm(dx.p, n, c.in, dw.p, c.out, yf.p, true, 0.22f, 1.f, nullptr).ok());
      gf = yf.Get();
      for (size_t i = 0; i < count; ++i) {
        ASSERT_NEAR(gf[i], base[i] + 0.22 * ref[i], 4e-6 * mag[i] + 1e-6) << "accumulated output " << i;
      }
    }
  }
  cuda::SetSmallGemmVariant(0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(SmallGemm, GluEpilogueMatchesFloat64ForEveryActivation) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(5);
  for (int variant = 0; variant < cuda::kSmallGemmVariants; ++variant)
  for (int64_t inner : {int64_t{1}, int64_t{19}, int64_t{256}}) {
    for (int n = 1; n <= cuda::kSmallGemmMaxRows; ++n) {
      for (int act = 0; act < 4; ++act) {
        SCOPED_TRACE(absl::StrCat("variant=", variant, " inner=", inner, " n=", n, " act=", act));
        cuda::SetSmallGemmVariant(variant);
        const int64_t in = 2304;
        const auto x = RandomBf16(n * in, 1.f, rng);
        const auto w = RandomBf16(2 * inner * in, 0.05f, rng);
        std::vector<double> ref, mag;
        Reference(x, w, n, in, 2 * inner, &ref, &mag);
        Dev<uint16_t> dx(x.size()), dw(w.size()), out(n * inner + kCanary);
        dx.Put(x);
        dw.Put(w);
        out.Put(std::vector<uint16_t>(out.n, 0x7fc1));
        ASSERT_TRUE(cuda::SmallGemmGlu(act, dx.p, n, in, dw.p, inner, out.p, nullptr).ok());
        const auto got = out.Get();
        for (int t = 0; t < n; ++t)
          for (int64_t i = 0; i < inner; ++i) {
            // up and gate as the unfused path stores them (bf16), then the activation.
            const double up = Bf16ToFloat(FloatToBf16(static_cast<float>(ref[t * 2 * inner + i])));
            const double gate = Bf16ToFloat(FloatToBf16(static_cast<float>(ref[t * 2 * inner + inner + i])));
            const double want = up * Act(act, gate);
            // The result's bf16 rounding, and a neighbouring bf16 value of up or gate where the fp32
            // sum sits on a rounding edge (one ulp: 2^-7 relative; act' <= 1.13 for all four).
            const double tol = std::fabs(want) / 128 + std::fabs(up) * 1.2 * std::fabs(gate) / 128 + 1e-4;
            ASSERT_NEAR(Bf16ToFloat(got[t * inner + i]), want, tol) << "t=" << t << " i=" << i;
          }
        for (size_t i = static_cast<size_t>(n * inner); i < got.size(); ++i) ASSERT_EQ(got[i], 0x7fc1);
      }
    }
  }
  cuda::SetSmallGemmVariant(0);
}

TEST(SmallGemm, RefusesWhatItCannotTake) {
  alignas(16) static uint16_t buf[64];
  EXPECT_TRUE(cuda::SmallGemmFits(1, 8, buf, buf));
  EXPECT_TRUE(cuda::SmallGemmFits(cuda::kSmallGemmMaxRows, 2304, buf, buf));
  EXPECT_FALSE(cuda::SmallGemmFits(0, 8, buf, buf));
  EXPECT_FALSE(cuda::SmallGemmFits(cuda::kSmallGemmMaxRows + 1, 8, buf, buf));
  EXPECT_FALSE(cuda::SmallGemmFits(4, 8, buf, buf, /*max_rows=*/3));
  EXPECT_FALSE(cuda::SmallGemmFits(1, 12, buf, buf));     // in not a multiple of 8
  EXPECT_FALSE(cuda::SmallGemmFits(1, 8, buf + 1, buf));  // x not 16-byte aligned
  EXPECT_FALSE(cuda::SmallGemmFits(1, 8, buf, buf + 4));  // W not 16-byte aligned
  EXPECT_FALSE(cuda::SmallGemm(buf, 1, 12, buf, 4, buf, true, 1.f, 0.f, nullptr).ok());
  EXPECT_FALSE(cuda::SmallGemm(buf, 1, 8, buf, 4, buf, false, 1.f, 1.f, nullptr).ok());  // beta with bf16 y
  EXPECT_FALSE(cuda::SmallGemmGlu(0, buf, 9, 8, buf, 4, buf, nullptr).ok());
}

}  // namespace
}  // namespace sbserve
