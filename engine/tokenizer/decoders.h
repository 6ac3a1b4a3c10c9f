// tokenizer.json "decoder": ByteLevel, ByteFallback, Metaspace, Fuse, Strip, Replace, BPEDecoder,
// Sequence, or null (tokens joined with spaces, as the reference does).
#ifndef SBSERVE_ENGINE_TOKENIZER_DECODERS_H_
#define SBSERVE_ENGINE_TOKENIZER_DECODERS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace sbserve::tokenizer_internal {

// How a chain decodes. A full decode (the default) turns the tokens into a whole text. A piece
// decode turns them into the bytes they contribute inside a longer text: no rule for the first or
// the last token of a text applies (Metaspace's dropped leading space, a Strip after Fuse, the
// missing end-of-word space), and bytes are left as they are, where a full decode would replace
// an ill-formed UTF-8 sequence by U+FFFD.
struct DecodeMode {
  bool piece = false;
  bool fused = false;  // set by a stage that joined the tokens into one string
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the token strings; the decoded text is the concatenation of the result. A stage
  // may fuse tokens (then it returns fewer strings).
  virtual absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* mode) const = 0;
};

// Returns nullptr for a JSON null; an error naming any unsupported type.
absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const nlohmann::json& j);

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_DECODERS_H_
