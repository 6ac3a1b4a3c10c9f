#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/pipeline.h"
#include "engine/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace sbserve {

using tokenizer_internal::AddedToken;
using tokenizer_internal::Piece;
using tokenizer_internal::Pipeline;
using tokenizer_internal::Section;

namespace {

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path.string()));
  return ss.str();
}

absl::StatusOr<nlohmann::json> ParseJson(std::string_view text, std::string_view what) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return absl::InvalidArgumentError(
        absl::StrCat(tokenizer_internal::AsAbsl(what), " is not valid JSON"));
  return j;
}

// A token named in tokenizer_config.json: a string or an AddedToken object {"content": ...}.
std::optional<std::string> ConfigToken(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

absl::Status LoadAddedTokens(const nlohmann::json& root, Pipeline* p) {
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_array()) return absl::InvalidArgumentError("added_tokens is not an array");
  for (const auto& t : *it) {
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
        !t.contains("content") || !t["content"].is_string()) {
      return absl::InvalidArgumentError("added_tokens entry without integer id / string content");
    }
    AddedToken tok;
    tok.content = t["content"].get<std::string>();
    int64_t id = t["id"].get<int64_t>();
    if (id < 0 || id >= (1 << 30)) {
      return absl::InvalidArgumentError(absl::StrCat("added token id ", id, " out of range"));
    }
    if (tok.content.empty() ||
        tokenizer_internal::FindInvalidUtf8(tok.content) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("added token ", id, " has empty content"));
    }
    tok.id = static_cast<int32_t>(id);
    auto flag = [&](const char* key, bool def) {
      return t.contains(key) && t[key].is_boolean() ? t[key].get<bool>() : def;
    };
    tok.special = flag("special", false);
    tok.single_word = flag("single_word", false);
    tok.lstrip = flag("lstrip", false);
    tok.rstrip = flag("rstrip", false);
    tok.normalized = flag("normalized", !tok.special);
    int32_t index = static_cast<int32_t>(p->added.size());
    p->added_by_id[tok.id] = index;
    p->added_by_content.emplace(tok.content, index);
    p->added.push_back(std::move(tok));
  }
  // The reference matches normalized tokens by their normalized content.
  for (int32_t i = 0; i < static_cast<int32_t>(p->added.size()); ++i) {
    const AddedToken& tok = p->added[i];
    if (tok.normalized && p->normalizer != nullptr) {
      std::string normalized = tok.content;
      if (absl::Status st = p->normalizer->Normalize(&normalized); !st.ok()) return st;
      p->normalized_matcher.Add(normalized, i);
    } else {
      p->raw_matcher.Add(tok.content, i);
    }
  }
  return absl::OkStatus();
}

// transformers' Llama and Gemma tokenizer classes rebuild the post-processor from
// tokenizer_config.json at load: BOS when add_bos_token (default true), EOS when add_eos_token
// (default false), replacing what tokenizer.json says. Checkpoints rely on it (e.g. a ByteLevel
// post-processor with add_bos_token true), so we do the same for those classes.
absl::Status ApplyLlamaStyleTemplate(const nlohmann::json& config, std::optional<int32_t> bos,
                                     std::optional<int32_t> eos, Pipeline* p) {
  static constexpr std::string_view kClasses[] = {"LlamaTokenizer",     "LlamaTokenizerFast",
                                                  "CodeLlamaTokenizer", "CodeLlamaTokenizerFast",
                                                  "GemmaTokenizer",     "GemmaTokenizerFast"};
  std::string cls = config.value("tokenizer_class", std::string());
  if (std::find(std::begin(kClasses), std::end(kClasses), cls) == std::end(kClasses)) {
    return absl::OkStatus();
  }
  auto flag = [&](const char* key, bool def) {
    auto it = config.find(key);
    return it != config.end() && it->is_boolean() ? it->get<bool>() : def;
  };
  const bool add_bos = flag("add_bos_token", true), add_eos = flag("add_eos_token", false);
  if ((add_bos && !bos.has_value()) || (add_eos && !eos.has_value())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer_config.json (", cls, ") asks for add_bos_token/add_eos_token but its ",
        "bos_token/eos_token is missing or not in the vocabulary"));
  }
  std::vector<int32_t> before, after;
  if (add_bos) before.push_back(*bos);
  if (add_eos) after.push_back(*eos);
  p->post_processor = tokenizer_internal::MakeWrapProcessor(std::move(before), std::move(after));
  return absl::OkStatus();
}

bool HasDecoderType(const nlohmann::json& j, const char* type) {
  if (!j.is_object()) return false;
  if (j.value("type", std::string()) == type) return true;
  auto it = j.find("decoders");
  if (it == j.end() || !it->is_array()) return false;
  for (const auto& sub : *it) {
    if (HasDecoderType(sub, type)) return true;
  }
  return false;
}

