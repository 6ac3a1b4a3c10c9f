// UTF-8 helpers shared by the tokenizer stages: validation, code point iteration, the lossy
// conversion used by decoders, and the GPT-2 byte <-> printable character table.
#ifndef SBSERVE_ENGINE_TOKENIZER_UTF8_H_
#define SBSERVE_ENGINE_TOKENIZER_UTF8_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace sbserve::tokenizer_internal {

// Debian's Abseil is built with its own absl::string_view; heterogeneous lookups in absl
// containers need that type.
inline absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

// Returns the offset of the first invalid byte, or npos when `s` is valid UTF-8
// (shortest form, no surrogates, <= U+10FFFF).
size_t FindInvalidUtf8(std::string_view s);

// Length in bytes of the character starting with lead byte `c` in valid UTF-8.
inline size_t Utf8CharLen(unsigned char c) {
  return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

// Decodes the character at s[i] of valid UTF-8 and advances i.
inline uint32_t DecodeUtf8(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  uint32_t c = p[0];
  if (c < 0x80) {
    i += 1;
    return c;
  }
  if (c < 0xE0) {
    i += 2;
    return ((c & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (c < 0xF0) {
    i += 3;
    return ((c & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  i += 4;
  return ((c & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

void AppendUtf8(uint32_t cp, std::string* out);

// Converts arbitrary bytes to valid UTF-8, replacing each maximal ill-formed subsequence with
// U+FFFD (Unicode's recommended practice; what Rust's from_utf8_lossy and WHATWG do).
std::string Utf8Lossy(std::string_view bytes);

// The GPT-2 byte-level alphabet: printable bytes map to themselves, the others to U+0100...
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_utf8;  // byte -> its character, UTF-8 encoded
  std::array<int16_t, 0x180> char_to_byte;    // code point -> byte, or -1
};
const ByteLevelTable& GetByteLevelTable();

// Unicode White_Space (what Rust's char::is_whitespace tests).
bool IsUnicodeWhitespace(uint32_t cp);

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_UTF8_H_
