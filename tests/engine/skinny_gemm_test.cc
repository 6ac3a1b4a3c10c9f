// The tensor-core skinny GEMMs (engine/cuda/skinny_gemm.h) against a float64 product of the same
// bf16 operands: row counts at and inside the n-tile edges, inner sizes of one step, an odd step
// count and the model's, output counts that do not fill a CTA, every split (including CTAs left
// with no inner range), every launch variant (L2 prefetch, load depth), the bf16 and fp32 outputs with alpha and beta,
// the fused GLU epilogue with every activation, untouched memory past the output, bitwise
// repeatability, a launch inside a CUDA graph, and what they refuse.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda/skinny_gemm.h"
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

TEST(SkinnyGemm, MatchesFloat64ForEveryRowCountSplitAndEpilogue) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(13);
  struct Case {
    int64_t in, out;
  };
  // in: one 32-wide step (splits 2..8 leave CTAs with nothing), 3 steps, 33 steps, the model's 2304;
  // out: 1, odd counts below and above a CTA's 128 rows, exactly 128.
  const Case cases[] = {{32, 1}, {96, 131}, {1056, 128}, {2304, 200}};
  for (const Case& c : cases) {
    for (int n : {1, 5, 8, 9, 16, 17, 31, 33, 48, 64}) {
      const GemmOperands op(n, c.in, c.out, rng);
      const size_t count = static_cast<size_t>(n * c.out);
      for (int split : {0, 1, 2, 4, 8}) {
        for (int prefetch = 0; prefetch < cuda::kSkinnyGemmVariants; ++prefetch) {
          SCOPED_TRACE(absl::StrCat("in=", c.in, " out=", c.out, " n=", n, " split=", split, " prefetch=", prefetch));
          ASSERT_NO_FATAL_FAILURE(ExpectEpilogues(
              [&](void* y, bool y_f32, float alpha, float beta) {
                return cuda::SkinnyGemm(op.dx.p, n, c.in, op.dw.p, c.out, y, y_f32, alpha, beta, nullptr, split,
                                        prefetch)
                    .ok();
              },
              op.ref, op.mag, count));
        }
      }
    }
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(SkinnyGemm, GluEpilogueMatchesFloat64ForEveryActivation) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(17);
  const int64_t in = 2304;
  for (int64_t inner : {int64_t{1}, int64_t{19}, int64_t{64}, int64_t{100}}) {
    for (int n : {1, 7, 16, 40, 64}) {
      const GemmOperands op(n, in, 2 * inner, rng);
      Dev<uint16_t> out(n * inner + kCanary);
      for (int split : {0, 1, 4}) {
        for (int variant : {0, 4, 6, 7, 8, 10}) {  // registers; with the L2 hint; staged: 3 / 4 stages, 8 warps, wgmma
        for (int act = 0; act < 4; ++act) {
          SCOPED_TRACE(absl::StrCat("inner=", inner, " n=", n, " split=", split, " variant=", variant, " act=", act));
          out.Put(std::vector<uint16_t>(out.n, kNanBf16));
          ASSERT_TRUE(cuda::SkinnyGemmGlu(act, op.dx.p, n, in, op.dw.p, inner, out.p, nullptr, split, variant).ok());
          ASSERT_NO_FATAL_FAILURE(ExpectGlu(out.Get(), op.ref, n, inner, act));
        }
        }
      }
    }
  }
}

