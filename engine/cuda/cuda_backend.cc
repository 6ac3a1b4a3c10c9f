// The CUDA backend: bf16 weights and paged bf16 KV cache on one device, cuBLAS GEMMs (bf16 in,
// fp32 accumulate), our stick-breaking attention kernels, fp32 residual stream.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/cuda/cublas_check.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_sampler.h"
#include "engine/cuda/gemm_tuner.h"
#include "engine/cuda/skinny_gemm.h"
#include "engine/cuda/small_gemm.h"
#include "engine/cuda/step_graphs.h"
#include "kernels/cuda_check.h"
#include "kernels/sb_attn.h"

namespace sbserve {
namespace {

using cuda::DeviceBuffer;

#define SB_RETURN_IF_ERROR(expr)       \
  do {                                 \
    absl::Status sb_st_ = (expr);      \
    if (!sb_st_.ok()) return sb_st_;   \
  } while (0)

// SBSERVE_CUDA_DEBUG=1 synchronises after every op and prints it, so a fault or a hang names its op.
bool DebugSync() {
  static const bool on = [] {
    const char* v = std::getenv("SBSERVE_CUDA_DEBUG");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  return on;
}

// Whether a switch that is on by default is turned off: its environment variable is "0".
bool EnvOff(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == "0";
}

// A switch with a default: its environment variable "0" turns it off, "1" on; unset (or anything
// else) leaves the default.
bool EnvSwitch(const char* name, bool def) {
  const char* v = std::getenv(name);
  if (v == nullptr) return def;
  const std::string s(v);
  return s == "0" ? false : s == "1" ? true : def;
}

// Defaults of two switches (tests/bench/engine.md, step 10, H100): the decode combine in the split
// grid measured 0-2.7% slower per decode step than the combine kernel, so it is off; the piecewise
// graphs of steps with prefill chunks measured 1.5-2.4% faster on small prefill steps, so they are on.
constexpr bool kCombineInSplitDefault = false;
constexpr bool kPiecewiseGraphsDefault = true;

// Measurement only: SBSERVE_ABLATE=stage,stage,... leaves those stages of every step out (their
// outputs keep stale values, so the tokens are wrong), to time what each stage costs inside a
// replayed step (tests/bench/engine.md). Stages: embed, norm, c_attn, kv_append, attn, proj, c_fc,
// fc_proj, head.
enum AblateStage : uint32_t {
  kAblateEmbed = 1u << 0, kAblateNorm = 1u << 1, kAblateCAttn = 1u << 2, kAblateKvAppend = 1u << 3,
  kAblateAttn = 1u << 4, kAblateProj = 1u << 5, kAblateCFc = 1u << 6, kAblateFcProj = 1u << 7,
  kAblateHead = 1u << 8,
};
uint32_t Ablated() {
  static const uint32_t mask = [] {
    const char* v = std::getenv("SBSERVE_ABLATE");
    if (v == nullptr || *v == '\0') return 0u;
    static constexpr std::pair<const char*, uint32_t> kStages[] = {
        {"embed", kAblateEmbed}, {"norm", kAblateNorm}, {"c_attn", kAblateCAttn}, {"kv_append", kAblateKvAppend},
        {"attn", kAblateAttn},   {"proj", kAblateProj}, {"c_fc", kAblateCFc},     {"fc_proj", kAblateFcProj},
        {"head", kAblateHead}};
    uint32_t m = 0;
    for (absl::string_view name : absl::StrSplit(v, ',')) {
      for (const auto& [stage, bit] : kStages)
        if (name == stage) m |= bit;
    }
    std::fprintf(stderr, "SBSERVE_ABLATE=%s: stages left out of every step (mask 0x%x); outputs are wrong\n", v, m);
    return m;
  }();
  return mask;
}
// Runs a stage's launches unless SBSERVE_ABLATE leaves the stage out.
template <typename F>
absl::Status Stage(uint32_t stage, F&& launch) {
  return (Ablated() & stage) != 0 ? absl::OkStatus() : launch();
}

absl::Status Trace(cudaStream_t stream, const char* op, absl::Status st) {
  if (!st.ok() || !DebugSync()) return st;
  std::fprintf(stderr, "[cuda] %s ...", op);
  SB_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  std::fprintf(stderr, " ok\n");
  return absl::OkStatus();
}

// What `enqueue` puts on `stream`, captured into an instantiated graph (nothing runs).
template <typename F>
absl::StatusOr<cudaGraphExec_t> CaptureGraph(cudaStream_t stream, F&& enqueue) {
  cudaGraph_t graph = nullptr;
  SB_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  absl::Status st = enqueue();
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  if (!st.ok()) {
    if (graph) cudaGraphDestroy(graph);
    return st;
  }
  SB_CUDA_RETURN_IF_ERROR(end);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  SB_CUDA_RETURN_IF_ERROR(inst);
  return exec;
}

struct LayerWeights {
  DeviceBuffer attn_w, proj_w, fc_w, fc_proj_w;                             // bf16
  DeviceBuffer ln1_w, ln1_b, ln2_w, ln2_b, attn_b, proj_b, fc_b, fc_proj_b, head_bias;  // fp32
  bool has_ln_b = false, has_attn_b = false, has_bias = false, has_head_bias = false;
};

int ActivationCode(const std::string& a) {
  if (a == "swiglu" || a == "silu") return 0;
  if (a == "geglu" || a == "gelu") return 1;
  if (a == "gelu_pytorch_tanh") return 2;
  return 3;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const ModelConfig& c) : config_(c) {}
  // Every entry point first selects the backend's device: the engine thread that calls Forward is
  // not the thread that loaded the weights, and the CUDA runtime's current device is per thread.
  ~CudaBackend() override {
    cudaSetDevice(device_);
    ClearGraphs();
    tuner_.reset();
    if (blas_) cublasDestroy(blas_);
    if (stream_) cudaStreamSynchronize(stream_);  // a launched step may still read pinned_
    if (meta_copied_) cudaEventDestroy(meta_copied_);
    if (stream_) cudaStreamDestroy(stream_);
    if (pinned_) cudaFreeHost(pinned_);
  }

  absl::Status Init(const Checkpoint& ckpt, const CudaBackendOptions& options);

  std::string name() const override { return "cuda"; }
  const ModelConfig& config() const override { return config_; }
  int64_t KvBytesPerToken() const override { return config_.kv_values_per_token() * 2; }
  KvCacheShape kv_cache_shape() const override { return shape_; }

  absl::Status InitKvCache(const KvCacheShape& shape) override {
    SB_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    if (shape.num_blocks <= 0 || shape.block_size <= 0 || (shape.block_size & (shape.block_size - 1)) != 0) {
      return absl::InvalidArgumentError("KV cache needs a positive block count and a power-of-two block size");
    }
    const size_t per_layer = static_cast<size_t>(shape.num_blocks) * shape.block_size * config_.n_kv_head *
                             config_.head_dim * 2;
    ClearGraphs();
    kv_ = std::make_unique<DeviceBuffer>();
    SB_RETURN_IF_ERROR(kv_->Reserve(per_layer * 2 * config_.n_layer));
    shape_ = shape;
    kv_layer_bytes_ = per_layer;
    graph_mb_ = static_cast<int>((config_.n_positions + shape.block_size - 1) / shape.block_size);
    return absl::OkStatus();
  }

  absl::Status Forward(const Batch& batch, std::span<float> logits) override;
  bool samples_on_device() const override { return device_sampling_; }
  bool batch_invariant() const override { return deterministic_; }
  absl::Status ForwardSample(const Batch& batch, const SamplingBatch& sampling, SampledRows* out) override;
  // Overlapped steps: two samplers alternate, so that a step's draws (on the device, for the next
  // step's fed tokens, and in pinned memory, for its collection) stay put while the next step runs.
  bool overlaps_steps() const override { return device_sampling_; }
  absl::Status LaunchStep(const Batch& batch, const SamplingBatch& sampling, std::span<const TokenFeed> feed) override;
  absl::Status CollectStep(SampledRows* out) override;

  absl::Status PrepareSteps(int64_t max_rows) override {
    if (!tuner_) return absl::OkStatus();
    SB_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    const auto start = std::chrono::steady_clock::now();
    SB_RETURN_IF_ERROR(CheckSticky(tuner_->PrepareUpTo(max_rows)));
    // The start-up time the measured plans cost (SBSERVE_GEMM_TUNING), once per backend.
    std::fprintf(stderr, "GEMM tuning: plans for every GEMM at row buckets up to %lld rows in %.1f s\n",
                 static_cast<long long>(std::min<int64_t>(max_rows, tuning_max_rows_)),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return absl::OkStatus();
  }

  StepPaths step_paths() const override { return step_paths_; }

  absl::StatusOr<MemoryInfo> Memory() const override {
    SB_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    size_t free = 0, total = 0;
    SB_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free, &total));
    MemoryInfo m;
    m.total_bytes = static_cast<int64_t>(total);
    m.free_bytes = static_cast<int64_t>(free);
    m.weights_bytes = weights_bytes_;
    m.kv_bytes = kv_ ? static_cast<int64_t>(kv_->bytes()) : 0;
    return m;
  }
  // Runs a step and copies the logits to `logits` (host), waiting for it; or, with `sampling`,
  // enqueues the step and its draws on the next sampler and returns (CollectStep waits).
  absl::Status ForwardOnDevice(const Batch& batch, std::span<float> logits, const SamplingBatch* sampling,
                               std::span<const TokenFeed> feed);
  // Reports a failure, marked fatal when the device is in a sticky error state.
  absl::Status CheckSticky(absl::Status st);