absl::StatusOr<std::unique_ptr<Pipeline>> LoadPipeline(const nlohmann::json& root) {
  if (!root.is_object()) return absl::InvalidArgumentError("tokenizer.json is not an object");
  auto p = std::make_unique<Pipeline>();
  auto section = [&](const char* key) {
    auto it = root.find(key);
    return it == root.end() ? nlohmann::json() : *it;
  };
  auto with_context = [](const absl::Status& st, const char* where) {
    return absl::Status(st.code(), absl::StrCat("tokenizer.json ", where, ": ", st.message()));
  };
  {
    auto n = tokenizer_internal::MakeNormalizer(section("normalizer"));
    if (!n.ok()) return with_context(n.status(), "normalizer");
    p->normalizer = std::move(*n);
  }
  {
    auto pt = tokenizer_internal::MakePreTokenizer(section("pre_tokenizer"));
    if (!pt.ok()) return with_context(pt.status(), "pre_tokenizer");
    p->pre_tokenizer = std::move(*pt);
  }
  {
    auto m = tokenizer_internal::BpeModel::FromJson(section("model"));
    if (!m.ok()) return with_context(m.status(), "model");
    p->model = std::move(*m);
  }
  {
    auto pp = tokenizer_internal::MakePostProcessor(section("post_processor"));
    if (!pp.ok()) return with_context(pp.status(), "post_processor");
    p->post_processor = std::move(*pp);
  }
  {
    auto d = tokenizer_internal::MakeDecoder(section("decoder"));
    if (!d.ok()) return with_context(d.status(), "decoder");
    p->decoder = std::move(*d);
    p->decoder_has_byte_fallback = HasDecoderType(section("decoder"), "ByteFallback");
  }
  if (absl::Status st = LoadAddedTokens(root, p.get()); !st.ok()) {
    return with_context(st, "added_tokens");
  }
  return p;
}

// Pre-tokenizes one plain section and runs the model over its pieces.
absl::Status EncodePlain(const Pipeline& p, std::string_view text, bool at_start,
                         std::vector<int32_t>* ids) {
  std::vector<Piece> pieces;
  pieces.push_back({std::string(text), at_start});
  if (p.pre_tokenizer != nullptr) {
    if (absl::Status st = p.pre_tokenizer->PreTokenize(&pieces); !st.ok()) return st;
  }
  for (const Piece& piece : pieces) p.model->TokenizeWord(piece.text, ids);
  return absl::OkStatus();
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir_or_file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path file = dir_or_file;
  if (fs::is_directory(file, ec)) file /= "tokenizer.json";
  absl::StatusOr<std::string> json = ReadFile(file);
  if (!json.ok()) return json.status();
  fs::path dir = file.parent_path();
  std::string config, generation;
  if (fs::exists(dir / "tokenizer_config.json", ec)) {
    absl::StatusOr<std::string> c = ReadFile(dir / "tokenizer_config.json");
    if (!c.ok()) return c.status();
    config = std::move(*c);
  }
  if (fs::exists(dir / "generation_config.json", ec)) {
    absl::StatusOr<std::string> g = ReadFile(dir / "generation_config.json");
    if (!g.ok()) return g.status();
    generation = std::move(*g);
  }
  auto tok = FromJson(*json, config, generation);
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(file.string(), ": ", tok.status().message()));
  }
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json,
    std::string_view generation_config_json) {
  // nlohmann::json throws on type mismatches we did not anticipate; nothing may escape.
  try {
    absl::StatusOr<nlohmann::json> root = ParseJson(tokenizer_json, "tokenizer.json");
    if (!root.ok()) return root.status();
    std::unique_ptr<Tokenizer> tok(new Tokenizer);
    auto pipeline = LoadPipeline(*root);
    if (!pipeline.ok()) return pipeline.status();
    tok->pipeline_ = std::move(*pipeline);

    auto add_eos = [&](int32_t id) {
      if (std::find(tok->eos_ids_.begin(), tok->eos_ids_.end(), id) == tok->eos_ids_.end()) {
        tok->eos_ids_.push_back(id);
      }
    };
    if (!tokenizer_config_json.empty()) {
      absl::StatusOr<nlohmann::json> config =
          ParseJson(tokenizer_config_json, "tokenizer_config.json");
      if (!config.ok()) return config.status();
      if (auto bos = ConfigToken(*config, "bos_token")) tok->bos_id_ = tok->TokenToId(*bos);
      std::optional<int32_t> config_eos;
      if (auto eos = ConfigToken(*config, "eos_token")) {
        config_eos = tok->TokenToId(*eos);
        if (config_eos) add_eos(*config_eos);
      }
      if (absl::Status st =
              ApplyLlamaStyleTemplate(*config, tok->bos_id_, config_eos, tok->pipeline_.get());
          !st.ok()) {
        return st;
      }
    }
    if (!generation_config_json.empty()) {
      absl::StatusOr<nlohmann::json> gen =
          ParseJson(generation_config_json, "generation_config.json");
      if (!gen.ok()) return gen.status();
      if (auto it = gen->find("eos_token_id"); it != gen->end()) {
        if (it->is_number_integer()) add_eos(it->get<int32_t>());
        if (it->is_array()) {
          for (const auto& v : *it) {
            if (v.is_number_integer()) add_eos(v.get<int32_t>());
          }
        }
      }
      if (auto it = gen->find("bos_token_id");
          !tok->bos_id_.has_value() && it != gen->end() && it->is_number_integer()) {
        tok->bos_id_ = it->get<int32_t>();
      }
    }
    return tok;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("malformed tokenizer files: ", e.what()));
  }
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  if (size_t bad = tokenizer_internal::FindInvalidUtf8(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("input is not valid UTF-8 (first bad byte at offset ", bad, ")"));
  }
  const Pipeline& p = *pipeline_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Section> sections, subsections;
  p.raw_matcher.Split(text, p.added, &sections);
  std::string normalized;
  for (const Section& s : sections) {
    if (s.token >= 0) {
      ids.push_back(p.added[s.token].id);
      continue;
    }
    const bool at_start = s.text.data() == text.data();
    if (p.normalizer == nullptr) {
      if (absl::Status st = EncodePlain(p, s.text, at_start, &ids); !st.ok()) return st;
      continue;
    }
    normalized.assign(s.text);
    if (absl::Status st = p.normalizer->Normalize(&normalized); !st.ok()) return st;
    subsections.clear();
    p.normalized_matcher.Split(normalized, p.added, &subsections);
    for (const Section& sub : subsections) {
      if (sub.token >= 0) {
        ids.push_back(p.added[sub.token].id);
        continue;
      }
      const bool sub_at_start = at_start && sub.text.data() == normalized.data();
      if (absl::Status st = EncodePlain(p, sub.text, sub_at_start, &ids); !st.ok()) return st;
    }
  }
  if (add_special_tokens && p.post_processor != nullptr) p.post_processor->Process(&ids);
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  return DecodeAs(ids, skip_special_tokens, /*piece=*/false);
}

