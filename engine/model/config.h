// Model configuration read from a HuggingFace config.json (DESIGN.md section 2).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace sbserve {

enum class Remainder { kR0, kR1, kR2 };  // none, +rem*v_i, +rem*head_bias[h]
enum class NormKind { kRmsNorm, kLayerNorm };
enum class HeadType { kMha, kGqa, kMqa };

const char* RemainderName(Remainder r);

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t n_embd = 0;        // D
  int64_t n_layer = 0;
  int64_t n_head = 0;        // H
  int64_t n_kv_head = 0;     // Hkv
  int64_t head_dim = 0;      // d = D / H
  int64_t n_inner = 0;       // I
  int64_t n_positions = 4096;
  HeadType head_type = HeadType::kMha;
  std::string activation = "swiglu";
  bool glu = true;           // activation ends in "glu": c_fc is D -> 2I
  NormKind norm = NormKind::kRmsNorm;
  double norm_eps = 1e-5;
  bool add_bias = false;
  bool add_qkv_bias = false;
  double m_emb = 1.0;
  double m_residual = 1.0;
  double m_width = 1.0;
  double attention_multiplier = 0.0;  // the scale s; 1/sqrt(d) when absent
  bool tie_word_embeddings = true;
  bool sb_remainder = false;
  // sbserve's own key: serve this model in batch-invariant mode (CudaBackendOptions::deterministic),
  // as --deterministic does for every model.
  bool deterministic = false;
  Remainder remainder = Remainder::kR0;  // resolved with the tensor list (R2 needs head_bias)
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  int64_t pad_token_id = -1;

  int64_t qkv_dim() const { return n_embd + 2 * n_kv_head * head_dim; }
  int64_t kv_values_per_token() const { return 2 * n_layer * n_kv_head * head_dim; }
};

// Parses config.json text; `origin` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& origin);

}  // namespace sbserve
