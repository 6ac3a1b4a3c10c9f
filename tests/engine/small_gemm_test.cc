// The small-batch GEMM kernels (engine/cuda/small_gemm.h) against a float64 product of the same
// bf16 operands: every row count they take, inner sizes that do and do not fill a warp's chunks,
// output counts that do not fill a warp's rows, the bf16 and fp32 outputs with alpha and beta, the
// fused GLU epilogue with every activation, untouched memory past the output, and what they refuse.
// Then the tuned GEMM path (engine/cuda/gemm_tuner.h) the same way: each kind of plan, row counts
// inside and at the edges of its buckets, every epilogue, calls it leaves to the caller, and plans
// measured before a graph capture.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda/gemm_tuner.h"
#include "engine/cuda/skinny_gemm.h"
#include "engine/cuda/small_gemm.h"
#include "engine/model/dtype.h"
#include "tests/engine/gemm_test_util.h"
#include "tests/engine/gpu_test_util.h"

namespace sbserve {
namespace {

using testing::Dev;
using testing::ExpectEpilogues;
using testing::ExpectGlu;
using testing::GemmOperands;
using testing::HaveGpu;
using testing::kCanary;
using testing::kNanBf16;
using testing::RandomBf16;
using testing::Reference;

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
      const GemmOperands op(n, c.in, c.out, rng);
      const size_t count = static_cast<size_t>(n * c.out);

      ASSERT_NO_FATAL_FAILURE(ExpectEpilogues(
          [&](void* y, bool y_f32, float alpha, float beta) {
            return cuda::SmallGemm(op.dx.p, n, c.in, op.dw.p, c.out, y, y_f32, alpha, beta, nullptr).ok();
          },
          op.ref, op.mag, count));
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
        const GemmOperands op(n, in, 2 * inner, rng);
        Dev<uint16_t> out(n * inner + kCanary);
        out.Put(std::vector<uint16_t>(out.n, kNanBf16));
        ASSERT_TRUE(cuda::SmallGemmGlu(act, op.dx.p, n, in, op.dw.p, inner, out.p, nullptr).ok());
        ASSERT_NO_FATAL_FAILURE(ExpectGlu(out.Get(), op.ref, n, inner, act));
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

// How a registered GEMM writes y: bf16; fp32; fp32 accumulating (the residual add).
struct Epilogue {
  const char* name;
  bool y_f32, accumulate;
};
constexpr Epilogue kEpilogues[] = {{"bf16", false, false}, {"fp32", true, false}, {"fp32+=", true, true}};

// Owns a stream, the workspace and a tuner over device copies of `w` (one weight per layer, out × in)
// registered with epilogue `e`.
struct TunerBench {
  TunerBench(const cuda::GemmTunerOptions& options, const std::vector<std::vector<uint16_t>>& w, int64_t in,
             int64_t out, Epilogue e)
      : in(in), out(out), e(e), workspace(size_t{32} << 20) {
    EXPECT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    EXPECT_TRUE(tuner.Init(stream, workspace.p, workspace.n, options).ok());
    std::vector<const void*> ptrs;
    for (const auto& wl : w) {
      dw.push_back(std::make_unique<Dev<uint16_t>>(wl.size()));
      dw.back()->Put(wl);
      ptrs.push_back(dw.back()->p);
    }
    tuner.AddWeights(ptrs, in, out, e.y_f32, e.accumulate);
  }
  ~TunerBench() { cudaStreamDestroy(stream); }

  // One call on layer l's weight through the tuner, checked against ref (float64 x · W_lᵀ) and mag
  // (Σ |x · w|, the scale of its rounding error).
  void Expect(const Dev<uint16_t>& dx, int64_t n, int l, const std::vector<double>& ref,
              const std::vector<double>& mag) {
    const size_t count = static_cast<size_t>(n * out);
    bool ran = false;
    if (!e.y_f32) {  // alpha = 0.5
      Dev<uint16_t> y(count);
      ASSERT_TRUE(tuner.Run(dx.p, n, in, dw[l]->p, out, y.p, false, 0.5f, 0.f, &ran).ok());
      ASSERT_TRUE(ran);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      const auto got = y.Get();
      for (size_t i = 0; i < count; ++i) {
        const double want = 0.5 * ref[i];
        ASSERT_NEAR(Bf16ToFloat(got[i]), want, std::fabs(want) / 256 + 1e-5 * mag[i]) << "bf16 output " << i;
      }
      return;
    }
    // fp32: y = 0.22 · x · Wᵀ, over NaN (must not be read) or, accumulating, over a base.
    Dev<float> y(count);
    std::vector<float> base(count, std::nanf(""));
    if (e.accumulate)
      for (size_t i = 0; i < count; ++i) base[i] = static_cast<float>(i % 7) - 3.f;
    y.Put(base);
    ASSERT_TRUE(tuner.Run(dx.p, n, in, dw[l]->p, out, y.p, true, 0.22f, e.accumulate ? 1.f : 0.f, &ran).ok());
    ASSERT_TRUE(ran);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const auto got = y.Get();
    for (size_t i = 0; i < count; ++i) {
      const double want = (e.accumulate ? base[i] : 0.0) + 0.22 * ref[i];
      ASSERT_NEAR(got[i], want, 4e-6 * mag[i] + 1e-6) << e.name << " output " << i;
    }
  }