 private:
  absl::Status Upload(const Checkpoint& ckpt, const std::string& name, bool to_bf16, DeviceBuffer& dst);
  // y[n, out] = alpha · x[n, in] · W[out, in]ᵀ; x, W bf16; y bf16 or fp32.
  // y = alpha · x · Wᵀ + beta · y (beta = 1 with alpha = m_residual adds a projection straight into
  // the fp32 residual stream: the GEMM's epilogue does the residual add).
  absl::Status Gemm(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y, bool y_f32,
                    float alpha = 1.f, float beta = 0.f);
  // Whether a GEMM of n rows runs on the small-batch kernels (small_gemm.h) rather than cuBLAS.
  bool SmallGemmFor(int64_t n, int64_t in, const void* x, const void* w) const {
    return !deterministic_ && cuda::SmallGemmFits(n, in, x, w, small_gemm_rows_);
  }
  // Whether a GEMM of n rows that the small kernels do not take runs on the tensor-core skinny
  // kernels (skinny_gemm.h) rather than cuBLAS.
  bool SkinnyGemmFor(int64_t n, int64_t in, const void* x, const void* w) const {
    return !deterministic_ && n <= skinny_gemm_rows_ && cuda::SkinnyGemmFits(n, in, x, w);
  }
  // What the device work of one step depends on besides the metadata buffer.
  struct StepShape {
    int B = 0, N = 0, R = 0;
    int nd = 0;            // leading decode sequences (chunk of 1)
    int mb = 0;            // block-table row length in meta_
    int max_ctx_decode = 1;
    int max_q_prefill = 1;
    int prefill_row0 = 0;  // first query row of the prefill part
  };
  absl::Status Attention(const StepShape& sh, int layer, const LayerWeights& w);
  // Enqueues the whole model for one step (metadata already in meta_), logits into logits_:
  // Segment 0, then per layer l its Attention and Segment l + 1, then Head.
  absl::Status Compute(const StepShape& sh);
  // The work between two attention calls, on sh.N rows: s = 0 the embedding and layer 0 up to its
  // attention; 0 < s < n_layer layer s - 1 after its attention and layer s up to its attention;
  // s = n_layer layer n_layer - 1 after its attention. Row-local: every kernel computes a row of
  // its output from the same row of its inputs (the GEMMs from all of W).
  absl::Status Segment(const StepShape& sh, int s);
  // The final norm and the LM head on the sh.R logit rows.
  absl::Status Head(const StepShape& sh);
  // A step that is not decode-only, of at most kPiecewiseMaxTokens tokens: the segments replay
  // graphs captured for `padded` (sh with N rounded up, PiecewiseTokens), the attention and the
  // head run eagerly on sh's exact shapes.
  absl::Status RunPiecewise(const StepShape& sh, const StepShape& padded);
  // Grows the step buffers for N tokens and R logit rows; true in *moved when any pointer changed.
  absl::Status ReserveStep(int64_t N, int64_t R, bool* moved);
  absl::Status RunDecodeGraph(const StepShape& sh);

  ModelConfig config_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  int num_sms_ = 0;
  int decode_keys_per_split_ = 0;
  int64_t weights_bytes_ = 0;  // uploaded weight tensors
  // c_attn rows regrouped as [q | k | v] (RegroupQkvRows): q, k and v are read in place from the
  // GEMM output. Off with a qkv bias, which the split kernel adds.
  bool fused_qkv_ = false;
  absl::Status RegroupQkvRows(DeviceBuffer& attn_w);  // CudaBackendOptions::decode_keys_per_split
  int device_ = 0;                 // CudaBackendOptions::device
  DeviceBuffer wte_, lm_head_, lnf_w_, lnf_b_;
  std::vector<std::unique_ptr<LayerWeights>> layers_;
  KvCacheShape shape_;
  std::unique_ptr<DeviceBuffer> kv_;
  size_t kv_layer_bytes_ = 0;

