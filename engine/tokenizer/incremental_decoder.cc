#include <string>

#include "engine/tokenizer/tokenizer.h"

namespace sbserve {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

bool EndsWithReplacement(const std::string& s) {
  return s.size() >= 3 && std::string_view(s).substr(s.size() - 3) == kReplacementChar;
}

}  // namespace

// Invariant: context_text_ == Decode(window_[0, context_len_)), and everything the caller has
// received so far equals Decode(all ids up to the window) + context_text_. A new id is decoded
// together with the context so that decoder rules that look at the first token (Metaspace,
// Strip) see the same neighbours as in a full decode; the delta is emitted only when the text
// grew and does not end in U+FFFD, which is what an incomplete UTF-8 tail decodes to.
IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_tokens_(skip_special_tokens) {}

std::string IncrementalDecoder::Add(int32_t id) {
  window_.push_back(id);
  absl::StatusOr<std::string> text = tok_.Decode(window_, skip_special_tokens_);
  if (!text.ok()) {
    // An unknown id decodes to nothing, as it would fail a full decode; drop it.
    window_.pop_back();
    return {};
  }
  // Skipped special tokens are transparent: the run they sit in continues after them.
  if (!(skip_special_tokens_ && tok_.IsSpecial(id))) {
    last_is_byte_token_ = tok_.IsByteFallbackToken(id);
  }
  if (last_is_byte_token_ || text->size() <= context_text_.size() || EndsWithReplacement(*text) ||
      text->compare(0, context_text_.size(), context_text_) != 0) {
    return {};
  }
  std::string delta = text->substr(context_text_.size());
  // The ids just emitted become the context of the next step.
  window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(context_len_));
  context_len_ = window_.size();
  absl::StatusOr<std::string> context = tok_.Decode(window_, skip_special_tokens_);
  context_text_ = context.ok() ? std::move(*context) : std::string();
  return delta;
}

std::string IncrementalDecoder::Flush() {
  absl::StatusOr<std::string> text = tok_.Decode(window_, skip_special_tokens_);
  std::string delta;
  if (text.ok() && text->size() > context_text_.size() &&
      text->compare(0, context_text_.size(), context_text_) == 0) {
    delta = text->substr(context_text_.size());
  }
  window_.clear();
  context_len_ = 0;
  last_is_byte_token_ = false;
  context_text_.clear();
  return delta;
}

}  // namespace sbserve
