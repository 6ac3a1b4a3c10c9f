// The loaded stages of one tokenizer.json, in the order the reference applies them.
#ifndef SBSERVE_ENGINE_TOKENIZER_PIPELINE_H_
#define SBSERVE_ENGINE_TOKENIZER_PIPELINE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/tokenizer/added_vocabulary.h"
#include "engine/tokenizer/bpe_model.h"
#include "engine/tokenizer/decoders.h"
#include "engine/tokenizer/normalizers.h"
#include "engine/tokenizer/post_processors.h"
#include "engine/tokenizer/pre_tokenizers.h"

namespace sbserve::tokenizer_internal {

class Pipeline {
 public:
  std::vector<AddedToken> added;
  absl::flat_hash_map<int32_t, int32_t> added_by_id;           // id -> index in `added`
  absl::flat_hash_map<std::string, int32_t> added_by_content;  // content -> index
  TokenMatcher raw_matcher;                                    // added tokens with normalized=false
  TokenMatcher normalized_matcher;  // added tokens with normalized=true (normalized content)
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  bool decoder_has_byte_fallback = false;
};

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_PIPELINE_H_
