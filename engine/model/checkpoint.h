// A HuggingFace checkpoint directory of the `stickbreaking` architecture: config.json plus
// model.safetensors or sharded safetensors with model.safetensors.index.json. Every expected tensor
// is checked (presence, dtype, shape, byte range) before anything reads it; the tensors stay
// memory-mapped.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/safetensors.h"

namespace sbserve {

// The tensors a config implies, with their shapes (DESIGN.md section 2).
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& config, bool with_head_bias);

class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const ModelConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  // nullptr when absent.
  const TensorInfo* Find(const std::string& name) const;
  // For names ExpectedTensors() lists: they were validated by Open.
  const TensorInfo& Get(const std::string& name) const { return *Find(name); }

  int64_t num_parameters() const { return num_parameters_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  // dtype of the bulk of the weights (that of the embedding).
  DType weight_dtype() const { return Get("transformer.wte.weight").dtype; }

 private:
  Checkpoint() = default;
  absl::Status Validate();

  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> tensors_;
  int64_t num_parameters_ = 0;
  int64_t weight_bytes_ = 0;
};

}  // namespace sbserve
