#include "engine/model/config.h"

#include <cmath>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace sbserve {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& origin, absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ": field \"", field, "\": ", problem));
}

// Reads an integer field; `required` fields must be present and non-null.
absl::Status GetInt(const json& j, const std::string& origin, const char* field, bool required,
                    int64_t* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(origin, field, "missing") : absl::OkStatus();
  }
  if (!it->is_number_integer()) return FieldError(origin, field, "must be an integer");
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status GetDouble(const json& j, const std::string& origin, const char* field, double* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return FieldError(origin, field, "must be a number");
  *out = it->get<double>();
  if (!std::isfinite(*out)) return FieldError(origin, field, "must be finite");
  return absl::OkStatus();
}

absl::Status GetBool(const json& j, const std::string& origin, const char* field, bool* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return FieldError(origin, field, "must be true or false");
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status GetString(const json& j, const std::string& origin, const char* field, std::string* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return FieldError(origin, field, "must be a string");
  *out = it->get<std::string>();
  return absl::OkStatus();
}

// eos_token_id may be an int or a list; the first entry is kept here (the tokenizer exposes all).
absl::Status GetTokenId(const json& j, const std::string& origin, const char* field, int64_t* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_number_integer()) {
    *out = it->get<int64_t>();
  } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
    *out = (*it)[0].get<int64_t>();
  } else {
    return FieldError(origin, field, "must be an integer or a list of integers");
  }
  return absl::OkStatus();
}

}  // namespace