absl::StatusOr<std::string> Tokenizer::TokenBytes(int32_t id, bool skip_special_tokens) const {
  return DecodeAs({&id, 1}, skip_special_tokens, /*piece=*/true);
}

absl::StatusOr<std::string> Tokenizer::DecodeAs(std::span<const int32_t> ids,
                                                bool skip_special_tokens, bool piece) const {
  const Pipeline& p = *pipeline_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (auto it = p.added_by_id.find(id); it != p.added_by_id.end()) {
      const AddedToken& t = p.added[it->second];
      if (!(skip_special_tokens && t.special)) tokens.push_back(t.content);
      continue;
    }
    const std::string* tok = p.model->IdToToken(id);
    if (tok == nullptr) {
      return absl::OutOfRangeError(absl::StrCat("token id ", id, " is not in the vocabulary"));
    }
    tokens.push_back(*tok);
  }
  if (p.decoder == nullptr) {
    std::string out;
    // Without a decoder, the tokens are joined by spaces: inside a text, a piece follows one.
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 || piece) out.push_back(' ');
      out.append(tokens[i]);
    }
    return out;
  }
  tokenizer_internal::DecodeMode mode{.piece = piece};
  if (absl::Status st = p.decoder->DecodeChain(&tokens, &mode); !st.ok()) return st;
  std::string out;
  for (const std::string& t : tokens) out.append(t);
  return out;
}

int32_t Tokenizer::vocab_size() const {
  int32_t n = pipeline_->model->max_id() + 1;
  for (const AddedToken& t : pipeline_->added) n = std::max(n, t.id + 1);
  return n;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  auto it = pipeline_->added_by_id.find(id);
  return it != pipeline_->added_by_id.end() && pipeline_->added[it->second].special;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto it = pipeline_->added_by_content.find(tokenizer_internal::AsAbsl(token));
      it != pipeline_->added_by_content.end()) {
    return pipeline_->added[it->second].id;
  }
  return pipeline_->model->TokenToId(token);
}

bool Tokenizer::IsByteFallbackToken(int32_t id) const {
  return pipeline_->decoder_has_byte_fallback && !pipeline_->added_by_id.contains(id) &&
         pipeline_->model->IsByteToken(id);
}

std::optional<std::string_view> Tokenizer::IdToToken(int32_t id) const {
  if (auto it = pipeline_->added_by_id.find(id); it != pipeline_->added_by_id.end()) {
    return std::string_view(pipeline_->added[it->second].content);
  }
  if (const std::string* t = pipeline_->model->IdToToken(id)) return std::string_view(*t);
  return std::nullopt;
}

}  // namespace sbserve
