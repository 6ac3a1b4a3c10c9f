// Measured GEMM plans for the small row counts of decode steps. Each of the model's GEMMs
// (y[n, out] = alpha · x[n, in] · W[out, in]ᵀ + beta · y) at n rows can run on cuBLAS's default
// (cublasGemmEx), on one of cuBLASLt's heuristic candidates (split-K and stream-K kernels among
// them, which cuBLAS's default does not take at these shapes), for n ≤ kSmallGemmMaxRows on a
// launch shape of the small-batch kernels (small_gemm.h), or for n ≤ kSkinnyGemmMaxRows on the
// tensor-core skinny kernels at one of their splits (skinny_gemm.h). The tuner times every candidate once per
// (GEMM, row bucket), rotating through the GEMM's weights in all layers so that each timed call reads
// its weights from memory as a step does, and keeps the fastest.
//
// When: on the first call of a (GEMM, bucket) outside a CUDA graph capture (it synchronises the
// stream and uses its own scratch outputs, so the step's buffers are untouched), or through
// Prepare before a capture. A call it cannot serve (unregistered weight, more than max_rows rows, a
// capture before tuning, a candidate invalid at this n) returns ran = false and the caller runs
// cuBLAS. Tuned plans are fixed for the process, so the same shape always runs the same kernel; the
// batch-invariant mode does not use the tuner.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sbserve::cuda {

struct GemmTunerOptions {
  int max_rows = 256;       // larger GEMMs are left to cuBLAS's default
  int lt_candidates = 8;    // cuBLASLt heuristic results timed per bucket (0: none)
  bool small_kernels = true;  // small_gemm.h launch shapes are candidates for n ≤ kSmallGemmMaxRows
  // skinny_gemm.h at each split is a candidate for n ≤ kSkinnyGemmMaxRows (off: they measured slower
  // than cuBLAS at every 3B shape, so they would only lengthen the tuning).
  bool skinny_kernels = false;
  // The skinny launch variants timed at each split (skinny_gemm.h; -1: the default variant). The
  // wgmma ones (10, 11) measured fastest of them at 16 and 64 rows on the H100.
  std::vector<int> skinny_variants = {10, 11};
  bool cublas_default = true;  // cuBLAS's default is a candidate (tests turn it off to reach the others)
  bool verbose = false;       // print each plan to stderr as it is chosen
};

class GemmTuner {
 public:
  GemmTuner() = default;
  GemmTuner(const GemmTuner&) = delete;
  GemmTuner& operator=(const GemmTuner&) = delete;
  ~GemmTuner();

  // `workspace` (on `stream`'s device) is shared with the caller's cuBLAS handle: both run on one stream.
  absl::Status Init(cudaStream_t stream, void* workspace, size_t workspace_bytes, const GemmTunerOptions& options);
  // One GEMM of the model in all its layers: the same in × out weights, one per layer, and how it
  // writes y (fp32 or bf16; accumulating, beta != 0, or not). Calls that write y otherwise are left
  // to the caller.
  void AddWeights(std::span<const void* const> weights, int64_t in, int64_t out, bool y_f32, bool accumulate);

  // y = alpha · x · Wᵀ (+ beta · y, fp32 y only) through the tuned plan; *ran = false when the caller
  // must run it (see above).
  absl::Status Run(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32, float alpha,
                   float beta, bool* ran);
  // Tunes every registered GEMM at n rows' bucket (before a graph capture of a step of n rows).
  absl::Status Prepare(int64_t n);
  // Tunes every registered GEMM at every bucket up to min(n, max_rows) rows (at startup, so that
  // serving does not pause to measure).
  absl::Status PrepareUpTo(int64_t n);

  // The row count a plan is tuned at for n rows: n up to 16, then multiples of 8 to 64, of 32 beyond.
  static int64_t Bucket(int64_t n);
  // The plan that a call of W at n rows runs, its time and cuBLAS's default's; "" before it is tuned.
  std::string Describe(const void* w, int64_t n) const;

 private:
  struct Plan {
    enum class Kind { kCublas, kLt, kSmall, kSkinny } kind = Kind::kCublas;
    int small_variant = 0;
    int skinny_split = 1;
    int skinny_variant = -1;
    cublasLtMatmulAlgo_t algo{};
    double us = 0, cublas_us = 0;  // per call, measured
  };
  // Matrix layouts of a GEMM at one exact row count, and the plan that runs there.
  struct Resolved {
    Plan plan;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  };
  // A GEMM of the model: its weights (one per layer) and how its output is written.
  struct Group {
    std::vector<const void*> weights;
    int64_t in = 0, out = 0;
    bool y_f32 = false, accumulate = false;
  };

  // Each takes a GEMM by its index in groups_.
  absl::Status Tune(int group, int64_t bucket);
  absl::Status Resolve(int group, int64_t n, Resolved* r);
  absl::Status Layouts(int group, int64_t n, Resolved* r) const;
  static void DestroyLayouts(Resolved* r);
  absl::Status Launch(int group, const Plan& plan, const Resolved& layouts, const void* x, int64_t n, const void* w,
                      void* y, float alpha, float beta) const;
  std::string Name(int group, int64_t bucket, const Plan& plan) const;

  cudaStream_t stream_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  GemmTunerOptions options_;
  cublasLtHandle_t lt_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;  // Wᵀ · x: A = W (transposed), B = x
  cublasHandle_t blas_ = nullptr;        // the cuBLAS default candidate
  std::vector<Group> groups_;
  std::map<const void*, int> group_of_;                  // weight -> group
  std::map<std::pair<int, int64_t>, Plan> tuned_;        // (group, bucket) -> plan
  std::map<std::pair<int, int64_t>, Resolved> resolved_;  // (group, exact n)
};

}  // namespace sbserve::cuda
