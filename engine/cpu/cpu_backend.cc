// The fp32 CPU reference backend: weights converted to float32 at load, paged fp32 KV cache.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/cpu/cpu_ops.h"
#include "engine/cpu/sb_attention_ref.h"
#include "engine/cpu/thread_pool.h"

namespace sbserve {
namespace {

std::vector<float> LoadF32(const Checkpoint& ckpt, const std::string& name) {
  const TensorInfo& t = ckpt.Get(name);
  std::vector<float> v(static_cast<size_t>(t.numel()));
  ToFloat(t.dtype, t.data, t.numel(), v.data());
  return v;
}

inline const float* OrNull(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

struct LayerWeights {
  std::vector<float> ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, head_bias;
  std::vector<float> ln2_w, ln2_b, fc_w, fc_b, fc_proj_w, fc_proj_b;
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(const Checkpoint& ckpt, const CpuBackendOptions& options)
      : config_(ckpt.config()), pool_(options.num_threads) {
    const ModelConfig& c = config_;
    wte_ = LoadF32(ckpt, "transformer.wte.weight");
    if (!c.tie_word_embeddings) lm_head_ = LoadF32(ckpt, "lm_head.weight");
    lnf_w_ = LoadF32(ckpt, "transformer.ln_f.weight");
    // Optional tensors are read when the config (or, for head_bias, the resolved remainder) asks
    // for them, exactly the set Checkpoint validated; a stray tensor is never picked up.
    const bool norm_bias = c.norm == NormKind::kLayerNorm;
    const bool r2 = c.remainder == Remainder::kR2;
    if (norm_bias) lnf_b_ = LoadF32(ckpt, "transformer.ln_f.bias");
    layers_.resize(static_cast<size_t>(c.n_layer));
    for (int64_t l = 0; l < c.n_layer; ++l) {
      const std::string p = absl::StrCat("transformer.h.", l, ".");
      LayerWeights& w = layers_[l];
      w.ln1_w = LoadF32(ckpt, p + "ln_1.weight");
      w.attn_w = LoadF32(ckpt, p + "attn.c_attn.weight");
      w.proj_w = LoadF32(ckpt, p + "attn.c_proj.weight");
      w.ln2_w = LoadF32(ckpt, p + "ln_2.weight");
      w.fc_w = LoadF32(ckpt, p + "mlp.c_fc.weight");
      w.fc_proj_w = LoadF32(ckpt, p + "mlp.c_proj.weight");
      if (norm_bias) {
        w.ln1_b = LoadF32(ckpt, p + "ln_1.bias");
        w.ln2_b = LoadF32(ckpt, p + "ln_2.bias");
      }
      if (c.add_qkv_bias) w.attn_b = LoadF32(ckpt, p + "attn.c_attn.bias");
      if (c.add_bias) {
        w.proj_b = LoadF32(ckpt, p + "attn.c_proj.bias");
        w.fc_b = LoadF32(ckpt, p + "mlp.c_fc.bias");
        w.fc_proj_b = LoadF32(ckpt, p + "mlp.c_proj.bias");
      }
      if (r2) w.head_bias = LoadF32(ckpt, p + "attn.head_bias");
    }
  }

  std::string name() const override { return "cpu"; }
  // Every row is computed on its own in a fixed order (Server.SixtyFourConcurrentStreamsMatchRunningAlone).
  bool batch_invariant() const override { return true; }
  const ModelConfig& config() const override { return config_; }
  int64_t KvBytesPerToken() const override { return config_.kv_values_per_token() * 4; }

  absl::Status InitKvCache(const KvCacheShape& shape) override {
    if (shape.num_blocks <= 0 || shape.block_size <= 0) {
      return absl::InvalidArgumentError("KV cache needs a positive number of blocks and block size");
    }
    const int64_t per_layer =
        static_cast<int64_t>(shape.num_blocks) * shape.block_size * config_.n_kv_head * config_.head_dim;
    k_cache_.assign(static_cast<size_t>(config_.n_layer), std::vector<float>());
    v_cache_.assign(static_cast<size_t>(config_.n_layer), std::vector<float>());
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      k_cache_[l].assign(static_cast<size_t>(per_layer), 0.f);
      v_cache_[l].assign(static_cast<size_t>(per_layer), 0.f);
    }
    shape_ = shape;
    return absl::OkStatus();
  }
  KvCacheShape kv_cache_shape() const override { return shape_; }

  absl::Status Forward(const Batch& batch, std::span<float> logits) override;

  // Host RAM from /proc/meminfo (MemTotal, MemAvailable), and the fp32 weights and cache held.
  absl::StatusOr<MemoryInfo> Memory() const override {
    MemoryInfo m;
    std::ifstream in("/proc/meminfo");
    std::string key;
    int64_t kb = 0;
    std::string unit;
    while (in >> key >> kb) {
      std::getline(in, unit);
      if (key == "MemTotal:") m.total_bytes = kb << 10;
      if (key == "MemAvailable:") m.free_bytes = kb << 10;
    }
    if (m.total_bytes <= 0 || m.free_bytes <= 0) return absl::UnavailableError("no MemTotal/MemAvailable in /proc/meminfo");
    auto bytes = [](const std::vector<float>& v) { return static_cast<int64_t>(v.size() * sizeof(float)); };
    m.weights_bytes = bytes(wte_) + bytes(lm_head_) + bytes(lnf_w_) + bytes(lnf_b_);
    for (const LayerWeights& w : layers_) {
      for (const std::vector<float>* v : {&w.ln1_w, &w.ln1_b, &w.attn_w, &w.attn_b, &w.proj_w, &w.proj_b, &w.head_bias,
                                          &w.ln2_w, &w.ln2_b, &w.fc_w, &w.fc_b, &w.fc_proj_w, &w.fc_proj_b}) {
        m.weights_bytes += bytes(*v);
      }
    }
    for (const auto& v : k_cache_) m.kv_bytes += bytes(v);
    for (const auto& v : v_cache_) m.kv_bytes += bytes(v);
    return m;
  }

 private:

  ModelConfig config_;
  ThreadPool pool_;
  std::vector<float> wte_, lm_head_, lnf_w_, lnf_b_;
  std::vector<LayerWeights> layers_;
  KvCacheShape shape_;
  std::vector<std::vector<float>> k_cache_, v_cache_;  // [layer][nb, bs, Hkv, d]
};

absl::Status CpuBackend::Forward(const Batch& batch, std::span<float> logits) {
  if (k_cache_.empty()) return absl::FailedPreconditionError("KV cache not initialised");
  if (absl::Status st = ValidateBatch(batch, config_.vocab_size, shape_.num_blocks, shape_.block_size, logits.size());
      !st.ok()) {
    return st;
  }
  const ModelConfig& c = config_;
  const int64_t N = batch.num_tokens(), D = c.n_embd, H = c.n_head, Hkv = c.n_kv_head, d = c.head_dim;
  const int64_t G = H / Hkv, I = c.n_inner, qkv_dim = c.qkv_dim();
  const float r = static_cast<float>(c.m_residual);
  const int bs = shape_.block_size;

  std::vector<float> h(N * D), x(N * D), qkv(N * qkv_dim), q(N * H * d), o(N * H * d), tmp(N * D);
  std::vector<float> fc(N * (c.glu ? 2 * I : I)), act(N * I);
  for (int64_t t = 0; t < N; ++t) {
    const float* e = wte_.data() + static_cast<int64_t>(batch.tokens[t]) * D;
    for (int64_t i = 0; i < D; ++i) h[t * D + i] = e[i] * static_cast<float>(c.m_emb);
  }
  // Row t's sequence, for K/V placement.
  std::vector<int32_t> seq_of(N);
  for (int b = 0; b < batch.num_seqs(); ++b) {
    for (int32_t t = batch.cu_seqlens_q[b]; t < batch.cu_seqlens_q[b + 1]; ++t) seq_of[t] = b;
  }

  SbAttnRefParams ap;
  ap.q = q.data();
  ap.cu_seqlens_q = batch.cu_seqlens_q.data();
  ap.context_lens = batch.context_lens.data();
  ap.block_tables = batch.block_tables.data();
  ap.o = o.data();
  ap.rem = nullptr;
  ap.batch = batch.num_seqs();
  ap.num_heads = static_cast<int>(H);
  ap.num_kv_heads = static_cast<int>(Hkv);
  ap.head_dim = static_cast<int>(d);
  ap.block_size = bs;
  ap.max_blocks = batch.max_blocks_per_seq;
  ap.scale = static_cast<float>(c.attention_multiplier);
  ap.remainder = c.remainder;

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = layers_[l];
    CpuNorm(&pool_, c.norm, h.data(), N, D, w.ln1_w.data(), OrNull(w.ln1_b), c.norm_eps, x.data());
    CpuGemm(&pool_, x.data(), N, D, w.attn_w.data(), qkv_dim, OrNull(w.attn_b), qkv.data());
    // c_attn output per token is [Hkv, (G + 2) d]: G query heads, then k, then v of that kv head.
    float* kc = k_cache_[l].data();
    float* vc = v_cache_[l].data();
    for (int64_t t = 0; t < N; ++t) {
      const int b = seq_of[t];
      const int pos = batch.positions[t];
      const int32_t blk = batch.block_tables[static_cast<size_t>(b) * batch.max_blocks_per_seq + pos / bs];
      for (int64_t g = 0; g < Hkv; ++g) {
        const float* src = qkv.data() + t * qkv_dim + g * (G + 2) * d;
        std::copy(src, src + G * d, q.data() + (t * H + g * G) * d);
        const int64_t slot = ((static_cast<int64_t>(blk) * bs + pos % bs) * Hkv + g) * d;
        std::copy(src + G * d, src + (G + 1) * d, kc + slot);
        std::copy(src + (G + 1) * d, src + (G + 2) * d, vc + slot);
      }
    }
    ap.k_cache = kc;
    ap.v_cache = vc;
    ap.head_bias = OrNull(w.head_bias);
    SbAttentionRef(ap, &pool_);
    CpuGemm(&pool_, o.data(), N, D, w.proj_w.data(), D, OrNull(w.proj_b), tmp.data());
    for (int64_t i = 0; i < N * D; ++i) h[i] += r * tmp[i];

    CpuNorm(&pool_, c.norm, h.data(), N, D, w.ln2_w.data(), OrNull(w.ln2_b), c.norm_eps, x.data());
    CpuGemm(&pool_, x.data(), N, D, w.fc_w.data(), c.glu ? 2 * I : I, OrNull(w.fc_b), fc.data());
    CpuActivation(&pool_, c.activation, c.glu, fc.data(), N, I, act.data());
    CpuGemm(&pool_, act.data(), N, I, w.fc_proj_w.data(), D, OrNull(w.fc_proj_b), tmp.data());
    for (int64_t i = 0; i < N * D; ++i) h[i] += r * tmp[i];
  }

  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  if (R == 0) return absl::OkStatus();
  std::vector<float> sel(R * D), normed(R * D);
  for (int64_t i = 0; i < R; ++i) {
    std::copy_n(h.data() + static_cast<int64_t>(batch.logit_rows[i]) * D, D, sel.data() + i * D);
  }
  CpuNorm(&pool_, c.norm, sel.data(), R, D, lnf_w_.data(), OrNull(lnf_b_), c.norm_eps, normed.data());
  const float* head = c.tie_word_embeddings ? wte_.data() : lm_head_.data();
  CpuGemm(&pool_, normed.data(), R, D, head, c.vocab_size, nullptr, logits.data());
  const float inv_width = static_cast<float>(1.0 / c.m_width);
  for (int64_t i = 0; i < R * c.vocab_size; ++i) logits[i] *= inv_width;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const Checkpoint& checkpoint,
                                                          const CpuBackendOptions& options) {
  return std::unique_ptr<Backend>(new CpuBackend(checkpoint, options));
}

}  // namespace sbserve