  // Per-step scratch.
  DeviceBuffer h_, x_, qkv_, q_, k_, v_, o_, y_, fc_, act_, meta_, logits_, workspace_;
  size_t workspace_bytes_ = 0;
  int32_t* pinned_ = nullptr;
  size_t pinned_ints_ = 0;
  // Decode-only steps replay a captured graph per batch size: one launch instead of ~13 per layer.
  bool use_graphs_ = true;
  // Logit rows are sampled on the device (SBSERVE_DEVICE_SAMPLING=0: copied to the host instead).
  bool device_sampling_ = true;
  bool deterministic_ = false;  // CudaBackendOptions::deterministic
  // GEMMs of at most this many rows run on the small-batch kernels (small_gemm.h) instead of cuBLAS,
  // outside deterministic mode; SBSERVE_SMALL_GEMM_ROWS overrides it (0: always cuBLAS).
  int small_gemm_rows_ = cuda::kSmallGemmDefaultRows;
  // Up to this many rows the rest run on the skinny kernels (skinny_gemm.h), outside deterministic
  // mode, with SBSERVE_SKINNY_GEMM_ROWS; off by default: they measured slower than cuBLAS at every
  // shape of the 3B model (tests/bench/engine.md, step 8).
  int skinny_gemm_rows_ = 0;
  // Measured GEMM plans for up to GemmTunerOptions::max_rows rows (gemm_tuner.h), with
  // SBSERVE_GEMM_TUNING=1 (or =verbose) outside deterministic mode; null otherwise: every GEMM runs
  // on cuBLAS's default or the small kernels.
  std::unique_ptr<cuda::GemmTuner> tuner_;
  int tuning_max_rows_ = 0;  // GemmTunerOptions::max_rows of tuner_
  cuda::DeviceSampler samplers_[2];
  int64_t launches_ = 0;            // steps enqueued with draws; launch i uses samplers_[i % 2]
  int outstanding_ = 0;             // of those, not collected (the latest ones)
  cudaEvent_t meta_copied_ = nullptr;  // after the latest metadata copy out of pinned_
  int graph_mb_ = 0;  // block-table row length of the full context: the largest graph bucket
  bool graph_buckets_ = true;  // SBSERVE_GRAPH_CONTEXT_BUCKETS=0: one graph per batch size, at graph_mb_
  bool fused_kv_append_ = true;  // SBSERVE_FUSED_KV_APPEND=0: decode-only steps append in their own launch
  // SBSERVE_DECODE_COMBINE_IN_SPLIT=1 (default kCombineInSplitDefault): the split grid's last CTA per
  // (sequence, head group) combines, counted in done_counters_ ([B * H], zero between calls); 0: a
  // combine kernel after each decode split grid.
  bool combine_in_split_ = kCombineInSplitDefault;
  DeviceBuffer done_counters_;
  // Decode graphs by (batch size, block-table row length): each is captured with its rows padded to
  // a power-of-two bucket of the context (GraphBlocks), and the decode split sized for that bucket.
  std::map<std::pair<int, int>, cudaGraphExec_t> graphs_;
  DeviceBuffer blas_workspace_;
  // The block-table row length of the graph bucket that holds contexts of used_mb blocks.
  int GraphBlocks(int used_mb) const {
    return graph_buckets_ ? cuda::GraphContextBlocks(used_mb, shape_.block_size, graph_mb_) : graph_mb_;
  }
  // Piecewise graphs of steps with prefill chunks (RunPiecewise): the n_layer + 1 segments per padded
  // token count, captured on first use. SBSERVE_PIECEWISE_GRAPHS=0: such steps run kernel by kernel.
  bool piecewise_graphs_ = kPiecewiseGraphsDefault;
  std::map<int, std::vector<cudaGraphExec_t>> piecewise_;
  StepPaths step_paths_;
  void ClearGraphs() {
    for (auto& [b, g] : graphs_) cudaGraphExecDestroy(g);
    graphs_.clear();
    for (auto& [n, gs] : piecewise_)
      for (cudaGraphExec_t g : gs) cudaGraphExecDestroy(g);
    piecewise_.clear();
  }
  // Offsets (in int32) of the step's metadata in meta_.
  struct Meta {
    size_t ids, cu, ctx, tables, rows, cu_prefill, feed;
  } meta_off_{};
};

absl::Status CudaBackend::Upload(const Checkpoint& ckpt, const std::string& name, bool to_bf16, DeviceBuffer& dst) {
  const TensorInfo& t = ckpt.Get(name);
  const int64_t n = t.numel();
  weights_bytes_ += n * (to_bf16 ? 2 : 4);
  if (to_bf16 && t.dtype == DType::kBF16) {
    SB_RETURN_IF_ERROR(dst.Reserve(static_cast<size_t>(n) * 2));
    SB_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst.get(), t.data, static_cast<size_t>(n) * 2, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  std::vector<float> f(static_cast<size_t>(n));
  ToFloat(t.dtype, t.data, n, f.data());
  if (!to_bf16) {
    SB_RETURN_IF_ERROR(dst.Reserve(static_cast<size_t>(n) * 4));
    SB_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst.get(), f.data(), static_cast<size_t>(n) * 4, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  std::vector<uint16_t> b(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) b[i] = FloatToBf16(f[i]);
  SB_RETURN_IF_ERROR(dst.Reserve(static_cast<size_t>(n) * 2));
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst.get(), b.data(), static_cast<size_t>(n) * 2, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

// The checkpoint's c_attn rows are grouped per KV head: [q of its G query heads, k, v] for each
// of the Hkv heads. Reordered to [q of all H heads, k of all Hkv heads, v of all Hkv heads], the
// GEMM's output row of a token holds q, k and v as three contiguous spans, which the attention and
// KV-append kernels read in place (row stride qkv_dim): no split kernel, no copies.
absl::Status CudaBackend::RegroupQkvRows(DeviceBuffer& attn_w) {
  const ModelConfig& c = config_;
  const int64_t d = c.head_dim, Hkv = c.n_kv_head, G = c.n_head / c.n_kv_head, row = c.n_embd * 2;
  DeviceBuffer grouped;
  SB_RETURN_IF_ERROR(grouped.Reserve(static_cast<size_t>(c.qkv_dim() * row)));
  char* src = attn_w.get<char>();
  char* dst = grouped.get<char>();
  for (int64_t g = 0; g < Hkv; ++g) {
    const int64_t base = g * (G + 2) * d;  // source row of group g
    SB_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst + g * G * d * row, src + base * row, G * d * row, cudaMemcpyDeviceToDevice));
    SB_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst + (c.n_head + g) * d * row, src + (base + G * d) * row, d * row,
                                       cudaMemcpyDeviceToDevice));
    SB_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst + (c.n_head + Hkv + g) * d * row, src + (base + (G + 1) * d) * row, d * row,
                                       cudaMemcpyDeviceToDevice));
  }
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpy(src, dst, static_cast<size_t>(c.qkv_dim() * row), cudaMemcpyDeviceToDevice));
  return absl::OkStatus();
}

