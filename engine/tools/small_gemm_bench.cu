// small_gemm_bench: the small-batch GEMM kernels (engine/cuda/small_gemm.h), each launch variant,
// and the tuned plan (engine/cuda/gemm_tuner.h: the fastest of cuBLAS's default, cuBLASLt's
// heuristic candidates and the small kernels, as the CUDA backend picks it) against cuBLAS as the
// CUDA backend calls it, on the 3B model's GEMM shapes at n = 1..128 rows. Weights are random bf16
// and rotated through copies that together exceed L2; each time is the median over 7 runs of 20
// back-to-back calls. Prints the time, the weight bytes over it, that as a share of the copy
// bandwidth measured in the same run, and the largest difference from cuBLAS's output.
//
// Rows up to kSkinnyGemmMaxRows get a second line: the tensor-core skinny kernels
// (engine/cuda/skinny_gemm.h) at their automatic split, then at every split (1, 2, 4, 8) and launch
// variant (p0 plain, p1 / p2 bulk L2 prefetch 512 B / 2 KB ahead, p3 the 256-byte L2 fetch hint,
// p4 the hint with 4 steps of loads in flight, p5 4 steps without it, p6 / p7 staged through 3 / 4
// shared-memory stages by TMA for 4 consumer warps, p8 / p9 the same for 8), and their largest
// difference from cuBLAS.
//
// --profile SPLIT:VARIANT [--shape NAME] runs, per shape and row count, two cuBLAS calls and two
// skinny calls at that split and variant and nothing else (for ncu; no timing).
//
// usage: small_gemm_bench [--rows 1,2,3,4,8,16,32,64,128] [--no-skinny-sweep]
//                         [--profile SPLIT:VARIANT] [--shape NAME]
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cuda/cublas_check.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/cuda/gemm_tuner.h"
#include "engine/cuda/skinny_gemm.h"
#include "engine/cuda/small_gemm.h"

namespace {

#define CHECK_CUDA(x)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)
#define CHECK_OK(x)                                                              \
  do {                                                                           \
    absl::Status s_ = (x);                                                       \
    if (!s_.ok()) {                                                              \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

__global__ void FillBf16(__nv_bfloat16* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed ^ static_cast<uint32_t>(i >> 32) * 40503u;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xffffff) / 16777216.f * 2.f - 1.f) * scale);
  }
}

struct Shape {
  const char* name;
  int64_t out, in;
  bool y_f32;
  float alpha, beta;
  bool glu;  // out is the GLU's inner size; W has 2·out rows
};

