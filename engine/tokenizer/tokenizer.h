// HuggingFace `tokenizer.json` tokenizer: byte-level and SentencePiece-style BPE with the
// normalizers, pre-tokenizers, decoders and post-processors that current checkpoints use.
//
// Semantics follow the Rust `tokenizers` library (the reference every checkpoint is trained
// with): added tokens are matched before normalization/pre-tokenization, the post-processor in
// tokenizer.json alone decides BOS/EOS insertion, and decode runs the file's decoder chain.
// Deliberate differences:
//   - `clean_up_tokenization_spaces` (a Python `transformers` feature) is never applied: it is
//     lossy and would break streaming (IncrementalDecoder must equal Decode).
//   - `truncation` and `padding` sections are ignored: the server enforces context limits itself.
// Anything else this implementation does not know is refused by Load with a message naming it.
//
// Thread safety: a loaded Tokenizer is immutable apart from an internal, locked word cache;
// Encode/Decode may be called from any number of threads.
#ifndef SBSERVE_ENGINE_TOKENIZER_TOKENIZER_H_
#define SBSERVE_ENGINE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sbserve {

namespace tokenizer_internal {
class Pipeline;
}  // namespace tokenizer_internal

class Tokenizer {
 public:
  // dir_or_file: a directory holding tokenizer.json (+ optional tokenizer_config.json,
  // generation_config.json) or a tokenizer.json path (its directory is searched for the others).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir_or_file);
  // Same, from the JSON texts (config texts may be empty). Used by tests and the fuzzer.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      std::string_view tokenizer_json, std::string_view tokenizer_config_json = {},
      std::string_view generation_config_json = {});

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // INVALID_ARGUMENT (naming the byte offset) when `text` is not valid UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens = true) const;
  // OUT_OF_RANGE for an id outside [0, vocab_size()) or one that maps to no token.
  // Byte sequences that are not valid UTF-8 decode to U+FFFD (as the reference does).
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids,
                                     bool skip_special_tokens = true) const;
  // The bytes one token adds inside a text: its piece where it neither begins nor ends the text
  // (a SentencePiece token keeps its leading space), and raw, so a token holding part of a UTF-8
  // character gives those bytes rather than U+FFFD. Empty for a special token that
  // skip_special_tokens removes. Where the decoder has no first/last-token rule, the pieces of ids
  // concatenate to the bytes whose lossy form is Decode(ids). OUT_OF_RANGE as Decode.
  absl::StatusOr<std::string> TokenBytes(int32_t id, bool skip_special_tokens = false) const;

  // One more than the largest id of the model vocabulary and the added tokens.
  int32_t vocab_size() const;
  std::optional<int32_t> bos_id() const { return bos_id_; }
  // eos_token of tokenizer_config.json followed by generation_config.json's eos_token_id(s),
  // without duplicates.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool IsSpecial(int32_t id) const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token string of an id (added token content or model vocabulary entry).
  std::optional<std::string_view> IdToToken(int32_t id) const;
  // True for a "<0xXX>" byte token when the decoder has ByteFallback: the text of a run of such
  // tokens depends on the whole run (one invalid byte turns the entire run into U+FFFD), so a
  // streaming decoder must not emit text while a run may still continue.
  bool IsByteFallbackToken(int32_t id) const;

 private:
  Tokenizer();
  absl::StatusOr<std::string> DecodeAs(std::span<const int32_t> ids, bool skip_special_tokens,
                                       bool piece) const;
  std::unique_ptr<tokenizer_internal::Pipeline> pipeline_;
  std::optional<int32_t> bos_id_;
  std::vector<int32_t> eos_ids_;
};

// Streaming detokenizer: feed ids one at a time, get text deltas. The concatenation of all
// deltas and Flush() equals Decode(all ids); a delta never ends in the middle of a UTF-8
// character (text is held back while the decoded tail is an incomplete sequence).
//
// Each step decodes a short window: one "anchor" id (the last visible id before the window, so
// that decoder rules for the first token of a text, such as Metaspace's and Strip's, see the same
// neighbours as in a full decode), the ids emitted in the previous step (so rules for the last
// token, such as a trailing Strip, are re-evaluated), and the pending ids. The cost of Add is
// O(window), independent of the stream length. Runs of byte-fallback tokens are held until a
// normal token ends them (see Tokenizer::IsByteFallbackToken).
//
// A stream that continues a text (a completion after its prompt) is primed with the ids before
// it: it starts as if it had streamed them itself (their last visible id that is not a byte
// token, with the byte tokens around it, becomes its context, and the visible id before those its
// anchor), so the deltas are the text the new ids add, Decode(prefix + ids) past Decode(prefix),
// as in a full decode of the whole: a SentencePiece token that begins the stream keeps its leading
// space. A prefix that ends inside a UTF-8 character cannot anchor and leaves the stream unprimed;
// so does one whose final byte run the new ids continue into bytes that are not UTF-8 (which would
// change the prefix's own text): from there the stream is decoded as a text of its own.
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens = true);
  IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens,
                     std::span<const int32_t> prefix);
  std::string Add(int32_t id);  // returns the new text delta (may be empty)
  std::string Flush();          // remaining text at end of stream (e.g. U+FFFD for dangling bytes)

 private:
  absl::StatusOr<std::string> DecodeWindow() const;  // Decode(anchor_ + window_)
  bool Visible(int32_t id) const;                    // not removed by skip_special_tokens

  const Tokenizer& tok_;
  bool skip_special_tokens_;
  std::optional<int32_t> anchor_;
  std::vector<int32_t> window_;  // context ids (emitted last step) followed by pending ids
  size_t context_len_ = 0;
  std::string context_text_;  // Decode(anchor_ + window_[0, context_len_))
  bool last_is_byte_token_ = false;
  bool primed_ = false;  // the context is still the prefix's (nothing emitted yet)
  void DropPrimedContext();
};

// Writes a small byte-level BPE tokenizer.json (+ tokenizer_config.json) into dir, with exactly
// vocab_size ids: id 0 = "<|endoftext|>" (bos/eos/pad), the 256 byte tokens, then merges
// trained by the project's BPE trainer on an embedded English + code text; ids left over when
// the text has no more pairs to merge become reserved special tokens. vocab_size >= 512.
absl::Status WriteDemoTokenizer(const std::string& dir, int32_t vocab_size);
// The same, trained on `text`; with `allow_reserved` false it fails instead of padding with
// reserved ids when the text runs out of pairs (the trained demo model's tokenizer).
absl::Status WriteBpeTokenizer(const std::string& dir, int32_t vocab_size, std::string_view text,
                               bool allow_reserved);

// CLI helpers for `sbmodel tokenize` / `sbmodel detokenize` (args after the subcommand name).
// tokenize:   --tokenizer DIR_OR_FILE --text "..." [--no-special]   prints ids, comma-separated
// detokenize: --tokenizer DIR_OR_FILE --ids 1,2,3 [--keep-special]  prints the text
// Return the process exit code; errors go to stderr.
int TokenizeCommand(const std::vector<std::string>& args);
int DetokenizeCommand(const std::vector<std::string>& args);

}  // namespace sbserve

#endif  // SBSERVE_ENGINE_TOKENIZER_TOKENIZER_H_
