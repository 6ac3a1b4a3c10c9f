// The trained demo model embedded in the binary (engine/demo_model/README.md says how it was made).
#pragma once

#include <string_view>
#include <vector>

namespace sbserve {

struct EmbeddedFile {
  const char* name;       // file name inside the model directory
  std::string_view data;  // its bytes
};

// config.json, generation_config.json, tokenizer.json, tokenizer_config.json, model.safetensors.
std::vector<EmbeddedFile> DemoModelFiles();

}  // namespace sbserve
