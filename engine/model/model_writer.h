// Random-weight checkpoints in the real HF layout (config.json + safetensors + tokenizer), and the
// embedded demo model the server and tools fall back to.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace sbserve {

struct CreateOptions {
  std::string preset = "small";  // tiny | small | small-3b | small-3b-d128 | 1b | 3b
  std::string variant = "R1";    // R0 | R1 | R2
  std::string dtype = "f32";     // f32 | bf16 | f16
  uint64_t seed = 0;
  int64_t kv_heads = 0;          // > 0: GQA with this many kv heads (1: MQA)
  std::string norm;              // "" (preset's) | rmsnorm | layernorm
  bool add_bias = false;
  bool untied = false;           // write a separate lm_head
  int64_t shards = 1;            // > 1: sharded safetensors with model.safetensors.index.json
  bool tokenizer = true;         // also write the demo tokenizer.json
};

absl::Status WriteRandomCheckpoint(const std::string& dir, const CreateOptions& options);

// The demo model: a small stick-breaking LM trained on this repository's own text (the `small`
// preset's shapes, R1, bf16; engine/demo_model/), embedded in the binary and written out on first
// use, atomically, into $SBSERVE_CACHE_DIR, else $XDG_CACHE_HOME/sbserve, else $HOME/.cache/sbserve,
// plus "/" kDemoModelName.
inline constexpr char kDemoModelName[] = "demo-trained-v2";
absl::StatusOr<std::string> EnsureDemoModel();

}  // namespace sbserve