  int64_t in, out;
  Epilogue e;
  Dev<uint8_t> workspace;
  cudaStream_t stream = nullptr;
  cuda::GemmTuner tuner;
  std::vector<std::unique_ptr<Dev<uint16_t>>> dw;
};

std::vector<std::vector<uint16_t>> RandomLayers(int layers, int64_t in, int64_t out, std::mt19937& rng) {
  std::vector<std::vector<uint16_t>> w;
  for (int l = 0; l < layers; ++l) w.push_back(RandomBf16(out * in, 0.05f, rng));
  return w;
}

TEST(GemmTuner, TunedPlansMatchFloat64AtEveryBucketAndEpilogue) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(9);
  struct Config {
    const char* name;
    bool cublas_default, small_kernels, skinny_kernels;
    int lt_candidates;
  };
  // All candidates; cuBLASLt's alone; the small kernels alone (n ≤ 4; beyond, cuBLAS's default);
  // the skinny kernels alone (n ≤ 64).
  const Config configs[] = {{"all", true, true, true, 8},
                            {"lt", false, false, false, 8},
                            {"small", false, true, false, 8},
                            {"skinny", false, false, true, 0}};
  // n: bucket edges (16 exact, 17 -> 24, 64, 65 -> 96) and row counts inside a bucket (61 -> 64,
  // 100 -> 128), so plans are also run at row counts they were not measured at.
  const int64_t rows[] = {1, 2, 3, 4, 5, 16, 17, 61, 64, 65, 100};
  const int64_t in = 2304, out = 264;
  const auto w = RandomLayers(3, in, out, rng);
  for (const Config& cfg : configs) {
    cuda::GemmTunerOptions opt;
    opt.max_rows = 128;
    opt.cublas_default = cfg.cublas_default;
    opt.small_kernels = cfg.small_kernels;
    opt.skinny_kernels = cfg.skinny_kernels;
    opt.lt_candidates = cfg.lt_candidates;
    std::vector<std::unique_ptr<TunerBench>> benches;
    for (const Epilogue& e : kEpilogues) benches.push_back(std::make_unique<TunerBench>(opt, w, in, out, e));
    for (int64_t n : rows) {
      const auto x = RandomBf16(n * in, 1.f, rng);
      Dev<uint16_t> dx(x.size());
      dx.Put(x);
      for (int l = 0; l < 3; ++l) {
        std::vector<double> ref, mag;
        Reference(x, w[l], n, in, out, &ref, &mag);
        for (auto& tb : benches) {
          SCOPED_TRACE(absl::StrCat(cfg.name, " ", tb->e.name, " n=", n, " layer ", l));
          tb->Expect(dx, n, l, ref, mag);
        }
      }
      for (auto& tb : benches) {
        const std::string plan = tb->tuner.Describe(tb->dw[0]->p, n);
        SCOPED_TRACE(absl::StrCat(cfg.name, " ", tb->e.name, " n=", n, ": ", plan));
        ASSERT_FALSE(plan.empty());
        if (std::string(cfg.name) == "small" && n <= cuda::kSmallGemmMaxRows) {
          EXPECT_NE(plan.find("small gemm"), std::string::npos);
        }
        if (std::string(cfg.name) == "skinny" && n <= cuda::kSkinnyGemmMaxRows) {
          EXPECT_NE(plan.find("skinny gemm"), std::string::npos);
        }
        if (std::string(cfg.name) == "lt" && n == cuda::GemmTuner::Bucket(n)) {
          EXPECT_NE(plan.find("cublasLt"), std::string::npos);
        }
      }
    }
  }
}

TEST(GemmTuner, LeavesToTheCallerWhatItDoesNotTake) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(10);
  cuda::GemmTunerOptions opt;
  opt.max_rows = 16;
  TunerBench tb(opt, RandomLayers(2, 256, 128, rng), 256, 128, kEpilogues[1]);  // fp32, not accumulating
  Dev<uint16_t> x(32 * 256 + 8), other(128 * 256);
  Dev<float> y(32 * 128 + 8);
  auto run = [&](const void* xp, int64_t n, int64_t in, const void* w, int64_t out, void* yp, bool f32, float beta) {
    bool ran = true;
    EXPECT_TRUE(tb.tuner.Run(xp, n, in, w, out, yp, f32, 1.f, beta, &ran).ok());
    return ran;
  };
  const void* w = tb.dw[0]->p;
  EXPECT_TRUE(run(x.p, 8, 256, w, 128, y.p, true, 0.f));
  EXPECT_FALSE(run(x.p, 8, 256, other.p, 128, y.p, true, 0.f));  // unregistered weight
  EXPECT_FALSE(run(x.p, 17, 256, w, 128, y.p, true, 0.f));       // beyond max_rows
  EXPECT_FALSE(run(x.p, 0, 256, w, 128, y.p, true, 0.f));        // no rows
  EXPECT_FALSE(run(x.p, 8, 128, w, 256, y.p, true, 0.f));        // not the registered shape
  EXPECT_FALSE(run(x.p, 8, 256, w, 128, y.p, true, 1.f));        // accumulating: not the registered epilogue
  EXPECT_FALSE(run(x.p, 8, 256, w, 128, y.p, false, 0.f));       // bf16 output: not the registered epilogue
  EXPECT_FALSE(run(x.p + 8, 8, 256, w, 128, y.p, true, 0.f));    // x not 256-byte aligned
  EXPECT_FALSE(run(x.p, 8, 256, w, 128, y.p + 8, true, 0.f));    // y not 256-byte aligned
  EXPECT_EQ(cudaStreamSynchronize(tb.stream), cudaSuccess);
}

