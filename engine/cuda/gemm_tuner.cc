#include "engine/cuda/gemm_tuner.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/cuda/cublas_check.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/skinny_gemm.h"
#include "engine/cuda/small_gemm.h"
#include "kernels/cuda_check.h"

namespace sbserve::cuda {
namespace {

#define SB_OK(expr)                  \
  do {                               \
    absl::Status sb_st_ = (expr);    \
    if (!sb_st_.ok()) return sb_st_; \
  } while (0)

bool Aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Owns the CUDA events of one tuning pass.
class EventPair {
 public:
  EventPair() {
    cudaEventCreate(&a_);
    cudaEventCreate(&b_);
  }
  ~EventPair() {
    if (a_) cudaEventDestroy(a_);
    if (b_) cudaEventDestroy(b_);
  }
  cudaEvent_t a() const { return a_; }
  cudaEvent_t b() const { return b_; }

 private:
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

}  // namespace

GemmTuner::~GemmTuner() {
  for (auto& [k, r] : resolved_) DestroyLayouts(&r);
  if (desc_) cublasLtMatmulDescDestroy(desc_);
  if (lt_) cublasLtDestroy(lt_);
  if (blas_) cublasDestroy(blas_);
}

absl::Status GemmTuner::Init(cudaStream_t stream, void* workspace, size_t workspace_bytes,
                             const GemmTunerOptions& options) {
  stream_ = stream;
  workspace_ = workspace;
  workspace_bytes_ = workspace_bytes;
  options_ = options;
  SB_CUBLAS_RETURN_IF_ERROR(cublasCreate(&blas_));
  SB_CUBLAS_RETURN_IF_ERROR(cublasSetStream(blas_, stream_));
  SB_CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(blas_, workspace_, workspace_bytes_));
  SB_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&lt_));
  SB_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
  SB_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
  SB_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
  return absl::OkStatus();
}

void GemmTuner::AddWeights(std::span<const void* const> weights, int64_t in, int64_t out, bool y_f32,
                           bool accumulate) {
  Group g;
  g.weights.assign(weights.begin(), weights.end());
  g.in = in;
  g.out = out;
  g.y_f32 = y_f32;
  g.accumulate = accumulate;
  for (const void* w : weights) group_of_[w] = static_cast<int>(groups_.size());
  groups_.push_back(std::move(g));
}

int64_t GemmTuner::Bucket(int64_t n) {
  if (n <= 16) return n;
  if (n <= 64) return (n + 7) / 8 * 8;
  return (n + 31) / 32 * 32;
}

// Row-major y[n, out] = x[n, in] · W[out, in]ᵀ is column-major yᵀ[out, n] = op_T(W: in × out) · (xᵀ: in × n).
absl::Status GemmTuner::Layouts(int group, int64_t n, Resolved* r) const {
  const Group& g = groups_[group];
  SB_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&r->a, CUDA_R_16BF, g.in, g.out, g.in));
  SB_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&r->b, CUDA_R_16BF, g.in, n, g.in));
  SB_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&r->c, g.y_f32 ? CUDA_R_32F : CUDA_R_16BF, g.out, n, g.out));
  return absl::OkStatus();
}

void GemmTuner::DestroyLayouts(Resolved* r) {
  for (cublasLtMatrixLayout_t* l : {&r->a, &r->b, &r->c}) {
    if (*l) cublasLtMatrixLayoutDestroy(*l);
    *l = nullptr;
  }
}

absl::Status GemmTuner::Launch(int group, const Plan& plan, const Resolved& layouts, const void* x, int64_t n,
                               const void* w, void* y, float alpha, float beta) const {
  const Group& g = groups_[group];
  switch (plan.kind) {
    case Plan::Kind::kSmall:
      return SmallGemm(x, n, g.in, w, g.out, y, g.y_f32, alpha, beta, stream_, plan.small_variant);
    case Plan::Kind::kSkinny:
      return SkinnyGemm(x, n, g.in, w, g.out, y, g.y_f32, alpha, beta, stream_, plan.skinny_split,
                        plan.skinny_variant);
    case Plan::Kind::kLt:
      SB_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(lt_, desc_, &alpha, w, layouts.a, x, layouts.b, &beta, y, layouts.c, y, layouts.c,
                                &plan.algo, workspace_, workspace_bytes_, stream_));
      return absl::OkStatus();
    case Plan::Kind::kCublas:
      break;
  }
  return CublasGemm(blas_, x, n, g.in, w, g.out, y, g.y_f32, alpha, beta);
}

