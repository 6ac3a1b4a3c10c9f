#include "engine/tokenizer/unicode_normalize.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/utf8.h"

namespace sbserve::tokenizer_internal {
namespace {

bool IsAscii(const std::string& s) {
  for (unsigned char c : s) {
    if (c >= 0x80) return false;
  }
  return true;
}

}  // namespace

absl::Status NormalizeUtf8(NormalForm form, std::string* s) {
  // ASCII is invariant under every normalization form.
  if (IsAscii(*s)) return absl::OkStatus();
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* norm = nullptr;
  switch (form) {
    case NormalForm::kNfc:
      norm = icu::Normalizer2::getNFCInstance(err);
      break;
    case NormalForm::kNfkc:
      norm = icu::Normalizer2::getNFKCInstance(err);
      break;
    case NormalForm::kNfd:
      norm = icu::Normalizer2::getNFDInstance(err);
      break;
    case NormalForm::kNfkd:
      norm = icu::Normalizer2::getNFKDInstance(err);
      break;
  }
  if (U_FAILURE(err) || norm == nullptr) {
    return absl::InternalError(absl::StrCat("ICU normalizer unavailable: ", u_errorName(err)));
  }
  icu::StringPiece in(s->data(), static_cast<int32_t>(s->size()));
  if (norm->isNormalizedUTF8(in, err) && U_SUCCESS(err)) return absl::OkStatus();
  err = U_ZERO_ERROR;
  std::string out;
  out.reserve(s->size() + s->size() / 4);
  icu::StringByteSink<std::string> sink(&out);
  norm->normalizeUTF8(0, in, sink, nullptr, err);
  if (U_FAILURE(err)) {
    return absl::InternalError(absl::StrCat("ICU normalization failed: ", u_errorName(err)));
  }
  *s = std::move(out);
  return absl::OkStatus();
}

absl::Status LowercaseUtf8(std::string* s) {
  std::string out;
  out.reserve(s->size());
  size_t i = 0;
  while (i < s->size()) {
    unsigned char c = (*s)[i];
    if (c < 0x80) {
      out.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
      ++i;
      continue;
    }
    uint32_t cp = DecodeUtf8(*s, i);
    // Lowercasing one code point in isolation: ICU's context-sensitive rules see no context.
    UChar src[2];
    int32_t src_len = 0;
    U16_APPEND_UNSAFE(src, src_len, cp);
    UChar dst[8];
    UErrorCode err = U_ZERO_ERROR;
    int32_t n = u_strToLower(dst, 8, src, src_len, "", &err);
    if (U_FAILURE(err)) {
      return absl::InternalError(absl::StrCat("ICU lowercase failed: ", u_errorName(err)));
    }
    for (int32_t k = 0; k < n;) {
      UChar32 out_cp;
      U16_NEXT(dst, k, n, out_cp);
      AppendUtf8(static_cast<uint32_t>(out_cp), &out);
    }
  }
  *s = std::move(out);
  return absl::OkStatus();
}

bool IsNumeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  int8_t t = u_charType(static_cast<UChar32>(cp));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

}  // namespace sbserve::tokenizer_internal
