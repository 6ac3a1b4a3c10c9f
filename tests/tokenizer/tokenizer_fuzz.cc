// Fuzz entry point for the tokenizer: the tokenizer.json loader, Encode, Decode and the
// streaming decoder. Built as a libFuzzer target with SBSERVE_FUZZ=ON and clang; otherwise
// tokenizer_fuzz_replay.cc drives the same function over a corpus and generated inputs.
//
// Input: first byte selects the mode, the rest is the payload.
//   0: payload is a tokenizer.json; loading must fail cleanly or give a usable tokenizer.
//   1: payload is text for the built-in tokenizers; checks round trip and streaming.
//   2: payload is little-endian int32 ids; Decode vs the streaming decoder.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace {

using sbserve::IncrementalDecoder;
using sbserve::Tokenizer;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// A SentencePiece-style pipeline exercising the other component types.
constexpr const char* kMetaspaceJson = R"({
  "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": true},
    {"type": "Split", "pattern": {"Regex": "\\s+(?!\\S)|[\\p{P}]"}, "behavior": "MergedWithNext", "invert": false},
    {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": true}]},
  "decoder": {"type": "Sequence", "decoders": [
    {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"},
    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 0, "stop": 1}]},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
  "added_tokens": [{"id": 1, "content": "<s>", "special": true, "normalized": false},
                   {"id": 2, "content": "<sep>", "special": true, "normalized": false, "lstrip": true, "rstrip": true}],
  "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": true, "fuse_unk": true,
    "vocab": {"<unk>": 0, "<s>": 1, "<sep>": 2, "\u2581": 3, "a": 4, "b": 5, "\u2581a": 6, "ab": 7,
              "<0x41>": 8, "<0xC3>": 9, "<0xA9>": 10, "<0xE4>": 11, "<0xB8>": 12, "<0xAD>": 13},
    "merges": [["\u2581", "a"], "a b"]}
})";

struct Tokenizers {
  std::unique_ptr<Tokenizer> byte_level;  // the demo tokenizer: lossless round trip
  std::unique_ptr<Tokenizer> metaspace;
};

const Tokenizers& Get() {
  static const Tokenizers* t = [] {
    auto* out = new Tokenizers;
    std::string dir = (std::filesystem::temp_directory_path() / "sb_tok_fuzz_demo").string();
    Check(sbserve::WriteDemoTokenizer(dir, 768).ok());
    auto bl = Tokenizer::Load(dir);
    Check(bl.ok());
    out->byte_level = std::move(*bl);
    auto ms = Tokenizer::FromJson(kMetaspaceJson);
    Check(ms.ok());
    out->metaspace = std::move(*ms);
    return out;
  }();
  return *t;
}

// Streaming must reproduce the full decode exactly.
void CheckStreaming(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  auto full = tok.Decode(ids, skip);
  if (!full.ok()) return;
  IncrementalDecoder dec(tok, skip);
  std::string streamed;
  for (int32_t id : ids) {
    std::string delta = dec.Add(id);
    Check(sbserve::tokenizer_internal::FindInvalidUtf8(delta) == std::string::npos);
    streamed += delta;
  }
  streamed += dec.Flush();
  if (streamed != *full) {
    std::fprintf(stderr, "streaming mismatch (skip=%d)\nids:", skip);
    for (int32_t id : ids) std::fprintf(stderr, " %d", id);
    std::fprintf(stderr, "\nstreamed: %s\nfull:     %s\n", streamed.c_str(), full->c_str());
    __builtin_trap();
  }
  // Primed with the first half, the stream gives the text the second half adds after it, where
  // the first half's text is a prefix of the whole and ends on a whole character it can anchor on.
  if (ids.size() < 2) return;
  const size_t split = ids.size() / 2;
  const std::span<const int32_t> prefix(ids.data(), split);
  auto before = tok.Decode(prefix, skip);
  if (!before.ok()) return;
  IncrementalDecoder primed(tok, skip, prefix);
  std::string rest;
  for (size_t k = split; k < ids.size(); ++k) {
    std::string delta = primed.Add(ids[k]);
    Check(sbserve::tokenizer_internal::FindInvalidUtf8(delta) == std::string::npos);
    rest += delta;
  }
  rest += primed.Flush();
  if (before->ends_with("\xEF\xBF\xBD") || !full->starts_with(*before)) return;
  if (rest != full->substr(before->size())) {
    std::fprintf(stderr, "primed streaming mismatch (skip=%d, split %zu)\nids:", skip, split);
    for (int32_t id : ids) std::fprintf(stderr, " %d", id);
    std::fprintf(stderr, "\nrest:  %s\nwhole: %s\n", rest.c_str(), full->c_str());
    __builtin_trap();
  }
}

void FuzzText(std::string_view text) {
  const Tokenizers& t = Get();
  const bool valid = sbserve::tokenizer_internal::FindInvalidUtf8(text) == std::string::npos;
  for (const Tokenizer* tok : {t.byte_level.get(), t.metaspace.get()}) {
    auto ids = tok->Encode(text);
    Check(ids.ok() == valid);
    if (!ids.ok()) {
      Check(ids.status().code() == absl::StatusCode::kInvalidArgument);
      continue;
    }
    for (int32_t id : *ids) Check(id >= 0 && id < tok->vocab_size());
    auto back = tok->Decode(*ids, /*skip_special_tokens=*/false);
    Check(back.ok());
    if (tok == t.byte_level.get()) Check(*back == text);
    CheckStreaming(*tok, *ids, true);
    CheckStreaming(*tok, *ids, false);
  }
}

void FuzzIds(std::string_view payload) {
  const Tokenizers& t = Get();
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 4 <= payload.size() && ids.size() < 4096; i += 4) {
    uint32_t v;
    std::memcpy(&v, payload.data() + i, 4);
    ids.push_back(static_cast<int32_t>(v % 1024));
  }
  for (const Tokenizer* tok : {t.byte_level.get(), t.metaspace.get()}) {
    CheckStreaming(*tok, ids, true);
    CheckStreaming(*tok, ids, false);
  }
}

void FuzzLoader(std::string_view json) {
  auto tok = Tokenizer::FromJson(json);
  if (!tok.ok()) return;
  for (std::string_view s : {"", "Hello, world! 123", "a\xC3\xA9\xE4\xB8\xAD  \n<s>"}) {
    auto ids = (*tok)->Encode(s);
    if (!ids.ok()) continue;
    auto text = (*tok)->Decode(*ids, false);
    (void)text;
  }
  std::vector<int32_t> all;
  for (int32_t id = 0; id < (*tok)->vocab_size() && id < 512; ++id) all.push_back(id);
  (void)(*tok)->Decode(all, true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > (1 << 16)) return 0;
  std::string_view payload(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      FuzzLoader(payload);
      break;
    case 1:
      FuzzText(payload);
      break;
    default:
      FuzzIds(payload);
      break;
  }
  return 0;
}