absl::Status GemmTuner::Tune(int group, int64_t bucket) {
  const Group& g = groups_[group];
  // Scratch input and output of `bucket` rows, freed after this pass (the step's buffers are not touched).
  // Without the memory for them, this bucket keeps cuBLAS's default (a step must not fail for it).
  DeviceBuffer xs, ys;
  if (!xs.Reserve(static_cast<size_t>(bucket * g.in) * 2).ok() ||
      !ys.Reserve(static_cast<size_t>(bucket * g.out) * (g.y_f32 ? 4 : 2)).ok()) {
    cudaGetLastError();
    tuned_[{group, bucket}] = Plan{};
    return absl::OkStatus();
  }
  // Inputs: the first weight's bytes (values of a real bf16 distribution), as many as fit.
  const size_t x_bytes = static_cast<size_t>(bucket * g.in) * 2;
  const size_t w_bytes = static_cast<size_t>(g.in * g.out) * 2;
  SB_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(xs.get(), g.weights[0], std::min(x_bytes, w_bytes), cudaMemcpyDeviceToDevice, stream_));
  if (x_bytes > w_bytes) {
    SB_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(static_cast<char*>(xs.get()) + w_bytes, 0, x_bytes - w_bytes, stream_));
  }
  SB_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(ys.get(), 0, ys.bytes(), stream_));
  const float alpha = 0.25f, beta = g.accumulate ? 1.f : 0.f;

  Resolved layouts;
  absl::Status st = Layouts(group, bucket, &layouts);
  std::vector<Plan> candidates;
  if (options_.cublas_default) candidates.push_back(Plan{});
  if (st.ok() && options_.lt_candidates > 0) {
    cublasLtMatmulPreference_t pref = nullptr;
    if (cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS) {
      const uint64_t ws = workspace_bytes_;
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
      std::vector<cublasLtMatmulHeuristicResult_t> found(std::max(options_.lt_candidates, 1));
      int count = 0;
      if (cublasLtMatmulAlgoGetHeuristic(lt_, desc_, layouts.a, layouts.b, layouts.c, layouts.c, pref,
                                         static_cast<int>(found.size()), found.data(), &count) == CUBLAS_STATUS_SUCCESS) {
        for (int i = 0; i < count; ++i) {
          if (found[i].state != CUBLAS_STATUS_SUCCESS) continue;
          Plan p;
          p.kind = Plan::Kind::kLt;
          p.algo = found[i].algo;
          candidates.push_back(p);
        }
      }
      cublasLtMatmulPreferenceDestroy(pref);
    }
  }
  if (options_.small_kernels && SmallGemmFits(bucket, g.in, xs.get(), g.weights[0])) {
    for (int v = 0; v < kSmallGemmVariants; ++v) {
      Plan p;
      p.kind = Plan::Kind::kSmall;
      p.small_variant = v;
      candidates.push_back(p);
    }
  }
  if (options_.skinny_kernels && SkinnyGemmFits(bucket, g.in, xs.get(), g.weights[0])) {
    for (int split = 1; split <= kSkinnyGemmMaxSplit; split *= 2) {
      for (int variant : options_.skinny_variants) {
        Plan p;
        p.kind = Plan::Kind::kSkinny;
        p.skinny_split = split;
        p.skinny_variant = variant;
        candidates.push_back(p);
      }
    }
  }

  // Each candidate: a warm-up pass, then the best of two passes through all the layers' weights.
  EventPair ev;
  const int layers = static_cast<int>(g.weights.size());
  const int calls = std::max(layers, 8);
  Plan best;  // cuBLAS's default when no candidate runs
  best.us = std::numeric_limits<double>::infinity();
  double cublas_us = 0;
  for (Plan& p : candidates) {
    double us = std::numeric_limits<double>::infinity();
    bool failed = false;
    for (int pass = 0; pass < 3 && !failed; ++pass) {
      SB_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev.a(), stream_));
      const int pass_calls = pass == 0 ? std::min(calls, 8) : calls;
      for (int i = 0; i < pass_calls; ++i) {
        if (!Launch(group, p, layouts, xs.get(), bucket, g.weights[i % layers], ys.get(), alpha, beta).ok()) {
          failed = true;
          break;
        }
      }
      SB_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev.b(), stream_));
      SB_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(ev.b()));
      float ms = 0;
      SB_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, ev.a(), ev.b()));
      if (pass > 0) us = std::min(us, 1e3 * ms / pass_calls);
    }
    // A candidate that fails to launch is dropped (its launch error is cleared; an error that sticks
    // to the context fails the step's own checks).
    if (cudaGetLastError() != cudaSuccess) failed = true;
    if (failed) continue;
    p.us = us;
    if (p.kind == Plan::Kind::kCublas) cublas_us = us;
    if (us < best.us) best = p;
  }
  best.cublas_us = cublas_us;
  DestroyLayouts(&layouts);
  tuned_[{group, bucket}] = best;
  if (options_.verbose) std::fprintf(stderr, "gemm plan: %s\n", Name(group, bucket, best).c_str());
  return absl::OkStatus();
}