const char* RemainderName(Remainder r) {
  switch (r) {
    case Remainder::kR0: return "R0";
    case Remainder::kR1: return "R1";
    case Remainder::kR2: return "R2";
  }
  return "?";
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& origin) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(origin, ": not valid JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(origin, ": not a JSON object"));

  ModelConfig c;
#define SB_RETURN_IF_ERROR(expr)            \
  do {                                      \
    absl::Status _st = (expr);              \
    if (!_st.ok()) return _st;              \
  } while (0)
  SB_RETURN_IF_ERROR(GetInt(j, origin, "vocab_size", true, &c.vocab_size));
  SB_RETURN_IF_ERROR(GetInt(j, origin, "n_embd", true, &c.n_embd));
  SB_RETURN_IF_ERROR(GetInt(j, origin, "n_layer", true, &c.n_layer));
  SB_RETURN_IF_ERROR(GetInt(j, origin, "n_head", true, &c.n_head));
  c.n_inner = -1;
  SB_RETURN_IF_ERROR(GetInt(j, origin, "n_inner", false, &c.n_inner));
  SB_RETURN_IF_ERROR(GetInt(j, origin, "n_positions", false, &c.n_positions));
  std::string head_type = "mha";
  SB_RETURN_IF_ERROR(GetString(j, origin, "attention_head_type", &head_type));
  c.n_kv_head = -1;
  SB_RETURN_IF_ERROR(GetInt(j, origin, "num_key_value_heads", false, &c.n_kv_head));
  std::string activation = "gelu_pytorch_tanh";
  SB_RETURN_IF_ERROR(GetString(j, origin, "activation_function", &activation));
  std::string norm = "layernorm";
  SB_RETURN_IF_ERROR(GetString(j, origin, "normalization_function", &norm));
  SB_RETURN_IF_ERROR(GetDouble(j, origin, "layer_norm_epsilon", &c.norm_eps));
  SB_RETURN_IF_ERROR(GetBool(j, origin, "add_bias", &c.add_bias));
  c.add_qkv_bias = c.add_bias;
  SB_RETURN_IF_ERROR(GetBool(j, origin, "add_qkv_bias", &c.add_qkv_bias));
  SB_RETURN_IF_ERROR(GetDouble(j, origin, "m_emb", &c.m_emb));
  SB_RETURN_IF_ERROR(GetDouble(j, origin, "m_residual", &c.m_residual));
  SB_RETURN_IF_ERROR(GetDouble(j, origin, "m_width", &c.m_width));
  SB_RETURN_IF_ERROR(GetDouble(j, origin, "attention_multiplier", &c.attention_multiplier));
  SB_RETURN_IF_ERROR(GetBool(j, origin, "tie_word_embeddings", &c.tie_word_embeddings));
  SB_RETURN_IF_ERROR(GetBool(j, origin, "sb_remainder", &c.sb_remainder));
  SB_RETURN_IF_ERROR(GetBool(j, origin, "deterministic", &c.deterministic));
  SB_RETURN_IF_ERROR(GetTokenId(j, origin, "bos_token_id", &c.bos_token_id));
  SB_RETURN_IF_ERROR(GetTokenId(j, origin, "eos_token_id", &c.eos_token_id));
  SB_RETURN_IF_ERROR(GetTokenId(j, origin, "pad_token_id", &c.pad_token_id));
#undef SB_RETURN_IF_ERROR

  if (c.vocab_size <= 0) return FieldError(origin, "vocab_size", "must be positive");
  if (c.n_embd <= 0) return FieldError(origin, "n_embd", "must be positive");
  if (c.n_layer <= 0) return FieldError(origin, "n_layer", "must be positive");
  if (c.n_head <= 0) return FieldError(origin, "n_head", "must be positive");
  if (c.n_embd % c.n_head != 0) return FieldError(origin, "n_head", "must divide n_embd");
  c.head_dim = c.n_embd / c.n_head;
  if (c.n_inner < 0) c.n_inner = 4 * c.n_embd;
  if (c.n_inner == 0) return FieldError(origin, "n_inner", "must be positive");
  if (c.n_positions <= 0) return FieldError(origin, "n_positions", "must be positive");

  if (head_type == "mha") {
    c.head_type = HeadType::kMha;
    if (c.n_kv_head >= 0 && c.n_kv_head != c.n_head)
      return FieldError(origin, "num_key_value_heads", "must equal n_head for attention_head_type mha");
    c.n_kv_head = c.n_head;
  } else if (head_type == "mqa") {
    c.head_type = HeadType::kMqa;
    if (c.n_kv_head >= 0 && c.n_kv_head != 1)
      return FieldError(origin, "num_key_value_heads", "must be 1 for attention_head_type mqa");
    c.n_kv_head = 1;
  } else if (head_type == "gqa") {
    c.head_type = HeadType::kGqa;
    if (c.n_kv_head <= 0) return FieldError(origin, "num_key_value_heads", "required and positive for gqa");
    if (c.n_head % c.n_kv_head != 0) return FieldError(origin, "num_key_value_heads", "must divide n_head");
  } else {
    return FieldError(origin, "attention_head_type", absl::StrCat("unsupported value \"", head_type,
                                                                   "\" (supported: mha, gqa, mqa)"));
  }

  static const char* kGlu[] = {"swiglu", "geglu", "reglu"};
  static const char* kPlain[] = {"gelu", "gelu_pytorch_tanh", "silu", "relu"};
  bool known = false;
  for (const char* a : kGlu) if (activation == a) { known = true; c.glu = true; }
  for (const char* a : kPlain) if (activation == a) { known = true; c.glu = false; }
  if (!known) {
    return FieldError(origin, "activation_function",
                      absl::StrCat("unsupported value \"", activation,
                                   "\" (supported: swiglu, geglu, reglu, gelu, gelu_pytorch_tanh, silu, relu)"));
  }
  c.activation = activation;

  if (norm == "rmsnorm") {
    c.norm = NormKind::kRmsNorm;
  } else if (norm == "layernorm") {
    c.norm = NormKind::kLayerNorm;
  } else {
    return FieldError(origin, "normalization_function",
                      absl::StrCat("unsupported value \"", norm, "\" (supported: rmsnorm, layernorm)"));
  }
  if (!(c.norm_eps > 0)) return FieldError(origin, "layer_norm_epsilon", "must be positive");
  if (c.m_width == 0) return FieldError(origin, "m_width", "must be non-zero");
  if (c.attention_multiplier == 0) c.attention_multiplier = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  c.remainder = c.sb_remainder ? Remainder::kR1 : Remainder::kR0;
  return c;
}

}  // namespace sbserve
