#include "engine/tokenizer/decoders.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/json_util.h"
#include "engine/tokenizer/regex.h"
#include "engine/tokenizer/utf8.h"

namespace sbserve::tokenizer_internal {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// Maps each token's characters back to bytes; a token containing a character outside the
// byte alphabet (e.g. an added token like "<|im_end|>" with non-ASCII) is kept as its own UTF-8.
// The joined bytes become one string, ill-formed sequences replaced by U+FFFD.
class ByteLevelDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* mode) const override {
    const ByteLevelTable& table = GetByteLevelTable();
    std::string bytes;
    std::string tok_bytes;
    for (const std::string& t : *tokens) {
      tok_bytes.clear();
      bool ok = true;
      size_t i = 0;
      while (i < t.size()) {
        uint32_t cp = DecodeUtf8(t, i);
        if (cp >= table.char_to_byte.size() || table.char_to_byte[cp] < 0) {
          ok = false;
          break;
        }
        tok_bytes.push_back(static_cast<char>(table.char_to_byte[cp]));
      }
      bytes.append(ok ? tok_bytes : t);
    }
    tokens->assign(1, mode->piece ? std::move(bytes) : Utf8Lossy(bytes));
    mode->fused = true;
    return absl::OkStatus();
  }
};

// "<0xXX>" tokens become bytes; a run of them that is valid UTF-8 becomes its text, an invalid
// run becomes one U+FFFD per byte (the reference's rule, unlike the lossy rule above).
class ByteFallbackDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* mode) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (mode->piece || FindInvalidUtf8(pending) == std::string::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back(kReplacementChar);
      }
      pending.clear();
    };
    for (std::string& t : *tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && IsHex(t[3]) &&
          IsHex(t[4])) {
        pending.push_back(static_cast<char>(HexValue(t[3]) * 16 + HexValue(t[4])));
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    *tokens = std::move(out);
    return absl::OkStatus();
  }

 private:
  static bool IsHex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }
  static int HexValue(char c) {
    return c <= '9' ? c - '0' : c <= 'F' ? c - 'A' + 10 : c - 'a' + 10;
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* mode) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      std::string out;
      out.reserve(t.size());
      size_t pos = 0;
      // The reference drops every replacement character of the first token (not just a leading
      // one) unless prepend_scheme is "never".
      const std::string_view space = i == 0 && strip_first_ && !mode->piece ? "" : " ";
      for (size_t hit; (hit = t.find(replacement_, pos)) != std::string::npos;
           pos = hit + replacement_.size()) {
        out.append(t, pos, hit - pos);
        out.append(space);
      }
      out.append(t, pos);
      t = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class FuseDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* mode) const override {
    std::string all;
    for (const std::string& t : *tokens) all.append(t);
    tokens->assign(1, std::move(all));
    mode->fused = true;
    return absl::OkStatus();
  }
};

// Removes up to `start` leading and `stop` trailing occurrences of one character per token.
// After a Fuse the one token is the whole text, whose ends a piece is not at.
class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, int start, int stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* mode) const override {
    if (mode->piece && mode->fused) return absl::OkStatus();
    const size_t n = content_.size();
    for (std::string& t : *tokens) {
      size_t b = 0, e = t.size();
      for (int k = 0; k < start_ && e - b >= n && t.compare(b, n, content_) == 0; ++k) b += n;
      for (int k = 0; k < stop_ && e - b >= n && t.compare(e - n, n, content_) == 0; ++k) e -= n;
      t = t.substr(b, e - b);
    }
    return absl::OkStatus();
  }

 private:
  std::string content_;
  int start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* /*mode*/) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    for (std::string& t : *tokens) {
      matches.clear();
      if (absl::Status st = pattern_->FindAll(t, &matches); !st.ok()) return st;
      if (matches.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (auto [b, e] : matches) {
        out.append(t, prev, b - prev);
        out.append(content_);
        prev = e;
      }
      out.append(t, prev);
      t = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

// Replaces the end-of-word suffix by a space (none after the last token).
class BpeSuffixDecoder : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* mode) const override {
    if (suffix_.empty()) return absl::OkStatus();
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      const std::string_view repl = i + 1 == tokens->size() && !mode->piece ? "" : " ";
      std::string out;
      size_t pos = 0;
      for (size_t hit; (hit = t.find(suffix_, pos)) != std::string::npos;
           pos = hit + suffix_.size()) {
        out.append(t, pos, hit - pos);
        out.append(repl);
      }
      out.append(t, pos);
      t = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::string suffix_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens, DecodeMode* mode) const override {
    for (const auto& p : parts_) {
      if (absl::Status st = p->DecodeChain(tokens, mode); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const nlohmann::json& j) {
  if (j.is_null()) return std::unique_ptr<Decoder>();
  absl::StatusOr<std::string> type = TypeOf(j, "decoder");
  if (!type.ok()) return type.status();
  if (*type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (*type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (*type == "Fuse") return std::make_unique<FuseDecoder>();
  if (*type == "Metaspace") {
    bool strip_first = true;
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      strip_first = j["prepend_scheme"].get<std::string>() != "never";
    } else {
      strip_first = GetBool(j, "add_prefix_space", true);
    }
    std::string replacement = GetString(j, "replacement", "\xE2\x96\x81");
    if (replacement.empty()) return absl::InvalidArgumentError("Metaspace: empty replacement");
    return std::make_unique<MetaspaceDecoder>(replacement, strip_first);
  }
  if (*type == "Strip") {
    std::string content = GetString(j, "content", " ");
    if (content.empty()) return absl::InvalidArgumentError("Strip decoder: empty content");
    int start = j.value("start", 0), stop = j.value("stop", 0);
    if (start < 0 || stop < 0) return absl::InvalidArgumentError("Strip decoder: negative count");
    return std::make_unique<StripDecoder>(content, start, stop);
  }
  if (*type == "Replace") {
    auto pattern = MakePattern(j.value("pattern", nlohmann::json()), "Replace decoder");
    if (!pattern.ok()) return pattern.status();
    return std::make_unique<ReplaceDecoder>(std::move(*pattern), GetString(j, "content", ""));
  }
  if (*type == "BPEDecoder") {
    return std::make_unique<BpeSuffixDecoder>(GetString(j, "suffix", "</w>"));
  }
  if (*type == "Sequence") {
    auto it = j.find("decoders");
    if (it == j.end() || !it->is_array()) {
      return absl::InvalidArgumentError("Sequence decoder without a \"decoders\" array");
    }
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const auto& sub : *it) {
      auto part = MakeDecoder(sub);
      if (!part.ok()) return part.status();
      if (*part) parts.push_back(std::move(*part));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  return absl::UnimplementedError(
      absl::StrCat("unsupported decoder type \"", *type,
                   "\" (supported: ByteLevel, ByteFallback, Metaspace, Fuse, Strip, Replace, "
                   "BPEDecoder, Sequence)"));
}

}  // namespace sbserve::tokenizer_internal
