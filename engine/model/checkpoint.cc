#include "engine/model/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace sbserve {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadSmallFile(const fs::path& path, size_t limit) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot read: ", ec.message()));
  if (size > limit) return absl::InvalidArgumentError(absl::StrCat(path.string(), ": larger than ", limit, " bytes"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string ShapeString(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

}  // namespace

std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& c, bool with_head_bias) {
  const int64_t D = c.n_embd, V = c.vocab_size, I = c.n_inner;
  const bool norm_bias = c.norm == NormKind::kLayerNorm;
  std::vector<ExpectedTensor> out;
  out.push_back({"transformer.wte.weight", {V, D}});
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = absl::StrCat("transformer.h.", l, ".");
    out.push_back({p + "ln_1.weight", {D}});
    if (norm_bias) out.push_back({p + "ln_1.bias", {D}});
    out.push_back({p + "attn.c_attn.weight", {c.qkv_dim(), D}});
    if (c.add_qkv_bias) out.push_back({p + "attn.c_attn.bias", {c.qkv_dim()}});
    out.push_back({p + "attn.c_proj.weight", {D, D}});
    if (c.add_bias) out.push_back({p + "attn.c_proj.bias", {D}});
    if (with_head_bias) out.push_back({p + "attn.head_bias", {c.n_head, c.head_dim}});
    out.push_back({p + "ln_2.weight", {D}});
    if (norm_bias) out.push_back({p + "ln_2.bias", {D}});
    out.push_back({p + "mlp.c_fc.weight", {c.glu ? 2 * I : I, D}});
    if (c.add_bias) out.push_back({p + "mlp.c_fc.bias", {c.glu ? 2 * I : I}});
    out.push_back({p + "mlp.c_proj.weight", {D, I}});
    if (c.add_bias) out.push_back({p + "mlp.c_proj.bias", {D}});
  }
  out.push_back({"transformer.ln_f.weight", {D}});
  if (norm_bias) out.push_back({"transformer.ln_f.bias", {D}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {V, D}});
  return out;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = dir;
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return absl::NotFoundError(absl::StrCat(dir, ": not a checkpoint directory"));

  const fs::path config_path = root / "config.json";
  auto config_text = ReadSmallFile(config_path, 1 << 20);
  if (!config_text.ok()) return config_text.status();
  auto config = ParseModelConfig(*config_text, config_path.string());
  if (!config.ok()) return config.status();
  ckpt->config_ = *config;

  const fs::path single = root / "model.safetensors";
  const fs::path index = root / "model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;  // tensor -> shard file name
  if (fs::exists(index, ec)) {
    auto text = ReadSmallFile(index, 64 << 20);
    if (!text.ok()) return text.status();
    auto j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": not a JSON object with a \"weight_map\""));
    }
    std::map<std::string, size_t> shard_ids;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index.string(), ": tensor \"", it.key(), "\": shard name is not a string"));
      }
      const std::string shard = it->get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat(index.string(), ": tensor \"", it.key(), "\": invalid shard file name \"", shard, "\""));
      }
      weight_map[it.key()] = shard;
      if (!shard_ids.count(shard)) {
        auto file = SafetensorsFile::Open((root / shard).string());
        if (!file.ok()) return file.status();
        shard_ids[shard] = ckpt->files_.size();
        ckpt->files_.push_back(std::move(*file));
      }
    }
    for (const auto& [name, shard] : weight_map) {
      const auto& tensors = ckpt->files_[shard_ids[shard]]->tensors();
      auto it = tensors.find(name);
      if (it == tensors.end()) {
        return absl::InvalidArgumentError(absl::StrCat(index.string(), ": tensor \"", name,
                                                       "\" is mapped to ", shard, " which does not contain it"));
      }
      ckpt->tensors_[name] = &it->second;
    }
  } else if (fs::exists(single, ec)) {
    auto file = SafetensorsFile::Open(single.string());
    if (!file.ok()) return file.status();
    for (const auto& [name, info] : (*file)->tensors()) ckpt->tensors_[name] = &info;
    ckpt->files_.push_back(std::move(*file));
  } else {
    return absl::NotFoundError(
        absl::StrCat(dir, ": neither model.safetensors nor model.safetensors.index.json is present"));
  }
  absl::Status st = ckpt->Validate();
  if (!st.ok()) return st;
  return ckpt;
}

const TensorInfo* Checkpoint::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

absl::Status Checkpoint::Validate() {
  // R2 is chosen by the presence of head_bias tensors; they must then exist in every layer.
  int64_t with_bias = 0;
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    if (Find(absl::StrCat("transformer.h.", l, ".attn.head_bias"))) ++with_bias;
  }
  if (with_bias != 0 && with_bias != config_.n_layer) {
    return absl::InvalidArgumentError(absl::StrCat(dir_, ": attn.head_bias present in ", with_bias, " of ",
                                                   config_.n_layer, " layers; it must be in all or none"));
  }
  if (with_bias > 0) config_.remainder = Remainder::kR2;

  num_parameters_ = 0;
  weight_bytes_ = 0;
  for (const ExpectedTensor& e : ExpectedTensors(config_, with_bias > 0)) {
    const TensorInfo* t = Find(e.name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(dir_, ": tensor \"", e.name, "\" is missing"));
    }
    if (t->shape != e.shape) {
      return absl::InvalidArgumentError(absl::StrCat(t->file, ": tensor \"", e.name, "\" has shape ",
                                                     ShapeString(t->shape), ", config.json implies ",
                                                     ShapeString(e.shape)));
    }
    num_parameters_ += t->numel();
    weight_bytes_ += t->nbytes;
  }
  return absl::OkStatus();
}

}  // namespace sbserve