absl::Status CudaBackend::Init(const Checkpoint& ckpt, const CudaBackendOptions& options) {
  const ModelConfig& c = config_;
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::UnimplementedError(absl::StrCat("CUDA backend: head_dim ", c.head_dim,
                                                 " is not supported (supported: 64, 128); use the CPU backend"));
  }
  // Keys per decode split: the option, else SBSERVE_DECODE_KEYS_PER_SPLIT (A/B runs of the split
  // rule), else 0 (the rule).
  decode_keys_per_split_ = options.decode_keys_per_split;
  const char* kps_from = "CUDA backend: decode_keys_per_split";
  if (const char* g = std::getenv("SBSERVE_DECODE_KEYS_PER_SPLIT");
      g != nullptr && *g != '\0' && decode_keys_per_split_ == 0) {
    decode_keys_per_split_ = std::atoi(g);
    kps_from = "SBSERVE_DECODE_KEYS_PER_SPLIT";
  }
  if (decode_keys_per_split_ < 0 || decode_keys_per_split_ % 64 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kps_from, " must be 0 or a positive multiple of 64, got ", decode_keys_per_split_));
  }
  deterministic_ = options.deterministic;
  device_ = options.device;
  SB_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  SB_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  SB_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, options.device));
  SB_CUBLAS_RETURN_IF_ERROR(cublasCreate(&blas_));
  SB_CUBLAS_RETURN_IF_ERROR(cublasSetStream(blas_, stream_));
  // A fixed cuBLAS workspace: graph capture must not allocate.
  SB_RETURN_IF_ERROR(blas_workspace_.Reserve(size_t{32} << 20));
  SB_CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(blas_, blas_workspace_.get(), size_t{32} << 20));
  if (EnvOff("SBSERVE_CUDA_GRAPHS")) use_graphs_ = false;
  if (EnvOff("SBSERVE_GRAPH_CONTEXT_BUCKETS")) graph_buckets_ = false;
  if (EnvOff("SBSERVE_FUSED_KV_APPEND")) fused_kv_append_ = false;
  combine_in_split_ = EnvSwitch("SBSERVE_DECODE_COMBINE_IN_SPLIT", kCombineInSplitDefault);
  piecewise_graphs_ = EnvSwitch("SBSERVE_PIECEWISE_GRAPHS", kPiecewiseGraphsDefault);
  if (EnvOff("SBSERVE_DEVICE_SAMPLING")) device_sampling_ = false;
  if (const char* g = std::getenv("SBSERVE_SMALL_GEMM_ROWS"); g != nullptr && *g != '\0') {
    small_gemm_rows_ = std::atoi(g);
  }
  if (const char* g = std::getenv("SBSERVE_SKINNY_GEMM_ROWS"); g != nullptr && *g != '\0') {
    skinny_gemm_rows_ = std::atoi(g);
  }
  if (const char* g = std::getenv("SBSERVE_SMALL_GEMM_VARIANT"); g != nullptr && *g != '\0') {
    cuda::SetSmallGemmVariant(std::atoi(g));  // tuning runs (small_gemm.h)
  }
  cuda::GemmTunerOptions tuning;
  bool tune_gemms = false;
  if (const char* g = std::getenv("SBSERVE_GEMM_TUNING"); g != nullptr && *g != '\0') {
    tune_gemms = std::string(g) != "0" && !deterministic_;
    tuning.verbose = std::string(g) == "verbose";
    tuning.skinny_kernels = skinny_gemm_rows_ > 0;  // SBSERVE_SKINNY_GEMM_ROWS: also timed as candidates
  }
  fused_qkv_ = !c.add_qkv_bias;
  SB_RETURN_IF_ERROR(Upload(ckpt, "transformer.wte.weight", true, wte_));
  if (!c.tie_word_embeddings) SB_RETURN_IF_ERROR(Upload(ckpt, "lm_head.weight", true, lm_head_));
  SB_RETURN_IF_ERROR(Upload(ckpt, "transformer.ln_f.weight", false, lnf_w_));
  if (c.norm == NormKind::kLayerNorm) SB_RETURN_IF_ERROR(Upload(ckpt, "transformer.ln_f.bias", false, lnf_b_));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    auto w = std::make_unique<LayerWeights>();
    const std::string p = absl::StrCat("transformer.h.", l, ".");
    SB_RETURN_IF_ERROR(Upload(ckpt, p + "attn.c_attn.weight", true, w->attn_w));
    if (fused_qkv_) SB_RETURN_IF_ERROR(RegroupQkvRows(w->attn_w));
    SB_RETURN_IF_ERROR(Upload(ckpt, p + "attn.c_proj.weight", true, w->proj_w));
    SB_RETURN_IF_ERROR(Upload(ckpt, p + "mlp.c_fc.weight", true, w->fc_w));
    SB_RETURN_IF_ERROR(Upload(ckpt, p + "mlp.c_proj.weight", true, w->fc_proj_w));
    SB_RETURN_IF_ERROR(Upload(ckpt, p + "ln_1.weight", false, w->ln1_w));
    SB_RETURN_IF_ERROR(Upload(ckpt, p + "ln_2.weight", false, w->ln2_w));
    if (c.norm == NormKind::kLayerNorm) {
      w->has_ln_b = true;
      SB_RETURN_IF_ERROR(Upload(ckpt, p + "ln_1.bias", false, w->ln1_b));
      SB_RETURN_IF_ERROR(Upload(ckpt, p + "ln_2.bias", false, w->ln2_b));
    }
    if (c.add_qkv_bias) {
      w->has_attn_b = true;
      SB_RETURN_IF_ERROR(Upload(ckpt, p + "attn.c_attn.bias", false, w->attn_b));
    }
    if (c.add_bias) {
      w->has_bias = true;
      SB_RETURN_IF_ERROR(Upload(ckpt, p + "attn.c_proj.bias", false, w->proj_b));
      SB_RETURN_IF_ERROR(Upload(ckpt, p + "mlp.c_fc.bias", false, w->fc_b));
      SB_RETURN_IF_ERROR(Upload(ckpt, p + "mlp.c_proj.bias", false, w->fc_proj_b));
    }
    if (c.remainder == Remainder::kR2) {
      w->has_head_bias = true;
      SB_RETURN_IF_ERROR(Upload(ckpt, p + "attn.head_bias", false, w->head_bias));
    }
    layers_.push_back(std::move(w));
  }
  if (tune_gemms) {
    tuner_ = std::make_unique<cuda::GemmTuner>();
    SB_RETURN_IF_ERROR(tuner_->Init(stream_, blas_workspace_.get(), blas_workspace_.bytes(), tuning));
    tuning_max_rows_ = tuning.max_rows;
    const int64_t D = c.n_embd, I = c.n_inner;
    // As Compute calls them: the output projections accumulate into the fp32 residual stream
    // unless a bias needs its own add.
    auto add = [&](DeviceBuffer LayerWeights::*member, int64_t in, int64_t out, bool y_f32, bool accumulate) {
      std::vector<const void*> ws;
      for (const auto& l : layers_) ws.push_back(((*l).*member).get());
      tuner_->AddWeights(ws, in, out, y_f32, accumulate);
    };
    add(&LayerWeights::attn_w, D, c.qkv_dim(), false, false);
    add(&LayerWeights::proj_w, D, D, true, !c.add_bias);
    add(&LayerWeights::fc_w, D, c.glu ? 2 * I : I, false, false);
    add(&LayerWeights::fc_proj_w, I, D, true, !c.add_bias);
    const void* head = c.tie_word_embeddings ? wte_.get() : lm_head_.get();
    tuner_->AddWeights(std::span<const void* const>(&head, 1), D, c.vocab_size, true, false);
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Gemm(const void* x, int64_t n, int64_t in, const void* w, int64_t out, void* y,
                               bool y_f32, float alpha, float beta) {
  if (n == 0) return absl::OkStatus();
  if (tuner_) {
    bool ran = false;
    SB_RETURN_IF_ERROR(tuner_->Run(x, n, in, w, out, y, y_f32, alpha, beta, &ran));
    if (ran) return absl::OkStatus();
  }
  if (SmallGemmFor(n, in, x, w)) {
    return cuda::SmallGemm(x, n, in, w, out, y, y_f32, alpha, beta, stream_);
  }
  if (SkinnyGemmFor(n, in, x, w)) {
    return cuda::SkinnyGemm(x, n, in, w, out, y, y_f32, alpha, beta, stream_);
  }
  if (!deterministic_) return cuda::CublasGemm(blas_, x, n, in, w, out, y, y_f32, alpha, beta);
  // Batch-invariant: always the same shape (row blocks padded to kDeterministicGemmRows; the step
  // buffers hold the padding), so cuBLAS runs the same kernel whatever the batch, and an output
  // element's reduction does not depend on which rows share its block.
  const int64_t y_row_bytes = out * (y_f32 ? 4 : 2);
  for (int64_t r0 = 0; r0 < n; r0 += kDeterministicGemmRows) {
    SB_RETURN_IF_ERROR(cuda::CublasGemm(blas_, static_cast<const char*>(x) + r0 * in * 2, kDeterministicGemmRows, in,
                                        w, out, static_cast<char*>(y) + r0 * y_row_bytes, y_f32, alpha, beta));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Attention(const StepShape& sh, int layer, const LayerWeights& w) {
  const ModelConfig& c = config_;
  const int32_t* meta = meta_.get<int32_t>();
  kernels::SbKvCache cache;
  char* kv = kv_->get<char>() + 2 * kv_layer_bytes_ * layer;
  cache.k = kv;
  cache.v = kv + kv_layer_bytes_;
  cache.block_tables = meta + meta_off_.tables;
  cache.num_blocks = shape_.num_blocks;
  cache.block_size = shape_.block_size;
  cache.max_blocks = sh.mb;

  // q, k, v: in place in the c_attn output (fused_qkv_, rows qkv_dim apart) or split copies.
  const int64_t hd = c.n_head * c.head_dim;
  const int64_t q_stride = fused_qkv_ ? c.qkv_dim() : hd;
  const char* q_base = fused_qkv_ ? qkv_.get<char>() : q_.get<char>();
  kernels::SbKvAppendParams ap;
  if (fused_qkv_) {
    ap.k = qkv_.get<char>() + hd * 2;
    ap.v = qkv_.get<char>() + (hd + c.n_kv_head * c.head_dim) * 2;
    ap.kv_row_stride = c.qkv_dim();
  } else {
    ap.k = k_.get();
    ap.v = v_.get();
  }
  ap.cu_seqlens_q = meta + meta_off_.cu;
  ap.context_lens = meta + meta_off_.ctx;
  ap.cache = cache;
  ap.batch = sh.B;
  ap.total_q = sh.N;
  ap.num_kv_heads = static_cast<int>(c.n_kv_head);
  ap.head_dim = static_cast<int>(c.head_dim);
  // A decode-only step's split kernel appends the new K/V itself (one launch fewer per layer;
  // SBSERVE_FUSED_KV_APPEND=0: a separate SbKvAppend), the other steps append first: their prefill
  // attention reads the chunk's own keys from the cache.
  const bool append_in_decode = fused_kv_append_ && !deterministic_ && sh.nd == sh.B;
  if (!append_in_decode) {
    SB_RETURN_IF_ERROR(
        Stage(kAblateKvAppend, [&] { return Trace(stream_, "kv_append", kernels::SbKvAppend(ap, stream_)); }));
  }
  if (Ablated() & kAblateAttn) return absl::OkStatus();

  const auto rem = c.remainder == Remainder::kR0   ? kernels::SbRemainder::kNone
                   : c.remainder == Remainder::kR1 ? kernels::SbRemainder::kOwnValue
                                                   : kernels::SbRemainder::kHeadBias;
  const float* head_bias = w.has_head_bias ? w.head_bias.get<float>() : nullptr;
  // Decode sequences (chunk of 1) that lead the batch go to the split-K decode kernel, the rest to
  // the varlen prefill kernel (the packer puts decode steps first). In deterministic mode every
  // sequence goes to the prefill kernel, decodes as chunks of one: it visits key tiles of 64 at
  // fixed positions (0, 64, ...) and each query row on its own, so a token's attention is the same
  // whether it is decoded, prefilled in any chunk, or recomputed after a preemption.
  const int prefill_seq0 = deterministic_ ? 0 : sh.nd;
  if (sh.nd > 0 && !deterministic_) {
    kernels::SbAttnDecodeParams dp;
    dp.q = q_base;
    dp.q_row_stride = q_stride;
    dp.context_lens = meta + meta_off_.ctx;
    dp.cache = cache;
    dp.head_bias = head_bias;
    dp.o = o_.get();
    dp.batch = sh.nd;
    dp.max_context = sh.max_ctx_decode;
    dp.num_heads = static_cast<int>(c.n_head);
    dp.num_kv_heads = static_cast<int>(c.n_kv_head);
    dp.head_dim = static_cast<int>(c.head_dim);
    dp.scale = static_cast<float>(c.attention_multiplier);
    dp.remainder = rem;
    dp.num_sms = num_sms_;
    dp.keys_per_split = decode_keys_per_split_;
    if (append_in_decode && (Ablated() & kAblateKvAppend) == 0) {
      dp.k_new = ap.k;
      dp.v_new = ap.v;
      dp.kv_row_stride = ap.kv_row_stride;
    }
    if (kernels::SbAttnDecodeWorkspaceBytes(dp) > workspace_bytes_) {
      return absl::InternalError("decode workspace not reserved before the step");
    }
    dp.workspace = workspace_.get();
    if (combine_in_split_) {
      if (done_counters_.bytes() < static_cast<size_t>(dp.batch) * dp.num_heads * sizeof(unsigned)) {
        return absl::InternalError("decode counters not reserved before the step");
      }
      dp.done_counters = done_counters_.get<unsigned>();
    }
    SB_RETURN_IF_ERROR(Trace(stream_, "attn_decode", kernels::SbAttnDecode(dp, stream_)));
  }
  if (prefill_seq0 < sh.B) {
    const int row0 = deterministic_ ? 0 : sh.prefill_row0;
    kernels::SbAttnPrefillParams pp;
    pp.q = q_base + static_cast<int64_t>(row0) * q_stride * 2;
    pp.q_row_stride = q_stride;
    pp.cu_seqlens_q = meta + (deterministic_ ? meta_off_.cu : meta_off_.cu_prefill);
    pp.context_lens = meta + meta_off_.ctx + prefill_seq0;
    pp.cache = cache;
    pp.cache.block_tables = meta + meta_off_.tables + static_cast<size_t>(prefill_seq0) * sh.mb;
    pp.head_bias = head_bias;
    pp.o = static_cast<char*>(o_.get()) + static_cast<int64_t>(row0) * hd * 2;
    pp.batch = sh.B - prefill_seq0;
    pp.total_q = sh.N - row0;
    pp.max_seqlen_q = sh.max_q_prefill;  // decodes, included in deterministic mode, are chunks of 1
    pp.num_heads = static_cast<int>(c.n_head);
    pp.num_kv_heads = static_cast<int>(c.n_kv_head);
    pp.head_dim = static_cast<int>(c.head_dim);
    pp.scale = static_cast<float>(c.attention_multiplier);
    pp.remainder = rem;
    SB_RETURN_IF_ERROR(Trace(stream_, "attn_prefill", kernels::SbAttnPrefill(pp, stream_)));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::ReserveStep(int64_t N, int64_t R, bool* moved) {
  const ModelConfig& c = config_;
  const int64_t D = c.n_embd, H = c.n_head, Hkv = c.n_kv_head, d = c.head_dim, I = c.n_inner;
  const int64_t fc_out = c.glu ? 2 * I : I;
  N = std::max<int64_t>(N, 1);
  R = std::max<int64_t>(R, 1);
  if (deterministic_) {  // GEMMs read and write whole padded row blocks
    N = (N + kDeterministicGemmRows - 1) / kDeterministicGemmRows * kDeterministicGemmRows;
    R = (R + kDeterministicGemmRows - 1) / kDeterministicGemmRows * kDeterministicGemmRows;
  }
  SB_RETURN_IF_ERROR(h_.Reserve(N * D * 4, moved));
  SB_RETURN_IF_ERROR(x_.Reserve(N * D * 2, moved));
  SB_RETURN_IF_ERROR(qkv_.Reserve(N * c.qkv_dim() * 2, moved));
  if (!fused_qkv_) {
    SB_RETURN_IF_ERROR(q_.Reserve(N * H * d * 2, moved));
    SB_RETURN_IF_ERROR(k_.Reserve(N * Hkv * d * 2, moved));
    SB_RETURN_IF_ERROR(v_.Reserve(N * Hkv * d * 2, moved));
  }
  SB_RETURN_IF_ERROR(o_.Reserve(N * H * d * 2, moved));
  SB_RETURN_IF_ERROR(y_.Reserve(N * D * 4, moved));
  SB_RETURN_IF_ERROR(fc_.Reserve(N * fc_out * 2, moved));
  SB_RETURN_IF_ERROR(act_.Reserve(N * I * 2, moved));
  SB_RETURN_IF_ERROR(logits_.Reserve(R * c.vocab_size * 4, moved));
  return absl::OkStatus();
}

// Tensor parallelism (not built yet) fits this step as it is. Over R ranks each rank holds H/R query
// heads and Hkv/R kv heads (its rows of c_attn, regrouped [q | k | v] per rank as RegroupQkvRows
// does now, its KV cache and kernel calls with per-rank head counts), I/R rows of c_fc (gate and up)
// and the matching columns of both output projections. The two residual GEMMs already accumulate
// into h: rank 0 keeps beta = 1 and the others use beta = 0, so that an in-place NCCL all-reduce
// (sum) of h after each of them yields h + sum of the partial projections on every rank. Norms,
// the embedding and the LM head stay replicated; sampling runs on rank 0.
absl::Status CudaBackend::Compute(const StepShape& sh) {
  SB_RETURN_IF_ERROR(Segment(sh, 0));
  for (int l = 0; l < static_cast<int>(config_.n_layer); ++l) {
    SB_RETURN_IF_ERROR(Attention(sh, l, *layers_[l]));
    SB_RETURN_IF_ERROR(Segment(sh, l + 1));
  }
  return Head(sh);
}

absl::Status CudaBackend::Segment(const StepShape& sh, int s) {
  const ModelConfig& c = config_;
  const int64_t N = sh.N, D = c.n_embd, H = c.n_head, Hkv = c.n_kv_head, d = c.head_dim;
  const int64_t I = c.n_inner, fc_out = c.glu ? 2 * I : I;
  const int32_t* meta = meta_.get<int32_t>();
  const float r = static_cast<float>(c.m_residual);
  const float eps = static_cast<float>(c.norm_eps);
  const bool rms = c.norm == NormKind::kRmsNorm;
  const int act = ActivationCode(c.activation);
  if (s == 0) {
    SB_RETURN_IF_ERROR(Stage(kAblateEmbed, [&] {
      return cuda::Embed(meta + meta_off_.ids, wte_.get(), N, D, static_cast<float>(c.m_emb), h_.get<float>(), stream_);
    }));
  } else {
    // Layer s - 1 after its attention.
    const LayerWeights& w = *layers_[s - 1];
    // h += r · (o · W_projᵀ + b): without a bias the GEMM accumulates into h itself.
    if (w.has_bias) {
      SB_RETURN_IF_ERROR(Gemm(o_.get(), N, D, w.proj_w.get(), D, y_.get(), true));
      SB_RETURN_IF_ERROR(cuda::ResidualAdd(h_.get<float>(), y_.get<float>(), w.proj_b.get<float>(), N, D, r, stream_));
    } else {
      SB_RETURN_IF_ERROR(Stage(kAblateProj, [&] {
        return Trace(stream_, "proj+residual", Gemm(o_.get(), N, D, w.proj_w.get(), D, h_.get(), true, r, 1.f));
      }));
    }
    SB_RETURN_IF_ERROR(Stage(kAblateNorm, [&] {
      return cuda::Norm(rms, h_.get<float>(), nullptr, N, D, w.ln2_w.get<float>(),
                        w.has_ln_b ? w.ln2_b.get<float>() : nullptr, eps, x_.get(), stream_);
    }));
    if (Ablated() & kAblateCFc) {
      // measurement only (SBSERVE_ABLATE): c_fc and its activation left out
    } else if (c.glu && !w.has_bias && SmallGemmFor(N, D, x_.get(), w.fc_w.get())) {
      // A few rows: c_fc and the GLU activation in one kernel (no fc_ round trip).
      SB_RETURN_IF_ERROR(Trace(stream_, "c_fc+act",
                               cuda::SmallGemmGlu(act, x_.get(), N, D, w.fc_w.get(), I, act_.get(), stream_)));
    } else if (c.glu && !w.has_bias && !tuner_ && SkinnyGemmFor(N, D, x_.get(), w.fc_w.get())) {
      SB_RETURN_IF_ERROR(Trace(stream_, "c_fc+act",
                               cuda::SkinnyGemmGlu(act, x_.get(), N, D, w.fc_w.get(), I, act_.get(), stream_)));
    } else {
      SB_RETURN_IF_ERROR(Gemm(x_.get(), N, D, w.fc_w.get(), fc_out, fc_.get(), false));
      SB_RETURN_IF_ERROR(Trace(stream_, "mlp_act",
                               cuda::Activation(act, c.glu, fc_.get(), w.has_bias ? w.fc_b.get<float>() : nullptr,
                                                N, I, act_.get(), stream_)));
    }
    if (w.has_bias) {
      SB_RETURN_IF_ERROR(Gemm(act_.get(), N, I, w.fc_proj_w.get(), D, y_.get(), true));
      SB_RETURN_IF_ERROR(cuda::ResidualAdd(h_.get<float>(), y_.get<float>(), w.fc_proj_b.get<float>(), N, D, r, stream_));
    } else {
      SB_RETURN_IF_ERROR(Stage(kAblateFcProj, [&] {
        return Trace(stream_, "fc_proj+residual", Gemm(act_.get(), N, I, w.fc_proj_w.get(), D, h_.get(), true, r, 1.f));
      }));
    }
  }
  if (s == static_cast<int>(c.n_layer)) return absl::OkStatus();
  // Layer s up to its attention.
  const LayerWeights& w = *layers_[s];
  SB_RETURN_IF_ERROR(Stage(kAblateNorm, [&] {
    return Trace(stream_, "norm_1",
                 cuda::Norm(rms, h_.get<float>(), nullptr, N, D, w.ln1_w.get<float>(),
                            w.has_ln_b ? w.ln1_b.get<float>() : nullptr, eps, x_.get(), stream_));
  }));
  SB_RETURN_IF_ERROR(Stage(kAblateCAttn, [&] {
    return Trace(stream_, "c_attn", Gemm(x_.get(), N, D, w.attn_w.get(), c.qkv_dim(), qkv_.get(), false));
  }));
  if (!fused_qkv_) SB_RETURN_IF_ERROR(Trace(stream_, "split_qkv",
                           cuda::SplitQkv(qkv_.get(), w.has_attn_b ? w.attn_b.get<float>() : nullptr, N,
                                          static_cast<int>(Hkv), static_cast<int>(H / Hkv),
                                          static_cast<int>(d), q_.get(), k_.get(), v_.get(), stream_)));
  return absl::OkStatus();
}

absl::Status CudaBackend::Head(const StepShape& sh) {
  const ModelConfig& c = config_;
  const int64_t R = sh.R, D = c.n_embd;
  if (R == 0) return absl::OkStatus();
  SB_RETURN_IF_ERROR(Stage(kAblateNorm, [&] {
    return cuda::Norm(c.norm == NormKind::kRmsNorm, h_.get<float>(), meta_.get<int32_t>() + meta_off_.rows, R, D,
                      lnf_w_.get<float>(), c.norm == NormKind::kLayerNorm ? lnf_b_.get<float>() : nullptr,
                      static_cast<float>(c.norm_eps), x_.get(), stream_);
  }));
  const void* head = c.tie_word_embeddings ? wte_.get() : lm_head_.get();
  return Stage(kAblateHead, [&] {
    return Gemm(x_.get(), R, D, head, c.vocab_size, logits_.get(), true, static_cast<float>(1.0 / c.m_width));
  });
}

absl::Status CudaBackend::RunDecodeGraph(const StepShape& sh) {
  auto it = graphs_.find({sh.B, sh.mb});
  if (it == graphs_.end()) {
    if (tuner_) {  // plans are measured outside the capture
      SB_RETURN_IF_ERROR(tuner_->Prepare(sh.N));
      if (sh.R != sh.N) SB_RETURN_IF_ERROR(tuner_->Prepare(sh.R));
    }
    absl::StatusOr<cudaGraphExec_t> exec = CaptureGraph(stream_, [&] { return Compute(sh); });
    if (!exec.ok()) return exec.status();
    it = graphs_.emplace(std::pair{sh.B, sh.mb}, *exec).first;
  }
  SB_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::RunPiecewise(const StepShape& sh, const StepShape& padded) {
  const int L = static_cast<int>(config_.n_layer);
  auto it = piecewise_.find(padded.N);
  if (it == piecewise_.end()) {
    if (tuner_) SB_RETURN_IF_ERROR(tuner_->Prepare(padded.N));  // plans are measured outside the capture
    std::vector<cudaGraphExec_t> execs;
    for (int s = 0; s <= L; ++s) {
      absl::StatusOr<cudaGraphExec_t> exec = CaptureGraph(stream_, [&] { return Segment(padded, s); });
      if (!exec.ok()) {
        for (cudaGraphExec_t g : execs) cudaGraphExecDestroy(g);
        return exec.status();
      }
      execs.push_back(*exec);
    }
    it = piecewise_.emplace(padded.N, std::move(execs)).first;
  }
  for (int s = 0; s <= L; ++s) {
    SB_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second[s], stream_));
    if (s < L) SB_RETURN_IF_ERROR(Attention(sh, s, *layers_[s]));
  }
  return Head(sh);
}

// Errors that leave the CUDA context unusable for the rest of the process ("sticky" errors).
bool IsStickyCudaError(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorECCUncorrectable:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
      return true;
    default:
      return false;
  }
}

absl::Status CudaBackend::Forward(const Batch& batch, std::span<float> logits) {
  return CheckSticky(ForwardOnDevice(batch, logits, nullptr, {}));
}

absl::Status CudaBackend::ForwardSample(const Batch& batch, const SamplingBatch& sampling, SampledRows* out) {
  if (outstanding_ > 0) return absl::FailedPreconditionError("ForwardSample with launched steps not collected");
  if (absl::Status st = LaunchStep(batch, sampling, {}); !st.ok()) return st;
  return CollectStep(out);
}

absl::Status CudaBackend::LaunchStep(const Batch& batch, const SamplingBatch& sampling, std::span<const TokenFeed> feed) {
  if (!device_sampling_) return absl::FailedPreconditionError("steps overlap only with device sampling");
  if (sampling.rows.size() != batch.logit_rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling rows (", sampling.rows.size(), ") != logit rows (",
                                                   batch.logit_rows.size(), ")"));
  }
  if (outstanding_ >= 2) return absl::FailedPreconditionError("a third step launched before the first was collected");
  if (!feed.empty()) {
    const int prev_rows = launches_ > 0 ? samplers_[(launches_ - 1) % 2].enqueued_rows() : 0;
    for (const TokenFeed& f : feed) {
      if (f.token_index < 0 || f.token_index >= batch.num_tokens() || f.from_row < 0 || f.from_row >= prev_rows) {
        return absl::InvalidArgumentError("fed token out of range of the batch or of the previous step's rows");
      }
    }
  }
  return CheckSticky(ForwardOnDevice(batch, {}, &sampling, feed));
}

absl::Status CudaBackend::CollectStep(SampledRows* out) {
  if (outstanding_ == 0) return absl::FailedPreconditionError("no launched step to collect");
  SB_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const int64_t oldest = launches_ - outstanding_;
  outstanding_--;
  return CheckSticky(Trace(stream_, "sample", samplers_[oldest % 2].Collect(out)));
}

absl::Status CudaBackend::CheckSticky(absl::Status st) {
  if (st.ok()) return st;
  // A sticky error shows in every later call: synchronising reports it whatever failed first.
  const cudaError_t sticky = cudaDeviceSynchronize();
  if (IsStickyCudaError(sticky)) {
    return MarkFatalBackendError(absl::InternalError(
        absl::StrCat(st.message(), " (device in a sticky error state: ", cudaGetErrorString(sticky), ")")));
  }
  return st;
}

absl::Status CudaBackend::ForwardOnDevice(const Batch& batch, std::span<float> logits, const SamplingBatch* sampling,
                                          std::span<const TokenFeed> feed) {
  SB_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const ModelConfig& c = config_;
  if (!kv_) return absl::FailedPreconditionError("KV cache not initialised");
  const int B = batch.num_seqs();
  const int N = batch.num_tokens();
  const int R = static_cast<int>(batch.logit_rows.size());
  const size_t logits_size = sampling ? static_cast<size_t>(R) * c.vocab_size : logits.size();
  if (absl::Status st = ValidateBatch(batch, c.vocab_size, shape_.num_blocks, shape_.block_size, logits_size);
      !st.ok()) {
    return st;
  }
  int used_mb = 0;
  for (int b = 0; b < B; ++b) {
    used_mb = std::max(used_mb, (batch.context_lens[b] + shape_.block_size - 1) / shape_.block_size);
  }

  StepShape sh;
  sh.B = B;
  sh.N = N;
  sh.R = R;
  while (sh.nd < B && batch.cu_seqlens_q[sh.nd + 1] - batch.cu_seqlens_q[sh.nd] == 1) ++sh.nd;
  sh.prefill_row0 = batch.cu_seqlens_q[sh.nd];
  for (int b = 0; b < sh.nd; ++b) sh.max_ctx_decode = std::max(sh.max_ctx_decode, batch.context_lens[b]);
  for (int b = sh.nd; b < B; ++b) {
    sh.max_q_prefill = std::max(sh.max_q_prefill, batch.cu_seqlens_q[b + 1] - batch.cu_seqlens_q[b]);
  }
  // A decode-only step whose logits are every row, in order, replays a graph captured with block
  // tables padded to a bucket of the context (a power of two of at least cuda::kGraphMinContext tokens,
  // capped by the full context) and the decode split sized for that bucket, so a few graphs per
  // batch size serve every context length. A split sized for the full context would leave short
  // contexts in too few splits (tests/bench/engine.md, decode split by context bucket).
  bool graph = use_graphs_ && sh.nd == B && R == B && used_mb <= graph_mb_;
  for (int b = 0; graph && b < R; ++b) graph = batch.logit_rows[b] == b;
  sh.mb = graph ? GraphBlocks(used_mb) : batch.max_blocks_per_seq;
  if (graph) sh.max_ctx_decode = sh.mb * shape_.block_size;
  // Other steps of few tokens replay piecewise graphs on their token count padded (rows N .. Np - 1
  // of the step buffers then hold rows computed from token 0, never read by the attention or the
  // head), outside deterministic mode, whose GEMMs pad rows their own way.
  const int padded_n = graph || !use_graphs_ || !piecewise_graphs_ || deterministic_ || DebugSync()
                           ? 0
                           : cuda::PiecewiseTokens(N, small_gemm_rows_);
  const int rows_n = std::max(N, padded_n);  // token rows of the step buffers and of the ids

  // Step metadata in one pinned staging buffer and one copy.
  meta_off_.ids = 0;
  meta_off_.cu = meta_off_.ids + rows_n;
  meta_off_.ctx = meta_off_.cu + B + 1;
  meta_off_.tables = meta_off_.ctx + B;
  meta_off_.rows = meta_off_.tables + static_cast<size_t>(B) * sh.mb;
  meta_off_.cu_prefill = meta_off_.rows + R;
  meta_off_.feed = meta_off_.cu_prefill + (B - sh.nd) + 1;
  const size_t total_ints = meta_off_.feed + 2 * feed.size();
  // The previous step's metadata copy out of pinned_ may still be queued (overlapped steps).
  if (meta_copied_ != nullptr) SB_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(meta_copied_));
  if (total_ints > pinned_ints_) {
    if (pinned_) cudaFreeHost(pinned_);
    pinned_ = nullptr;
    const size_t cap = std::max<size_t>(total_ints * 2, 4096);
    SB_CUDA_RETURN_IF_ERROR(cudaMallocHost(&pinned_, cap * 4));
    pinned_ints_ = cap;
  }
  std::copy(batch.tokens.begin(), batch.tokens.end(), pinned_ + meta_off_.ids);
  std::fill(pinned_ + meta_off_.ids + N, pinned_ + meta_off_.cu, 0);  // padding rows embed token 0
  for (size_t i = 0; i < feed.size(); ++i) {
    pinned_[meta_off_.feed + 2 * i] = feed[i].token_index;
    pinned_[meta_off_.feed + 2 * i + 1] = feed[i].from_row;
  }
  std::copy(batch.cu_seqlens_q.begin(), batch.cu_seqlens_q.end(), pinned_ + meta_off_.cu);
  std::copy(batch.context_lens.begin(), batch.context_lens.end(), pinned_ + meta_off_.ctx);
  for (int b = 0; b < B; ++b) {
    int32_t* row = pinned_ + meta_off_.tables + static_cast<size_t>(b) * sh.mb;
    const int32_t* src = batch.block_tables.data() + static_cast<size_t>(b) * batch.max_blocks_per_seq;
    const int n = std::min(sh.mb, batch.max_blocks_per_seq);
    std::copy(src, src + n, row);
    std::fill(row + n, row + sh.mb, -1);
  }
  std::copy(batch.logit_rows.begin(), batch.logit_rows.end(), pinned_ + meta_off_.rows);
  for (int b = sh.nd; b <= B; ++b) {
    pinned_[meta_off_.cu_prefill + (b - sh.nd)] = batch.cu_seqlens_q[b] - batch.cu_seqlens_q[sh.nd];
  }
  // Buffers are sized before any capture; a buffer that moves invalidates every captured graph.
  bool moved = false;
  // Metadata grows geometrically so that replays of captured graphs rarely see it move.
  if (total_ints * 4 > meta_.bytes()) SB_RETURN_IF_ERROR(meta_.Reserve(std::max<size_t>(total_ints * 2, 4096) * 4, &moved));
  SB_RETURN_IF_ERROR(ReserveStep(rows_n, R, &moved));
  if (sh.nd > 0 && !deterministic_) {
    kernels::SbAttnDecodeParams probe;
    probe.batch = sh.nd;
    probe.num_heads = static_cast<int>(c.n_head);
    probe.num_kv_heads = static_cast<int>(c.n_kv_head);
    probe.head_dim = static_cast<int>(c.head_dim);
    probe.max_context = sh.max_ctx_decode;
    probe.num_sms = num_sms_;
    probe.keys_per_split = decode_keys_per_split_;
    const size_t ws = kernels::SbAttnDecodeWorkspaceBytes(probe);
    SB_RETURN_IF_ERROR(workspace_.Reserve(ws, &moved));
    workspace_bytes_ = std::max(workspace_bytes_, ws);
    if (combine_in_split_) {
      bool grown = false;
      SB_RETURN_IF_ERROR(done_counters_.Reserve(static_cast<size_t>(sh.nd) * c.n_head * sizeof(unsigned), &grown));
      if (grown) {
        // Zero once: every decode call leaves its counters zero.
        SB_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(done_counters_.get(), 0, done_counters_.bytes(), stream_));
        moved = true;
      }
    }
  }
  if (moved) ClearGraphs();
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(meta_.get(), pinned_, total_ints * 4, cudaMemcpyHostToDevice, stream_));
  if (meta_copied_ == nullptr) SB_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&meta_copied_, cudaEventDisableTiming));
  SB_CUDA_RETURN_IF_ERROR(cudaEventRecord(meta_copied_, stream_));
  if (!feed.empty()) {
    // The pending tokens: the previous launch's draws, still on the device.
    int32_t* ids = meta_.get<int32_t>() + meta_off_.ids;
    SB_RETURN_IF_ERROR(cuda::FeedTokens(ids, meta_.get<int32_t>() + meta_off_.feed, static_cast<int>(feed.size()),
                                        samplers_[(launches_ - 1) % 2].device_tokens(), stream_));
  }
  if (graph && !DebugSync()) {
    SB_RETURN_IF_ERROR(RunDecodeGraph(sh));
    ++step_paths_.decode_graph;
  } else if (padded_n > 0) {
    StepShape padded = sh;
    padded.N = padded_n;
    SB_RETURN_IF_ERROR(RunPiecewise(sh, padded));
    ++step_paths_.piecewise_graph;
  } else {
    SB_RETURN_IF_ERROR(Compute(sh));
    ++step_paths_.eager;
  }
  if (sampling != nullptr) {
    // Enqueued only; only ids and logprobs come back, at CollectStep.
    SB_RETURN_IF_ERROR(Trace(stream_, "sample enqueue",
                             samplers_[launches_ % 2].Enqueue(logits_.get<float>(), c.vocab_size, *sampling, stream_)));
    launches_++;
    outstanding_++;
    return absl::OkStatus();
  }
  if (R > 0) {
    SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits.data(), logits_.get(), static_cast<size_t>(R) * c.vocab_size * 4,
                                            cudaMemcpyDeviceToHost, stream_));
  }
  SB_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return Trace(stream_, "forward", absl::OkStatus());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const Checkpoint& checkpoint,
                                                           const CudaBackendOptions& options) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::UnavailableError("no CUDA device is present");
  }
  if (options.device < 0 || options.device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", options.device, " does not exist (", count, " present)"));
  }
  auto backend = std::make_unique<CudaBackend>(checkpoint.config());
  if (absl::Status st = backend->Init(checkpoint, options); !st.ok()) return st;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace sbserve
