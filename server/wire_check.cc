#include "server/wire_check.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"

namespace sbserve {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

constexpr int kMaxDepth = 64;

absl::Status Bad(std::string_view where, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed request: ", std::string(where), std::string(what)));
}

class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  bool done() const { return pos_ >= b_.size(); }
  size_t pos() const { return pos_; }
  size_t left() const { return b_.size() - pos_; }

  // false: truncated or longer than 10 bytes.
  bool Varint(uint64_t* v, bool* too_long) {
    *v = 0;
    *too_long = false;
    for (int i = 0; i < 10; ++i) {
      if (pos_ >= b_.size()) return false;
      const uint8_t c = static_cast<uint8_t>(b_[pos_++]);
      *v |= static_cast<uint64_t>(c & 0x7f) << (7 * i);
      if ((c & 0x80) == 0) return true;
    }
    *too_long = true;
    return false;
  }
  std::string_view Take(size_t n) {
    std::string_view s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }

 private:
  std::string_view b_;
  size_t pos_ = 0;
};

int ExpectedWireType(const FieldDescriptor* f) {
  switch (f->type()) {
    case FieldDescriptor::TYPE_DOUBLE:
    case FieldDescriptor::TYPE_FIXED64:
    case FieldDescriptor::TYPE_SFIXED64: return 1;
    case FieldDescriptor::TYPE_FLOAT:
    case FieldDescriptor::TYPE_FIXED32:
    case FieldDescriptor::TYPE_SFIXED32: return 5;
    case FieldDescriptor::TYPE_STRING:
    case FieldDescriptor::TYPE_BYTES:
    case FieldDescriptor::TYPE_MESSAGE: return 2;
    case FieldDescriptor::TYPE_GROUP: return 3;
    default: return 0;  // varints: ints, bool, enum
  }
}

const char* WireTypeName(int wt) {
  switch (wt) {
    case 0: return "varint";
    case 1: return "64-bit";
    case 2: return "length-delimited";
    case 3: return "group start";
    case 4: return "group end";
    case 5: return "32-bit";
    default: return "invalid";
  }
}

absl::Status Walk(std::string_view bytes, const Descriptor* d, const std::string& path, int depth) {
  if (depth > kMaxDepth) return Bad(path, ": messages nested too deeply");
  Reader r(bytes);
  int index_count[64] = {};  // per field number (small schemas), for repeated-element paths
  while (!r.done()) {
    const size_t at = r.pos();
    uint64_t tag = 0;
    bool too_long = false;
    if (!r.Varint(&tag, &too_long)) {
      return Bad(path, absl::StrCat(path.empty() ? "" : ": ", "truncated or overlong field tag at byte ", at));
    }
    const uint64_t number = tag >> 3;
    const int wt = static_cast<int>(tag & 7);
    if (number == 0) return Bad(path, absl::StrCat(path.empty() ? "" : ": ", "field number 0 at byte ", at));
    if (number > 536870911) {
      return Bad(path, absl::StrCat(path.empty() ? "" : ": ", "field number ", number, " out of range at byte ", at));
    }
    if (wt == 3 || wt == 4 || wt > 5) {
      return Bad(path, absl::StrCat(path.empty() ? "" : ": ", "field ", number, " has wire type ", wt, " (",
                                    WireTypeName(wt), "), which this API never uses"));
    }
    const FieldDescriptor* f = d->FindFieldByNumber(static_cast<int>(number));
    std::string fpath = f == nullptr ? absl::StrCat(path, path.empty() ? "" : ".", "field ", number)
                                     : absl::StrCat(path, path.empty() ? "" : ".", f->name());
    if (f != nullptr && f->is_repeated() && number < 64) {
      absl::StrAppend(&fpath, "[", index_count[number]++, "]");
    }
    if (f != nullptr) {
      const int want = ExpectedWireType(f);
      const bool packed_ok = wt == 2 && f->is_packable();
      if (wt != want && !packed_ok) {
        return Bad(fpath, absl::StrCat(": wire type ", wt, " (", WireTypeName(wt), ") where ", want, " (",
                                       WireTypeName(want), ") is expected (field number ", number, ")"));
      }
    }
    switch (wt) {
      case 0: {
        uint64_t v = 0;
        if (!r.Varint(&v, &too_long)) return Bad(fpath, ": truncated varint");
        break;
      }
      case 1:
        if (r.left() < 8) return Bad(fpath, ": truncated 64-bit value");
        r.Take(8);
        break;
      case 5:
        if (r.left() < 4) return Bad(fpath, ": truncated 32-bit value");
        r.Take(4);
        break;
      case 2: {
        uint64_t len = 0;
        if (!r.Varint(&len, &too_long)) return Bad(fpath, ": truncated length");
        if (len > r.left()) {
          return Bad(fpath, absl::StrCat(": length ", len, " runs past the end of the message (", r.left(),
                                         " bytes left)"));
        }
        const std::string_view payload = r.Take(static_cast<size_t>(len));
        if (f == nullptr) break;
        if (f->type() == FieldDescriptor::TYPE_STRING) {
          if (!IsValidUtf8(payload)) return Bad(fpath, ": not valid UTF-8");
        } else if (f->type() == FieldDescriptor::TYPE_MESSAGE) {
          if (absl::Status s = Walk(payload, f->message_type(), fpath, depth + 1); !s.ok()) return s;
        } else if (f->is_packable()) {
          const int elem = ExpectedWireType(f);
          if (elem == 1 && payload.size() % 8 != 0) return Bad(fpath, ": packed 64-bit values of ragged length");
          if (elem == 5 && payload.size() % 4 != 0) return Bad(fpath, ": packed 32-bit values of ragged length");
          if (elem == 0) {
            Reader p(payload);
            while (!p.done()) {
              uint64_t v = 0;
              if (!p.Varint(&v, &too_long)) return Bad(fpath, ": truncated packed varint");
            }
          }
        }
        break;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;  // continuation byte, overlong lead (c0, c1) or beyond U+10FFFF (f5..ff)
    }
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      const uint8_t cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return false;
    if (cp >= 0xd800 && cp <= 0xdfff) return false;
    i += len;
  }
  return true;
}

absl::Status ParseStrict(std::string_view bytes, google::protobuf::Message* message) {
  const Descriptor* d = message->GetDescriptor();
  if (absl::Status s = Walk(bytes, d, "", 0); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(s.message(), " (", d->name(), ")"));
  }
  if (!message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(absl::StrCat("malformed request: not a valid ", d->name()));
  }
  return absl::OkStatus();
}

}  // namespace sbserve
