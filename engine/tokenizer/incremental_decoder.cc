#include <string>

#include "engine/tokenizer/tokenizer.h"

namespace sbserve {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

bool EndsWithReplacement(const std::string& s) {
  return s.size() >= 3 && std::string_view(s).substr(s.size() - 3) == kReplacementChar;
}

}  // namespace

// Invariant: the text returned so far equals Decode(all ids up to the end of the context), and
// context_text_ is the window's text up to the same point. A step's delta is the window's text
// past context_text_. It is emitted only when the window's text extends context_text_, does not
// end in U+FFFD (what an incomplete UTF-8 tail decodes to) and the last visible id does not
// continue a byte-fallback run.
IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_tokens_(skip_special_tokens) {}

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens,
                                       std::span<const int32_t> prefix)
    : IncrementalDecoder(tok, skip_special_tokens) {
  // The state the stream would be in had it emitted the prefix itself: its last visible id that
  // is not a byte-fallback token, with the runs of byte tokens around it (before it, and after it
  // at the end), is the context (rules for a text's last token, such as a trailing Strip, are
  // re-evaluated once more text follows, and a byte run decodes whole), and the visible id before
  // them the anchor. Longer runs than kMaxRun leave it unprimed.
  constexpr size_t kMaxRun = 1024;
  std::vector<int32_t> context;  // reversed
  bool have_last = false;        // that id is in `context`; byte tokens before it come next
  for (size_t k = prefix.size(); k > 0; --k) {
    const int32_t id = prefix[k - 1];
    if (!Visible(id)) continue;
    if (!tok_.IsByteFallbackToken(id)) {
      if (have_last) {
        anchor_ = id;
        break;
      }
      have_last = true;
    } else if (context.size() == (have_last ? 2 * kMaxRun : kMaxRun)) {
      return;
    }
    context.push_back(id);
  }
  if (!have_last) return;
  window_.assign(context.rbegin(), context.rend());
  context_len_ = window_.size();
  absl::StatusOr<std::string> text = DecodeWindow();
  if (!text.ok() || EndsWithReplacement(*text)) {
    DropPrimedContext();
    return;
  }
  context_text_ = *std::move(text);
  primed_ = true;
}

void IncrementalDecoder::DropPrimedContext() {
  window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(context_len_));
  anchor_.reset();
  context_len_ = 0;
  context_text_.clear();
  last_is_byte_token_ = false;
  primed_ = false;
}

bool IncrementalDecoder::Visible(int32_t id) const {
  return !(skip_special_tokens_ && tok_.IsSpecial(id));
}

absl::StatusOr<std::string> IncrementalDecoder::DecodeWindow() const {
  if (!anchor_.has_value()) return tok_.Decode(window_, skip_special_tokens_);
  std::vector<int32_t> ids;
  ids.reserve(window_.size() + 1);
  ids.push_back(*anchor_);
  ids.insert(ids.end(), window_.begin(), window_.end());
  return tok_.Decode(ids, skip_special_tokens_);
}

std::string IncrementalDecoder::Add(int32_t id) {
  // A skipped special token is removed before the decoder chain runs, so it cannot change the
  // text; keeping it out of the window keeps long runs of them from growing it.
  if (!Visible(id)) return {};
  window_.push_back(id);
  absl::StatusOr<std::string> text = DecodeWindow();
  if (!text.ok()) {
    // An unknown id fails a full decode too; it contributes nothing here.
    window_.pop_back();
    return {};
  }
  last_is_byte_token_ = tok_.IsByteFallbackToken(id);
  if (primed_ && !last_is_byte_token_ && text->compare(0, context_text_.size(), context_text_) != 0) {
    // The prefix's own text changed with what followed (its final byte run, continued into bytes
    // that are not UTF-8, turned into U+FFFD): the output is decoded as a text of its own.
    DropPrimedContext();
    text = DecodeWindow();
    if (!text.ok()) return {};
  }
  if (last_is_byte_token_ || text->size() <= context_text_.size() || EndsWithReplacement(*text) ||
      text->compare(0, context_text_.size(), context_text_) != 0) {
    return {};
  }
  std::string delta = text->substr(context_text_.size());
  primed_ = false;
  // The last visible id of the old context becomes the anchor; the ids just emitted become the
  // context of the next step.
  for (size_t k = context_len_; k > 0; --k) {
    if (Visible(window_[k - 1])) {
      anchor_ = window_[k - 1];
      break;
    }
  }
  window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(context_len_));
  context_len_ = window_.size();
  absl::StatusOr<std::string> context = DecodeWindow();
  context_text_ = context.ok() ? std::move(*context) : std::string();
  return delta;
}

std::string IncrementalDecoder::Flush() {
  absl::StatusOr<std::string> text = DecodeWindow();
  if (primed_ && text.ok() && text->compare(0, context_text_.size(), context_text_) != 0) {
    DropPrimedContext();  // as in Add
    text = DecodeWindow();
  }
  std::string delta;
  if (text.ok() && text->size() > context_text_.size() &&
      text->compare(0, context_text_.size(), context_text_) == 0) {
    delta = text->substr(context_text_.size());
  }
  anchor_.reset();
  window_.clear();
  context_len_ = 0;
  context_text_.clear();
  last_is_byte_token_ = false;
  primed_ = false;
  return delta;
}

}  // namespace sbserve