// The cluster's partial tiles are summed in rank order, so a call repeats bit for bit; and a call
// captured in a CUDA graph (as the decode steps are; the staged variants carry their tensor maps as
// kernel parameters) gives the same bits when the graph replays.
TEST(SkinnyGemm, RepeatsBitwiseAndRunsInsideAGraph) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(19);
  const int64_t n = 24, in = 2304, out = 2304;
  const auto x = RandomBf16(n * in, 1.f, rng);
  const auto w = RandomBf16(out * in, 0.05f, rng);
  Dev<uint16_t> dx(x.size()), dw(w.size());
  dx.Put(x);
  dw.Put(w);
  Dev<float> y(n * out);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  for (const auto [split, variant] :
       {std::pair{1, 0}, std::pair{8, 0}, std::pair{1, 6}, std::pair{4, 7}, std::pair{2, 9}, std::pair{4, 11}}) {
    SCOPED_TRACE(absl::StrCat("split=", split, " variant=", variant));
    ASSERT_TRUE(cuda::SkinnyGemm(dx.p, n, in, dw.p, out, y.p, true, 1.f, 0.f, s, split, variant).ok());
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    const auto first = y.Get();
    for (int rep = 0; rep < 5; ++rep) {
      ASSERT_TRUE(cuda::SkinnyGemm(dx.p, n, in, dw.p, out, y.p, true, 1.f, 0.f, s, split, variant).ok());
      ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
      ASSERT_EQ(std::memcmp(y.Get().data(), first.data(), first.size() * 4), 0) << "repeat " << rep;
    }
    ASSERT_EQ(cudaMemset(y.p, 0, y.n * 4), cudaSuccess);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    ASSERT_TRUE(cuda::SkinnyGemm(dx.p, n, in, dw.p, out, y.p, true, 1.f, 0.f, s, split, variant).ok());
    ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    ASSERT_EQ(std::memcmp(y.Get().data(), std::vector<float>(y.n, 0.f).data(), y.n * 4), 0) << "captured, not run";
    for (int rep = 0; rep < 2; ++rep) {
      ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
      ASSERT_EQ(std::memcmp(y.Get().data(), first.data(), first.size() * 4), 0) << "graph replay " << rep;
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  cudaStreamDestroy(s);
}

TEST(SkinnyGemm, RefusesWhatItCannotTake) {
  alignas(16) static uint16_t buf[128];
  EXPECT_TRUE(cuda::SkinnyGemmFits(1, 32, buf, buf));
  EXPECT_TRUE(cuda::SkinnyGemmFits(cuda::kSkinnyGemmMaxRows, 2304, buf, buf));
  EXPECT_FALSE(cuda::SkinnyGemmFits(0, 32, buf, buf));
  EXPECT_FALSE(cuda::SkinnyGemmFits(cuda::kSkinnyGemmMaxRows + 1, 32, buf, buf));
  EXPECT_FALSE(cuda::SkinnyGemmFits(1, 48, buf, buf));     // in not a multiple of 32
  EXPECT_FALSE(cuda::SkinnyGemmFits(1, 32, buf + 1, buf));  // x not 16-byte aligned
  EXPECT_FALSE(cuda::SkinnyGemmFits(1, 32, buf, buf + 4));  // W not 16-byte aligned
  EXPECT_FALSE(cuda::SkinnyGemm(buf, 1, 48, buf, 4, buf, true, 1.f, 0.f, nullptr).ok());
  EXPECT_FALSE(cuda::SkinnyGemm(buf, 1, 32, buf, 4, buf, false, 1.f, 1.f, nullptr).ok());  // beta with bf16 y
  EXPECT_FALSE(cuda::SkinnyGemm(buf, 1, 32, buf, 4, buf, true, 1.f, 0.f, nullptr, /*split=*/3).ok());
  EXPECT_FALSE(cuda::SkinnyGemm(buf, 1, 32, buf, 4, buf, true, 1.f, 0.f, nullptr, 1, cuda::kSkinnyGemmVariants).ok());
  EXPECT_FALSE(cuda::SkinnyGemmGlu(0, buf, 65, 32, buf, 4, buf, nullptr).ok());
}

// The automatic split: a power of two up to 8, more for fewer weight rows, never more CTAs than
// 32-wide inner steps, and no more for a variant that fits fewer CTAs per SM.
TEST(SkinnyGemm, AutomaticSplitFillsTheMachineWithinItsLimits) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int n : {1, 16, 64}) {
    SCOPED_TRACE(absl::StrCat("n=", n));
    const int small = cuda::SkinnyGemmAutoSplit(n, 2304, 2304);
    const int large = cuda::SkinnyGemmAutoSplit(n, 2304, 49152);
    for (int s : {small, large}) EXPECT_TRUE(s == 1 || s == 2 || s == 4 || s == 8) << s;
    EXPECT_GE(small, large);
    EXPECT_EQ(cuda::SkinnyGemmAutoSplit(n, 32, 128), 1);  // one inner step: nothing to split
    // The staged variants fit fewer CTAs on an SM, so they need no more of a split.
    EXPECT_LE(cuda::SkinnyGemmAutoSplit(n, 2304, 2304, 7), cuda::SkinnyGemmAutoSplit(n, 2304, 2304, 0));
    EXPECT_LE(cuda::SkinnyGemmAutoSplit(n, 64, 128), 2);
  }
}

}  // namespace
}  // namespace sbserve