template <typename F>
double MedianUs(cudaStream_t s, int copies, F&& call) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) call(i % copies);
  std::vector<double> us;
  for (int rep = 0; rep < 7; ++rep) {
    constexpr int kCalls = 20;
    CHECK_CUDA(cudaEventRecord(a, s));
    for (int i = 0; i < kCalls; ++i) call((rep * kCalls + i) % copies);
    CHECK_CUDA(cudaEventRecord(b, s));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    us.push_back(ms * 1000.0 / kCalls);
  }
  std::sort(us.begin(), us.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return us[us.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> rows = {1, 2, 3, 4, 8, 16, 32, 64, 128};
  bool skinny_sweep = true;
  int profile_split = 0, profile_variant = 0;
  std::string only_shape;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-skinny-sweep") == 0) skinny_sweep = false;
    if (std::strcmp(argv[i], "--profile") == 0 && i + 1 < argc &&
        std::sscanf(argv[++i], "%d:%d", &profile_split, &profile_variant) != 2) {
      std::fprintf(stderr, "--profile SPLIT:VARIANT\n");
      return 2;
    }
    if (std::strcmp(argv[i], "--shape") == 0 && i + 1 < argc) only_shape = argv[++i];
    if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
      rows.clear();
      for (char* t = std::strtok(argv[++i], ","); t != nullptr; t = std::strtok(nullptr, ",")) rows.push_back(std::atoi(t));
    }
  }
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreate(&s));
  cublasHandle_t blas;
  cublasCreate(&blas);
  cublasSetStream(blas, s);
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));

  // Copy bandwidth in this run (read + write counted), the yardstick of the percentages.
  const size_t copy_bytes = size_t{1} << 30;
  void *src, *dst;
  CHECK_CUDA(cudaMalloc(&src, copy_bytes));
  CHECK_CUDA(cudaMalloc(&dst, copy_bytes));
  CHECK_CUDA(cudaMemset(src, 1, copy_bytes));
  const double copy_us =
      MedianUs(s, 1, [&](int) { CHECK_CUDA(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, s)); });
  const double copy_gbs = 2.0 * copy_bytes / copy_us / 1e3;
  cudaFree(src);
  cudaFree(dst);
  std::printf("device %s, copy %.0f GB/s (read + write)\n", prop.name, copy_gbs);
  void* tuner_ws = nullptr;
  CHECK_CUDA(cudaMalloc(&tuner_ws, size_t{32} << 20));
  std::printf("%-12s %3s %16s %16s %9s", "shape", "n", "cublas us (%)", "tuned us (%)", "tuned_d");
  for (int v = 0; v < sbserve::cuda::kSmallGemmVariants; ++v) std::printf("   v%d us (%%)      ", v);
  std::printf(" max_rel_d\n");

  // The 3B preset: D 2304, 36 heads of 64 (qkv 6912), inner 9216 (GLU), vocab 49152.
  const Shape shapes[] = {
      {"c_attn", 6912, 2304, false, 1.f, 0.f, false},   {"c_proj+res", 2304, 2304, true, 0.22f, 1.f, false},
      {"c_fc+glu", 9216, 2304, false, 1.f, 0.f, true},   {"fc_proj+res", 2304, 9216, true, 0.22f, 1.f, false},
      {"lm_head", 49152, 2304, true, 0.125f, 0.f, false},
  };
  const int max_n = *std::max_element(rows.begin(), rows.end());
  for (const Shape& sh : shapes) {
    if (!only_shape.empty() && only_shape != sh.name) continue;
    const int64_t w_rows = sh.glu ? 2 * sh.out : sh.out;
    const size_t w_bytes = static_cast<size_t>(w_rows * sh.in) * 2;
    const int copies = static_cast<int>(std::max<size_t>(2, (size_t{256} << 20) / w_bytes + 1));
    __nv_bfloat16 *w, *x, *fc;
    void *y_ref, *y;
    CHECK_CUDA(cudaMalloc(&w, w_bytes * copies));
    CHECK_CUDA(cudaMalloc(&x, static_cast<size_t>(max_n * sh.in) * 2));
    CHECK_CUDA(cudaMalloc(&fc, static_cast<size_t>(max_n * w_rows) * 2));
    const size_t y_bytes = static_cast<size_t>(max_n * sh.out) * 4;
    CHECK_CUDA(cudaMalloc(&y_ref, y_bytes));
    CHECK_CUDA(cudaMalloc(&y, y_bytes));
    FillBf16<<<1024, 256, 0, s>>>(w, w_rows * sh.in * copies, 7, 0.05f);
    FillBf16<<<1024, 256, 0, s>>>(x, max_n * sh.in, 11, 1.f);
    const int64_t w_elems = w_rows * sh.in;
    // The tuner as the backend sets it up: one group of weights (here the copies) per GEMM.
    sbserve::cuda::GemmTuner tuner;
    sbserve::cuda::GemmTunerOptions topt;
    topt.max_rows = max_n;
    CHECK_OK(tuner.Init(s, tuner_ws, size_t{32} << 20, topt));
    std::vector<const void*> copy_ptrs;
    for (int k = 0; k < copies; ++k) copy_ptrs.push_back(w + k * w_elems);
    tuner.AddWeights(copy_ptrs, sh.in, w_rows, sh.y_f32 && !sh.glu, !sh.glu && sh.beta != 0.f);
    for (int n : rows) {
      auto cublas = [&](int k) {
        const __nv_bfloat16* wk = w + k * w_elems;
        void* out = sh.glu ? static_cast<void*>(fc) : y_ref;
        CHECK_OK(sbserve::cuda::CublasGemm(blas, x, n, sh.in, wk, w_rows, out, sh.y_f32, sh.alpha, sh.beta));
        if (sh.glu) CHECK_OK(sbserve::cuda::Activation(0, true, fc, nullptr, n, sh.out, y_ref, s));
      };
      auto small = [&](int k) {
        const __nv_bfloat16* wk = w + k * w_elems;
        if (sh.glu) {
          CHECK_OK(sbserve::cuda::SmallGemmGlu(0, x, n, sh.in, wk, sh.out, y, s));
        } else {
          CHECK_OK(sbserve::cuda::SmallGemm(x, n, sh.in, wk, sh.out, y, sh.y_f32, sh.alpha, sh.beta, s));
        }
      };
      auto tuned = [&](int k) {
        const __nv_bfloat16* wk = w + k * w_elems;
        void* out = sh.glu ? static_cast<void*>(fc) : y;
        bool ran = false;
        CHECK_OK(tuner.Run(x, n, sh.in, wk, w_rows, out, sh.y_f32 && !sh.glu, sh.alpha, sh.glu ? 0.f : sh.beta, &ran));
        if (!ran) {
          std::fprintf(stderr, "the tuner did not take %s at n = %d\n", sh.name, n);
          std::exit(1);
        }
        if (sh.glu) CHECK_OK(sbserve::cuda::Activation(0, true, fc, nullptr, n, sh.out, y, s));
      };
      if (profile_split > 0) {
        for (int k = 0; k < 2; ++k) cublas(k);
        for (int k = 0; k < 2; ++k) {
          const __nv_bfloat16* wk = w + k * w_elems;
          if (sh.glu) {
            CHECK_OK(sbserve::cuda::SkinnyGemmGlu(0, x, n, sh.in, wk, sh.out, y, s, profile_split, profile_variant));
          } else {
            CHECK_OK(sbserve::cuda::SkinnyGemm(x, n, sh.in, wk, sh.out, y, sh.y_f32, sh.alpha, sh.beta, s,
                                               profile_split, profile_variant));
          }
        }
        CHECK_CUDA(cudaStreamSynchronize(s));
        continue;
      }
      const double gbs = w_bytes / 1e3;  // per µs -> GB/s
      const double cu = MedianUs(s, copies, cublas);
      const double tu = MedianUs(s, copies, tuned);
      const size_t count = static_cast<size_t>(n * sh.out);
      const bool f32 = sh.y_f32 && !sh.glu;
      // Largest difference from cuBLAS relative to the largest |cuBLAS output|, one call of each on
      // copy 0 from zeroed outputs (beta = 1 accumulates into them).
      auto compare = [&](auto&& other) {
        CHECK_CUDA(cudaMemsetAsync(y_ref, 0, y_bytes, s));
        CHECK_CUDA(cudaMemsetAsync(y, 0, y_bytes, s));
        cublas(0);
        other(0);
        std::vector<float> a(count), b(count);
        if (f32) {
          CHECK_CUDA(cudaMemcpy(a.data(), y_ref, count * 4, cudaMemcpyDeviceToHost));
          CHECK_CUDA(cudaMemcpy(b.data(), y, count * 4, cudaMemcpyDeviceToHost));
        } else {
          std::vector<__nv_bfloat16> ha(count), hb(count);
          CHECK_CUDA(cudaMemcpy(ha.data(), y_ref, count * 2, cudaMemcpyDeviceToHost));
          CHECK_CUDA(cudaMemcpy(hb.data(), y, count * 2, cudaMemcpyDeviceToHost));
          for (size_t i = 0; i < count; ++i) a[i] = __bfloat162float(ha[i]), b[i] = __bfloat162float(hb[i]);
        }
        double scale = 0, d = 0;
        for (size_t i = 0; i < count; ++i) scale = std::max(scale, std::fabs(static_cast<double>(a[i])));
        for (size_t i = 0; i < count; ++i) d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
        return d / std::max(scale, 1e-30);
      };
      std::printf("%-12s %3d %8.2f (%4.1f%%) %8.2f (%4.1f%%) %9.2e", sh.name, n, cu, 100.0 * gbs / cu / copy_gbs, tu,
                  100.0 * gbs / tu / copy_gbs, compare(tuned));
      const std::string plan = tuner.Describe(w, n);
      // The skinny kernels' line (printed after the row's own).
      auto skinny_line = [&] {
        if (!sbserve::cuda::SkinnyGemmFits(n, sh.in, x, w)) return;
        auto skinny_at = [&](int split, int prefetch) {
          return [&, split, prefetch](int k) {
            const __nv_bfloat16* wk = w + k * w_elems;
            if (sh.glu) {
              CHECK_OK(sbserve::cuda::SkinnyGemmGlu(0, x, n, sh.in, wk, sh.out, y, s, split, prefetch));
            } else {
              CHECK_OK(sbserve::cuda::SkinnyGemm(x, n, sh.in, wk, sh.out, y, sh.y_f32, sh.alpha, sh.beta, s, split, prefetch));
            }
          };
        };
        const double au = MedianUs(s, copies, skinny_at(0, -1));
        double diff = compare(skinny_at(0, -1));
        std::printf("%-12s %3d   skinny auto s%d %8.2f (%4.1f%%)", "", n, sbserve::cuda::SkinnyGemmAutoSplit(n, sh.in, w_rows),
                    au, 100.0 * gbs / au / copy_gbs);
        if (skinny_sweep) {
          for (int split : {1, 2, 4, 8})
            for (int prefetch = 0; prefetch < sbserve::cuda::kSkinnyGemmVariants; ++prefetch) {
              const double us = MedianUs(s, copies, skinny_at(split, prefetch));
              std::printf("  s%dp%d %6.2f", split, prefetch, us);
              diff = std::max(diff, compare(skinny_at(split, prefetch)));
            }
        }
        std::printf("  max_rel_d %9.2e\n", diff);
      };
      if (!sbserve::cuda::SmallGemmFits(n, sh.in, x, w)) {
        std::printf("  [%s]\n", plan.c_str());
        skinny_line();
        continue;
      }
      double diff = 0;
      for (int v = 0; v < sbserve::cuda::kSmallGemmVariants; ++v) {
        sbserve::cuda::SetSmallGemmVariant(v);
        const double sm = MedianUs(s, copies, small);
        std::printf("  %7.2f (%5.1f%%)", sm, 100.0 * gbs / sm / copy_gbs);
        diff = std::max(diff, compare(small));
      }
      sbserve::cuda::SetSmallGemmVariant(0);
      std::printf(" %9.2e  [%s]\n", diff, plan.c_str());
      skinny_line();
    }
    cudaFree(w);
    cudaFree(x);
    cudaFree(fc);
    cudaFree(y_ref);
    cudaFree(y);
  }
  cudaFree(tuner_ws);
  cublasDestroy(blas);
  return 0;
}