// The plan of the GEMM's bucket, checked for these n rows (cuBLASLt algorithms are validated per
// problem; one that does not support n falls back to cuBLAS's default).
absl::Status GemmTuner::Resolve(int group, int64_t n, Resolved* r) {
  const Plan& plan = tuned_.at({group, Bucket(n)});
  SB_OK(Layouts(group, n, r));
  r->plan = plan;
  if (plan.kind == Plan::Kind::kLt && n != Bucket(n)) {
    cublasLtMatmulHeuristicResult_t check{};
    if (cublasLtMatmulAlgoCheck(lt_, desc_, r->a, r->b, r->c, r->c, &plan.algo, &check) != CUBLAS_STATUS_SUCCESS ||
        check.workspaceSize > workspace_bytes_) {
      r->plan = Plan{};
    }
  }
  if (plan.kind == Plan::Kind::kSmall && n > kSmallGemmMaxRows) r->plan = Plan{};
  if (plan.kind == Plan::Kind::kSkinny && n > kSkinnyGemmMaxRows) r->plan = Plan{};
  return absl::OkStatus();
}

absl::Status GemmTuner::Run(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                            float alpha, float beta, bool* ran) {
  *ran = false;
  if (n < 1 || n > options_.max_rows) return absl::OkStatus();
  auto it = group_of_.find(w);
  if (it == group_of_.end()) return absl::OkStatus();
  const int group = it->second;
  const Group& g = groups_[group];
  if (g.in != in || g.out != out || g.y_f32 != y_f32 || g.accumulate != (beta != 0.f)) return absl::OkStatus();
  // cuBLASLt's candidates are chosen for 256-byte-aligned operands (its default assumption).
  if (!Aligned(x, 256) || !Aligned(w, 256) || !Aligned(y, 256)) return absl::OkStatus();
  auto rit = resolved_.find({group, n});
  if (rit == resolved_.end()) {
    const int64_t bucket = Bucket(n);
    if (!tuned_.contains({group, bucket})) {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      SB_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(stream_, &capture));
      if (capture != cudaStreamCaptureStatusNone) return absl::OkStatus();  // not tuned before the capture
      SB_OK(Tune(group, bucket));
    }
    Resolved r;
    SB_OK(Resolve(group, n, &r));
    rit = resolved_.emplace(std::make_pair(group, n), r).first;
  }
  SB_OK(Launch(group, rit->second.plan, rit->second, x, n, w, y, alpha, beta));
  *ran = true;
  return absl::OkStatus();
}

absl::Status GemmTuner::Prepare(int64_t n) {
  if (n < 1 || n > options_.max_rows) return absl::OkStatus();
  for (int group = 0; group < static_cast<int>(groups_.size()); ++group) {
    if (!tuned_.contains({group, Bucket(n)})) SB_OK(Tune(group, Bucket(n)));
  }
  return absl::OkStatus();
}

absl::Status GemmTuner::PrepareUpTo(int64_t n) {
  for (int64_t m = 1; m <= std::min<int64_t>(n, options_.max_rows); m = Bucket(m) + 1) SB_OK(Prepare(m));
  return absl::OkStatus();
}

std::string GemmTuner::Name(int group, int64_t bucket, const Plan& plan) const {
  const Group& g = groups_[group];
  std::string what;
  switch (plan.kind) {
    case Plan::Kind::kCublas:
      what = "cublas default";
      break;
    case Plan::Kind::kSmall:
      what = absl::StrCat("small gemm v", plan.small_variant);
      break;
    case Plan::Kind::kSkinny:
      what = absl::StrCat("skinny gemm split ", plan.skinny_split, " variant ", plan.skinny_variant);
      break;
    case Plan::Kind::kLt: {
      int id = 0, tile = 0, splitk = 0, stages = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&plan.algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), nullptr);
      cublasLtMatmulAlgoConfigGetAttribute(&plan.algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), nullptr);
      cublasLtMatmulAlgoConfigGetAttribute(&plan.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk),
                                           nullptr);
      cublasLtMatmulAlgoConfigGetAttribute(&plan.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages),
                                           nullptr);
      what = absl::StrCat("cublasLt algo ", id, " tile ", tile, " stages ", stages, " split-k ", splitk);
      break;
    }
  }
  return absl::StrFormat("%lld x %lld%s%s n=%lld: %s, %.2f us (cublas default %.2f us)",
                         static_cast<long long>(g.out), static_cast<long long>(g.in), g.y_f32 ? " fp32" : "",
                         g.accumulate ? " +=" : "", static_cast<long long>(bucket), what, plan.us, plan.cublas_us);
}

std::string GemmTuner::Describe(const void* w, int64_t n) const {
  auto g = group_of_.find(w);
  if (g == group_of_.end()) return "";
  auto r = resolved_.find({g->second, n});
  if (r == resolved_.end()) return "";
  return Name(g->second, Bucket(n), r->second.plan);
}

}  // namespace sbserve::cuda