TEST(GemmTuner, PlansMeasuredBeforeAGraphCaptureRunInsideIt) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(11);
  cuda::GemmTunerOptions opt;
  opt.max_rows = 64;
  const auto w = RandomLayers(2, 512, 192, rng);
  TunerBench tb(opt, w, 512, 192, kEpilogues[0]);
  const int64_t n = 24;
  const auto x = RandomBf16(n * tb.in, 1.f, rng);
  Dev<uint16_t> dx(x.size()), y(n * tb.out);
  dx.Put(x);
  // Captures one call at m rows on layer 1; true when the tuner took it.
  auto capture = [&](int64_t m, cudaGraphExec_t* exec) {
    bool ran = false;
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamBeginCapture(tb.stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    EXPECT_TRUE(tb.tuner.Run(dx.p, m, tb.in, tb.dw[1]->p, tb.out, y.p, false, 1.f, 0.f, &ran).ok());
    EXPECT_EQ(cudaStreamEndCapture(tb.stream, &graph), cudaSuccess);
    if (exec != nullptr) EXPECT_EQ(cudaGraphInstantiate(exec, graph, 0), cudaSuccess);
    cudaGraphDestroy(graph);
    return ran;
  };
  // Inside a capture an untuned bucket is left to the caller (measuring would break the capture).
  EXPECT_FALSE(capture(n, nullptr));
  // Prepare(n) tunes n's bucket: then the call is captured, and the replay computes it.
  ASSERT_TRUE(tb.tuner.Prepare(n).ok());
  cudaGraphExec_t exec = nullptr;
  ASSERT_TRUE(capture(n, &exec));
  ASSERT_EQ(cudaMemset(y.p, 0xff, y.n * 2), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, tb.stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(tb.stream), cudaSuccess);
  cudaGraphExecDestroy(exec);
  std::vector<double> ref, mag;
  Reference(x, w[1], n, tb.in, tb.out, &ref, &mag);
  const auto got = y.Get();
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(Bf16ToFloat(got[i]), ref[i], std::fabs(ref[i]) / 256 + 1e-5 * mag[i]) << i;
  }
  // PrepareUpTo(m) tunes every bucket up to m rows (and none beyond): all of them capture.
  EXPECT_FALSE(capture(40, nullptr));
  ASSERT_TRUE(tb.tuner.PrepareUpTo(48).ok());
  for (int64_t m = 1; m <= 48; ++m) EXPECT_TRUE(capture(m, nullptr)) << m;
  EXPECT_FALSE(capture(49, nullptr));
}

}  // namespace
}  // namespace sbserve
