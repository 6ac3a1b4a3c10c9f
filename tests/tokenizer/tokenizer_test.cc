// Unit tests on small tokenizer.json files built here, one behaviour at a time. The real
// vocabularies are covered by tokenizer_reference_test.cc.
#include "engine/tokenizer/tokenizer.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "engine/tokenizer/pre_tokenizers.h"
#include "engine/tokenizer/utf8.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sbserve {
namespace {

using nlohmann::json;
using tokenizer_internal::Piece;

// A BPE tokenizer.json from parts; `vocab` ids are assigned in order.
json MakeBpe(const std::vector<std::string>& vocab, const json& merges, json extra = {}) {
  json v = json::object();
  for (size_t i = 0; i < vocab.size(); ++i) v[vocab[i]] = i;
  json model = {{"type", "BPE"}, {"vocab", v}, {"merges", merges}};
  if (extra.contains("model")) {
    for (auto& [k, val] : extra["model"].items()) model[k] = val;
  }
  json root = {{"version", "1.0"}, {"model", model}, {"added_tokens", json::array()}};
  for (const char* key :
       {"normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens"}) {
    if (extra.contains(key)) root[key] = extra[key];
  }
  return root;
}

std::unique_ptr<Tokenizer> MustLoad(const json& j, const std::string& config = "",
                                    const std::string& gen = "") {
  auto tok = Tokenizer::FromJson(j.dump(), config, gen);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

std::vector<int32_t> Enc(const Tokenizer& t, std::string_view s, bool special = true) {
  auto ids = t.Encode(s, special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

std::string Dec(const Tokenizer& t, const std::vector<int32_t>& ids, bool skip = true) {
  auto s = t.Decode(ids, skip);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::string();
}

std::vector<std::string> PreTokenize(const json& j, const std::string& text, bool at_start = true) {
  auto pre = tokenizer_internal::MakePreTokenizer(j);
  EXPECT_TRUE(pre.ok()) << pre.status();
  std::vector<Piece> pieces{{text, at_start}};
  EXPECT_TRUE((*pre)->PreTokenize(&pieces).ok());
  std::vector<std::string> out;
  for (auto& p : pieces) out.push_back(p.text);
  return out;
}

// The 256 "<0xXX>" byte tokens of a byte-fallback vocabulary, appended in byte order.
void AddByteTokens(std::vector<std::string>* vocab) {
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    vocab->push_back(buf);
  }
}

// The SentencePiece decoder of Llama's tokenizer.json: "\u2581" to space, byte fallback, fuse, then
// strip the text's first space.
json LlamaDecoder() {
  return {{"type", "Sequence"},
          {"decoders",
           {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
            {{"type", "ByteFallback"}},
            {{"type", "Fuse"}},
            {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
}

std::string TempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("sb_tok_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

TEST(BpeModel, MergeRanksDecideTheOrder) {
  const std::vector<std::string> vocab = {"a", "b", "c", "ab", "bc", "abc"};
  // "b c" outranks "a b": abc = a + bc.
  auto t1 = MustLoad(MakeBpe(vocab, {"b c", "a b", "a bc"}));
  EXPECT_EQ(Enc(*t1, "abc"), (std::vector<int32_t>{5}));
  EXPECT_EQ(Enc(*t1, "ab"), (std::vector<int32_t>{3}));
  // Without the final merge the ranks decide which pair survives.
  auto t2 = MustLoad(MakeBpe(vocab, {"b c", "a b"}));
  EXPECT_EQ(Enc(*t2, "abc"), (std::vector<int32_t>{0, 4}));
  auto t3 = MustLoad(MakeBpe(vocab, {"a b", "b c"}));
  EXPECT_EQ(Enc(*t3, "abc"), (std::vector<int32_t>{3, 2}));
}

TEST(BpeModel, PairAndStringMergeFormsAgree) {
  const std::vector<std::string> vocab = {"a", "b", "c", "ab", "bc", "abc"};
  auto s = MustLoad(MakeBpe(vocab, {"a b", "ab c"}));
  auto p =
      MustLoad(MakeBpe(vocab, json::array({json::array({"a", "b"}), json::array({"ab", "c"})})));
  for (const char* text : {"abc", "abcabc", "cab", "bca"}) {
    EXPECT_EQ(Enc(*s, text), Enc(*p, text)) << text;
  }
  EXPECT_EQ(Enc(*p, "abcabc"), (std::vector<int32_t>{5, 5}));
}

TEST(BpeModel, LeftmostOccurrenceMergesFirstOnTies) {
  auto t = MustLoad(MakeBpe({"a", "aa"}, {"a a"}));
  EXPECT_EQ(Enc(*t, "aaa"), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(Enc(*t, "aaaa"), (std::vector<int32_t>{1, 1}));
}

TEST(BpeModel, UnknownCharactersUseUnkAndFuse) {
  json base = MakeBpe({"<unk>", "a", "b"}, json::array(), {{"model", {{"unk_token", "<unk>"}}}});
  auto t = MustLoad(base);
  EXPECT_EQ(Enc(*t,
                "a\xC3\xA9\xC3\xA9"
                "b"),
            (std::vector<int32_t>{1, 0, 0, 2}));
  base["model"]["fuse_unk"] = true;
  auto fused = MustLoad(base);
  EXPECT_EQ(Enc(*fused,
                "a\xC3\xA9\xC3\xA9"
                "b"),
            (std::vector<int32_t>{1, 0, 2}));
  // No unk token: the reference drops the character.
  auto none = MustLoad(MakeBpe({"a", "b"}, json::array()));
  EXPECT_EQ(Enc(*none,
                "a\xC3\xA9"
                "b"),
            (std::vector<int32_t>{0, 1}));
}

TEST(BpeModel, ByteFallbackAndItsDecoder) {
  std::vector<std::string> vocab = {"<unk>", "\xE2\x96\x81", "h", "i"};
  AddByteTokens(&vocab);
  json decoder = LlamaDecoder();
  json normalizer = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}};
  auto t = MustLoad(MakeBpe(vocab, json::array(),
                            {{"model", {{"unk_token", "<unk>"}, {"byte_fallback", true}}},
                             {"normalizer", normalizer},
                             {"decoder", decoder}}));
  // "é" is not in the vocab: its two UTF-8 bytes become <0xC3> <0xA9>.
  auto ids = Enc(*t, "hi \xC3\xA9");
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 2, 3, 1, 4 + 0xC3, 4 + 0xA9}));
  EXPECT_EQ(Dec(*t, ids), "hi \xC3\xA9");
  // An invalid run decodes to one U+FFFD per byte.
  EXPECT_EQ(Dec(*t, {2, 4 + 0xC3, 3}),
            "h\xEF\xBF\xBD"
            "i");
  EXPECT_TRUE(t->IsByteFallbackToken(4 + 0xC3));
  EXPECT_FALSE(t->IsByteFallbackToken(2));

  // Streaming holds the byte run until it is complete and ended.
  IncrementalDecoder dec(*t);
  std::string out;
  for (int32_t id : ids) out += dec.Add(id);
  out += dec.Flush();
  EXPECT_EQ(out, "hi \xC3\xA9");
  IncrementalDecoder dangling(*t);
  std::string d = dangling.Add(2);
  d += dangling.Add(4 + 0xC3);
  EXPECT_EQ(d + dangling.Flush(), Dec(*t, {2, 4 + 0xC3}));
}

TEST(BpeModel, IgnoreMergesTakesWholeWordsFromTheVocab) {
  // "abc" is in the vocab but no merge path reaches it.
  json j = MakeBpe({"a", "b", "c", "ab", "abc"}, {"a b"});
  auto plain = MustLoad(j);
  EXPECT_EQ(Enc(*plain, "abc"), (std::vector<int32_t>{3, 2}));
  j["model"]["ignore_merges"] = true;
  auto ignoring = MustLoad(j);
  EXPECT_EQ(Enc(*ignoring, "abc"), (std::vector<int32_t>{4}));
}

TEST(BpeModel, SubwordPrefixAndSuffix) {
  json j = MakeBpe({"a", "##b", "##c", "ab", "##bc"}, {"##b ##c", "a ##b"},
                   {{"model", {{"continuing_subword_prefix", "##"}}}});
  auto t = MustLoad(j);
  EXPECT_EQ(Enc(*t, "abc"), (std::vector<int32_t>{0, 4}));
  json s = MakeBpe({"a", "b", "b</w>", "ab</w>"}, {"a b</w>"},
                   {{"model", {{"end_of_word_suffix", "</w>"}}},
                    {"decoder", {{"type", "BPEDecoder"}, {"suffix", "</w>"}}}});
  auto ts = MustLoad(s);
  EXPECT_EQ(Enc(*ts, "ab"), (std::vector<int32_t>{3}));
  EXPECT_EQ(Enc(*ts, "bb"), (std::vector<int32_t>{1, 2}));
}

TEST(BpeModel, OneMegabyteWordIsNotQuadratic) {
  // Merges that double the run length: a, aa, aaaa, ... up to 2^10.
  std::vector<std::string> vocab;
  json merges = json::array();
  std::string piece = "a";
  for (int k = 0; k <= 10; ++k) {
    vocab.push_back(piece);
    if (k < 10) merges.push_back(piece + " " + piece);
    piece += piece;
  }
  auto t = MustLoad(MakeBpe(vocab, merges));
  std::string word(1 << 20, 'a');
  auto start = std::chrono::steady_clock::now();
  auto ids = Enc(*t, word);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(ids.size(), 1024u);  // 2^20 / 2^10
  for (int32_t id : ids) ASSERT_EQ(id, 10);
  EXPECT_LT(seconds, 5.0) << "1 MB single word took " << seconds << " s";

  // Random letters through the demo byte-level tokenizer: round trip and linear time.
  std::string dir = TempDir("longword");
  ASSERT_TRUE(WriteDemoTokenizer(dir, 1024).ok());
  auto demo = Tokenizer::Load(dir);
  ASSERT_TRUE(demo.ok()) << demo.status();
  std::mt19937 rng(7);
  std::string letters;
  for (int i = 0; i < (1 << 20); ++i) letters.push_back("etaoinshrdlu"[rng() % 12]);
  start = std::chrono::steady_clock::now();
  auto ids2 = Enc(**demo, letters);
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 5.0);
  EXPECT_EQ(Dec(**demo, ids2), letters);
}

// Megabyte runs of one character class through the Llama 3 style Split regex (look-ahead,
// alternations with quantifiers) must neither fail on PCRE2 stack limits nor go quadratic.
TEST(PreTokenizers, MegabyteRunsThroughTheSplitRegex) {
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b)
    vocab.push_back(tokenizer_internal::GetByteLevelTable().byte_to_utf8[b]);
  json pre = {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"},
                 {"pattern",
                  {{"Regex",
                    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
                    "\\s+(?!\\S)|\\s+"}}},
                 {"behavior", "Isolated"},
                 {"invert", false}},
                {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  auto t = MustLoad(MakeBpe(vocab, json::array(),
                            {{"pre_tokenizer", pre}, {"decoder", {{"type", "ByteLevel"}}}}));
  for (std::string unit : {" ", "\n", " \n", "a", "7", "!", "\xE4\xB8\xAD", "'s", "\t "}) {
    std::string text;
    while (text.size() < (1 << 20)) text += unit;
    text += "x";
    auto start = std::chrono::steady_clock::now();
    auto ids = t->Encode(text);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(ids->size(), text.size());  // byte vocabulary: one id per byte
    EXPECT_LT(s, 5.0) << "unit \"" << unit << "\"";
    EXPECT_EQ(Dec(*t, *ids), text);
  }
}

TEST(Normalizers, UnicodeFormsAndLowercase) {
  const std::string e_acute = "\xC3\xA9", e_combining = "e\xCC\x81";
  json nfc = MakeBpe({"e", e_acute, "\xCC\x81", "fi", "f", "i"}, json::array(),
                     {{"normalizer", {{"type", "NFC"}}}});
  auto t = MustLoad(nfc);
  EXPECT_EQ(Enc(*t, e_combining), (std::vector<int32_t>{1}));
  nfc["normalizer"] = {{"type", "NFKC"}};
  auto k = MustLoad(nfc);
  EXPECT_EQ(Enc(*k, "\xEF\xAC\x81"), (std::vector<int32_t>{4, 5}));  // U+FB01 "fi" ligature
  nfc["normalizer"] = {{"type", "NFD"}};
  auto d = MustLoad(nfc);
  EXPECT_EQ(Enc(*d, e_acute), (std::vector<int32_t>{0, 2}));

  json lower = MakeBpe(
      {"h", "e", "l", "o", "i", "\xCC\x87", "\xCF\x83"}, json::array(),
      {{"normalizer",
        {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}}}});
  auto lo = MustLoad(lower);
  EXPECT_EQ(Enc(*lo, "HeLLo"), (std::vector<int32_t>{0, 1, 2, 2, 3}));
  // U+0130 lowercases to "i" + U+0307; final sigma stays U+03C3 (per-character mapping).
  EXPECT_EQ(Enc(*lo, "\xC4\xB0"), (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(Enc(*lo, "\xCE\xA3"), (std::vector<int32_t>{6}));
}

TEST(Normalizers, StripReplacePrepend) {
  json j = MakeBpe({"_", "a", "b"}, json::array(),
                   {{"normalizer",
                     {{"type", "Sequence"},
                      {"normalizers",
                       {{{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
                        {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", "_"}},
                        {{"type", "Prepend"}, {"prepend", "_"}}}}}}});
  auto t = MustLoad(j);
  EXPECT_EQ(Enc(*t, "  a \t b\n"), (std::vector<int32_t>{0, 1, 0, 2}));
  EXPECT_EQ(Enc(*t, "   "), (std::vector<int32_t>{}));
}

TEST(PreTokenizers, SplitBehaviours) {
  auto split = [](const char* behavior, bool invert = false) {
    json j = {{"type", "Split"},
              {"pattern", {{"String", "-"}}},
              {"behavior", behavior},
              {"invert", invert}};
    return PreTokenize(j, "the-final--countdown");
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Removed"), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split("Isolated"), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithPrevious"), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split("MergedWithNext"), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split("Contiguous"), (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split("Removed", true), (V{"-", "-", "-"}));
  json re = {{"type", "Split"},
             {"pattern", {{"Regex", "\\p{N}{1,3}"}}},
             {"behavior", "Isolated"},
             {"invert", false}};
  EXPECT_EQ(PreTokenize(re, "ab12345c"), (V{"ab", "123", "45", "c"}));
}

TEST(PreTokenizers, DigitsMetaspaceWhitespace) {
  using V = std::vector<std::string>;
  EXPECT_EQ(PreTokenize({{"type", "Digits"}, {"individual_digits", true}}, "abc123d\xD9\xA1"),
            (V{"abc", "1", "2", "3", "d", "\xD9\xA1"}));
  EXPECT_EQ(PreTokenize({{"type", "Digits"}, {"individual_digits", false}}, "abc123d"),
            (V{"abc", "123", "d"}));
  const std::string m = "\xE2\x96\x81";
  json ms = {
      {"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "always"}, {"split", true}};
  EXPECT_EQ(PreTokenize(ms, "Hello  world"), (V{m + "Hello", m, m + "world"}));
  ms["prepend_scheme"] = "first";
  EXPECT_EQ(PreTokenize(ms, "Hello world", /*at_start=*/false), (V{"Hello", m + "world"}));
  EXPECT_EQ(PreTokenize(ms, "Hello world", /*at_start=*/true), (V{m + "Hello", m + "world"}));
  ms["split"] = false;
  ms["prepend_scheme"] = "never";
  EXPECT_EQ(PreTokenize(ms, "a b"), (V{"a" + m + "b"}));
  EXPECT_EQ(PreTokenize({{"type", "WhitespaceSplit"}}, " a  b\tc "), (V{"a", "b", "c"}));
  EXPECT_EQ(PreTokenize({{"type", "Whitespace"}}, "hi, there!"), (V{"hi", ",", "there", "!"}));
}

TEST(PreTokenizers, ByteLevel) {
  using V = std::vector<std::string>;
  json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  EXPECT_EQ(PreTokenize(bl, "Hello world's  end"), (V{"Hello", "\xC4\xA0world", "'s", "\xC4\xA0",
                                                      "\xC4\xA0"
                                                      "end"}));
  bl["add_prefix_space"] = true;
  EXPECT_EQ(PreTokenize(bl, "Hi"), (V{"\xC4\xA0Hi"}));
  bl["use_regex"] = false;
  bl["add_prefix_space"] = false;
  EXPECT_EQ(PreTokenize(bl, "a b\n"), (V{"a\xC4\xA0"
                                         "b\xC4\x8A"}));
}

// Oniguruma's \s (HF's regex engine) is Unicode White_Space: U+0085 is a space, so "'d" after
// it is still a contraction; U+FEFF is not a space.
TEST(PreTokenizers, ByteLevelRegexUsesUnicodeWhiteSpace) {
  using V = std::vector<std::string>;
  json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  EXPECT_EQ(PreTokenize(bl, "a\xC2\x85'd"), (V{"a", "\xC3\x82\xC4\xA7", "'d"}));
  EXPECT_EQ(PreTokenize(bl, "a\xEF\xBB\xBF'd"), (V{"a", "\xC3\xAF\xC2\xBB\xC2\xBF'", "d"}));
}

TEST(Decoders, ByteLevelMetaspaceStrip) {
  // ByteLevel: tokens map back to bytes; an incomplete sequence becomes U+FFFD.
  json bl =
      MakeBpe({"a", "\xC3\xA4", "\xC2\xB8"}, json::array(), {{"decoder", {{"type", "ByteLevel"}}}});
  auto t = MustLoad(bl);
  EXPECT_EQ(Dec(*t, {0}), "a");
  // Bytes E4 B8 are one truncated character: one U+FFFD for the maximal ill-formed subpart.
  EXPECT_EQ(Dec(*t, {1, 2}), "\xEF\xBF\xBD");
  EXPECT_EQ(Dec(*t, {1, 0}),
            "\xEF\xBF\xBD"
            "a");
  const std::string m = "\xE2\x96\x81";
  json ms = MakeBpe(
      {m + "Hi", m + "there", "x" + m + "y"}, json::array(),
      {{"decoder", {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "always"}}}});
  auto tm = MustLoad(ms);
  EXPECT_EQ(Dec(*tm, {0, 1}), "Hi there");
  // The first token loses every replacement character (the reference's rule).
  EXPECT_EQ(Dec(*tm, {2, 1}), "xy there");
  json st =
      MakeBpe({"__a__", "b_"}, json::array(),
              {{"decoder", {{"type", "Strip"}, {"content", "_"}, {"start", 1}, {"stop", 2}}}});
  auto ts = MustLoad(st);
  EXPECT_EQ(Dec(*ts, {0, 1}), "_ab");
}

// A token's piece is what it adds inside a text: no rule for a text's first or last token, and
// bytes as they are.
TEST(Decoders, PiecesKeepWhatATextsEndsWouldDrop) {
  const std::string m = "\xE2\x96\x81";
  auto tm = MustLoad(MakeBpe(
      {m + "Hi", m + "there", "x" + m + "y"}, json::array(),
      {{"decoder", {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "always"}}}}));
  EXPECT_EQ(Dec(*tm, {1}), "there");
  EXPECT_EQ(*tm->TokenBytes(1), " there");
  EXPECT_EQ(*tm->TokenBytes(2), "x y");
  // Inside a text, pieces add up to the text.
  EXPECT_EQ(Dec(*tm, {0, 1, 1}), Dec(*tm, {0}) + *tm->TokenBytes(1) + *tm->TokenBytes(1));

  // ByteLevel: a token holding part of a character gives its bytes, not U+FFFD.
  auto tb = MustLoad(MakeBpe({"a", "\xC3\xA4", "\xC2\xB8", "\xC2\xB9"}, json::array(),
                             {{"decoder", {{"type", "ByteLevel"}}}}));
  EXPECT_EQ(Dec(*tb, {1}), "\xEF\xBF\xBD");
  EXPECT_EQ(*tb->TokenBytes(1), "\xE4");
  EXPECT_EQ(*tb->TokenBytes(1) + *tb->TokenBytes(2) + *tb->TokenBytes(3), Dec(*tb, {1, 2, 3}));
  EXPECT_EQ(Dec(*tb, {1, 2, 3}), "\xE4\xB8\xB9");

  // The SentencePiece chain: Replace, ByteFallback, Fuse, then Strip of the text's first space.
  std::vector<std::string> vocab = {"<unk>", m + "hi", m + "you"};
  AddByteTokens(&vocab);
  json decoder = LlamaDecoder();
  json sp = MakeBpe(vocab, json::array(),
                    {{"model", {{"unk_token", "<unk>"}, {"byte_fallback", true}}}, {"decoder", decoder}});
  sp["added_tokens"] = {{{"id", 0}, {"content", "<unk>"}, {"special", true}}};
  auto ts = MustLoad(sp);
  EXPECT_EQ(Dec(*ts, {2}), "you");
  EXPECT_EQ(*ts->TokenBytes(2), " you");
  EXPECT_EQ(*ts->TokenBytes(3 + 0xE4), "\xE4");  // a byte token: the byte, not U+FFFD
  EXPECT_EQ(Dec(*ts, {3 + 0xE4}), "\xEF\xBF\xBD");
  EXPECT_EQ(Dec(*ts, {1, 3 + 0xE4, 3 + 0xB8, 3 + 0xAD, 2}),
            ts->TokenBytes(1)->substr(1) + *ts->TokenBytes(3 + 0xE4) + *ts->TokenBytes(3 + 0xB8) +
                *ts->TokenBytes(3 + 0xAD) + *ts->TokenBytes(2));
  // A special token: its content, or nothing where the text skips it.
  EXPECT_EQ(*ts->TokenBytes(0, /*skip_special_tokens=*/false), "<unk>");
  EXPECT_EQ(*ts->TokenBytes(0, /*skip_special_tokens=*/true), "");
  EXPECT_EQ(ts->TokenBytes(100000).status().code(), absl::StatusCode::kOutOfRange);

  // Strip without Fuse applies to every token, inside a text too.
  auto tp = MustLoad(MakeBpe({"__a__", "b_"}, json::array(),
                             {{"decoder", {{"type", "Strip"}, {"content", "_"}, {"start", 1}, {"stop", 2}}}}));
  EXPECT_EQ(*tp->TokenBytes(0), "_a");
  EXPECT_EQ(*tp->TokenBytes(0) + *tp->TokenBytes(1), Dec(*tp, {0, 1}));
  // BPEDecoder: the end-of-word suffix is a space inside a text, nothing at its end.
  auto tw = MustLoad(MakeBpe({"ab</w>", "c"}, json::array(), {{"decoder", {{"type", "BPEDecoder"}}}}));
  EXPECT_EQ(Dec(*tw, {0}), "ab");
  EXPECT_EQ(*tw->TokenBytes(0), "ab ");
  // No decoder: tokens joined by spaces, so a piece comes after one.
  auto tn = MustLoad(MakeBpe({"ab", "c"}, json::array()));
  EXPECT_EQ(Dec(*tn, {0, 1}), "ab c");
  EXPECT_EQ(*tn->TokenBytes(1), " c");
}

// A stream primed with a prompt gives the text its ids add after the prompt's: a SentencePiece
// token that begins the completion keeps its space.
TEST(IncrementalDecoder, APrimedStreamContinuesThePromptsText) {
  const std::string m = "\xE2\x96\x81";
  std::vector<std::string> vocab = {"<s>", m + "The", m + "sky", m + "is", m + "blue", "."};
  AddByteTokens(&vocab);
  json decoder = LlamaDecoder();
  json sp = MakeBpe(vocab, json::array(), {{"model", {{"byte_fallback", true}}}, {"decoder", decoder}});
  sp["added_tokens"] = {{{"id", 0}, {"content", "<s>"}, {"special", true}}};
  auto t = MustLoad(sp);
  auto stream = [&](std::vector<int32_t> prefix, std::vector<int32_t> ids, bool skip = true) {
    IncrementalDecoder dec(*t, skip, prefix);
    std::string out;
    for (int32_t id : ids) out += dec.Add(id);
    return out + dec.Flush();
  };
  const std::vector<int32_t> prompt = {0, 1, 2, 3}, completion = {4, 5};
  std::vector<int32_t> whole = prompt;
  whole.insert(whole.end(), completion.begin(), completion.end());
  EXPECT_EQ(stream(prompt, completion), " blue.");
  EXPECT_EQ(Dec(*t, prompt) + stream(prompt, completion), Dec(*t, whole));
  // Unprimed, the stream is a text of its own.
  EXPECT_EQ(stream({}, completion), "blue.");
  // A prompt of skipped special tokens alone has nothing to anchor to; kept, "<s>" is the anchor.
  EXPECT_EQ(stream({0}, completion), "blue.");
  EXPECT_EQ(stream({0}, completion, /*skip=*/false), " blue.");
  // A prompt ending inside a character cannot anchor: the bytes after it may complete it.
  EXPECT_EQ(stream({1, 6 + 0xC3}, {6 + 0xA9, 5}), "\xEF\xBF\xBD.");
  // One ending in a whole byte-token character ("\n", as Llama's tokenizers write it) can.
  EXPECT_EQ(stream({1, 6 + 0x0A}, {4}), " blue");
  EXPECT_EQ(stream({1, 6 + 0x0A}, {6 + 0xE4, 6 + 0xB8, 6 + 0xAD, 5}), "\xE4\xB8\xAD.");
  // Unless the output continues the byte run into bytes that are not UTF-8, which would change the
  // prompt's own text: then the output is a text of its own.
  EXPECT_EQ(stream({1, 6 + 0x0A}, {6 + 0xA9, 5}), "\xEF\xBF\xBD.");
  EXPECT_EQ(stream({1, 6 + 0x0A}, {6 + 0xA9}), "\xEF\xBF\xBD");
  // Byte tokens before the prompt's last token decode with it: "é" then "." is a text to continue.
  EXPECT_EQ(stream({1, 6 + 0xC3, 6 + 0xA9, 5}, {4}), " blue");
}

TEST(PostProcessor, TemplateAddsBosOnlyWithSpecialTokens) {
  json j = MakeBpe(
      {"<s>", "a"}, json::array(),
      {{"post_processor",
        {{"type", "TemplateProcessing"},
         {"single",
          {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {0}}, {"tokens", {"<s>"}}}}}}}},
       {"added_tokens",
        {{{"id", 0}, {"content", "<s>"}, {"special", true}, {"normalized", false}}}}});
  auto t = MustLoad(j, R"({"bos_token": "<s>", "eos_token": {"content": "<s>"}})");
  EXPECT_EQ(Enc(*t, "aa"), (std::vector<int32_t>{0, 1, 1}));
  EXPECT_EQ(Enc(*t, "aa", false), (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(t->bos_id(), 0);
  EXPECT_EQ(Dec(*t, {0, 1}, true), "a");
  EXPECT_EQ(Dec(*t, {0, 1}, false), "<s> a");  // no decoder: tokens joined by spaces
}

TEST(PostProcessor, LlamaStyleConfigsRebuildTheTemplate) {
  json j = MakeBpe({"<s>", "</s>", "a"}, json::array(),
                   {{"post_processor", {{"type", "ByteLevel"}}},
                    {"added_tokens",
                     {{{"id", 0}, {"content", "<s>"}, {"special", true}},
                      {{"id", 1}, {"content", "</s>"}, {"special", true}}}}});
  auto generic = MustLoad(j, R"({"tokenizer_class": "PreTrainedTokenizerFast",
                                 "add_bos_token": true, "bos_token": "<s>"})");
  EXPECT_EQ(Enc(*generic, "a"), (std::vector<int32_t>{2}));
  auto llama = MustLoad(j, R"({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>",
                               "eos_token": "</s>"})");
  EXPECT_EQ(Enc(*llama, "a"), (std::vector<int32_t>{0, 2}));
  auto both = MustLoad(j, R"({"tokenizer_class": "LlamaTokenizer", "add_bos_token": true,
                              "add_eos_token": true, "bos_token": "<s>", "eos_token": "</s>"})");
  EXPECT_EQ(Enc(*both, "a"), (std::vector<int32_t>{0, 2, 1}));
  EXPECT_EQ(Enc(*both, "a", false), (std::vector<int32_t>{2}));
  auto none = MustLoad(j, R"({"tokenizer_class": "GemmaTokenizerFast", "add_bos_token": false,
                              "bos_token": "<s>"})");
  EXPECT_EQ(Enc(*none, "a"), (std::vector<int32_t>{2}));
  EXPECT_FALSE(Tokenizer::FromJson(j.dump(), R"({"tokenizer_class": "LlamaTokenizer"})").ok());
}

TEST(AddedTokens, MatchedBeforePreTokenization) {
  json added = json::array({
      {{"id", 3}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}},
      {{"id", 4}, {"content", "<L>"}, {"special", true}, {"lstrip", true}, {"normalized", false}},
      {{"id", 5}, {"content", "<R>"}, {"special", true}, {"rstrip", true}, {"normalized", false}},
      {{"id", 6},
       {"content", "word"},
       {"special", false},
       {"single_word", true},
       {"normalized", false}},
      {{"id", 7}, {"content", "hey"}, {"special", false}, {"normalized", true}},
  });
  json j = MakeBpe({"a", " ", "<", "w", "o", "r", "d", "h", "e", "y", "H", "E", "Y"}, json::array(),
                   {{"added_tokens", added}, {"normalizer", {{"type", "Lowercase"}}}});
  // Added ids live above the model vocabulary.
  for (auto& a : j["added_tokens"]) a["id"] = a["id"].get<int>() + 100;
  auto t = MustLoad(j);
  EXPECT_EQ(Enc(*t, "a<|end|>a"), (std::vector<int32_t>{0, 103, 0}));
  EXPECT_EQ(Enc(*t, "a  <L>a"), (std::vector<int32_t>{0, 104, 0}));
  EXPECT_EQ(Enc(*t, "a<R>  a"), (std::vector<int32_t>{0, 105, 0}));
  EXPECT_EQ(Enc(*t, "a word a"), (std::vector<int32_t>{0, 1, 106, 1, 0}));
  EXPECT_EQ(Enc(*t, "awordd"), (std::vector<int32_t>{0, 3, 4, 5, 6, 6}));
  // normalized=true: matched after lowercasing.
  EXPECT_EQ(Enc(*t, "HEY"), (std::vector<int32_t>{107}));
  EXPECT_TRUE(t->IsSpecial(103));
  EXPECT_FALSE(t->IsSpecial(106));
  EXPECT_EQ(t->TokenToId("<|end|>"), 103);
  EXPECT_EQ(t->vocab_size(), 108);
  EXPECT_EQ(Dec(*t, {0, 103, 106}, /*skip=*/true), "a word");
  EXPECT_EQ(Dec(*t, {0, 103, 106}, /*skip=*/false), "a <|end|> word");
}

TEST(Load, RefusesUnsupportedComponentsByName) {
  struct Case {
    const char* key;
    json value;
    const char* name;
  };
  std::vector<Case> cases = {
      {"normalizer", {{"type", "BertNormalizer"}}, "BertNormalizer"},
      {"pre_tokenizer", {{"type", "Punctuation"}}, "Punctuation"},
      {"decoder", {{"type", "CTC"}}, "CTC"},
      {"post_processor", {{"type", "Frobnicate"}}, "Frobnicate"},
  };
  for (const Case& c : cases) {
    json j = MakeBpe({"a"}, json::array(), {{c.key, c.value}});
    auto t = Tokenizer::FromJson(j.dump());
    ASSERT_FALSE(t.ok()) << c.name;
    EXPECT_NE(t.status().message().find(c.name), std::string::npos) << t.status();
  }
  json wp = MakeBpe({"a"}, json::array());
  wp["model"]["type"] = "WordPiece";
  auto t = Tokenizer::FromJson(wp.dump());
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("WordPiece"), std::string::npos);
  json dropout = MakeBpe({"a"}, json::array(), {{"model", {{"dropout", 0.1}}}});
  t = Tokenizer::FromJson(dropout.dump());
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("dropout"), std::string::npos);
}

TEST(Load, MalformedFilesFailCleanly) {
  for (const char* text :
       {"", "{", "[]", "{\"model\": 3}", "{\"model\": {\"vocab\": []}}",
        "{\"model\": {\"vocab\": {\"a\": \"x\"}}}",
        "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}",
        "{\"model\": {\"vocab\": {\"a\": 0}}, \"added_tokens\": [{\"id\": -1}]}",
        "{\"model\": {\"vocab\": {\"a\": 0}}, \"pre_tokenizer\": {\"type\": \"Split\", "
        "\"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}}"}) {
    auto t = Tokenizer::FromJson(text);
    EXPECT_FALSE(t.ok()) << text;
  }
  EXPECT_FALSE(Tokenizer::Load("/nonexistent/tokenizer.json").ok());
}

TEST(Encode, InvalidUtf8IsAnError) {
  auto t = MustLoad(MakeBpe({"a"}, json::array()));
  auto r = t->Encode(
      "a\xFF"
      "a");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("offset 1"), std::string::npos) << r.status();
  auto d = t->Decode(std::vector<int32_t>{0, 99});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kOutOfRange);
}

TEST(Config, EosFromTokenizerAndGenerationConfig) {
  json j = MakeBpe({"<s>", "</s>", "<eot>", "a"}, json::array());
  auto t = MustLoad(j, R"({"bos_token": "<s>", "eos_token": "</s>"})",
                    R"({"bos_token_id": 0, "eos_token_id": [2, 1]})");
  EXPECT_EQ(t->bos_id(), 0);
  EXPECT_EQ(t->eos_ids(), (std::vector<int32_t>{1, 2}));
  auto single = MustLoad(j, "", R"({"eos_token_id": 2})");
  EXPECT_EQ(single->eos_ids(), (std::vector<int32_t>{2}));
  EXPECT_EQ(single->bos_id(), std::nullopt);
}

TEST(DemoTokenizer, HasExactVocabAndSpeaksText) {
  for (int32_t size : {512, 1000, 4096}) {
    std::string dir = TempDir("demo" + std::to_string(size));
    ASSERT_TRUE(WriteDemoTokenizer(dir, size).ok());
    auto t = Tokenizer::Load(dir);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->vocab_size(), size);
    EXPECT_EQ((*t)->TokenToId("<|endoftext|>"), 0);
    EXPECT_EQ((*t)->bos_id(), 0);
    EXPECT_EQ((*t)->eos_ids(), (std::vector<int32_t>{0}));
    EXPECT_TRUE((*t)->IsSpecial(0));
    for (int32_t id = 0; id < size; ++id) ASSERT_TRUE((*t)->IdToToken(id).has_value()) << id;
    const std::string text =
        "The server reads a request and the model answers one token at a time.\n"
        "int main() { return 0; }\n";
    auto ids = Enc(**t, text);
    EXPECT_EQ(Dec(**t, ids), text);
    // Trained merges compress English: far fewer tokens than bytes.
    EXPECT_LT(ids.size() * 2, text.size()) << ids.size() << " tokens";
    auto with_eos = Enc(**t, "hi<|endoftext|>");
    EXPECT_EQ(with_eos.back(), 0);
  }
  EXPECT_FALSE(WriteDemoTokenizer(TempDir("small"), 300).ok());
}

// Streaming cost per token must not grow with the stream: 200k ids, including long runs of
// skipped special tokens, in well under a second per 100k.
TEST(IncrementalDecoder, CostIsIndependentOfStreamLength) {
  std::string dir = TempDir("stream");
  ASSERT_TRUE(WriteDemoTokenizer(dir, 1024).ok());
  auto t = Tokenizer::Load(dir);
  ASSERT_TRUE(t.ok());
  std::string text;
  while (text.size() < 300000)
    text += "The model answers one token at a time. \xE4\xB8\xAD\xF0\x9F\x98\x80\n";
  std::vector<int32_t> ids = Enc(**t, text);
  ids.insert(ids.begin() + ids.size() / 2, 20000, 0);  // <|endoftext|> is special: skipped
  IncrementalDecoder dec(**t);
  std::string out;
  auto start = std::chrono::steady_clock::now();
  for (int32_t id : ids) out += dec.Add(id);
  out += dec.Flush();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(out, Dec(**t, ids));
  EXPECT_EQ(out, text);
  EXPECT_LT(s, 5.0) << ids.size() << " ids";
}

TEST(Cli, TokenizeAndDetokenize) {
  std::string dir = TempDir("cli");
  ASSERT_TRUE(WriteDemoTokenizer(dir, 512).ok());
  testing::internal::CaptureStdout();
  EXPECT_EQ(TokenizeCommand({"--tokenizer", dir, "--text", "hello world"}), 0);
  std::string ids = testing::internal::GetCapturedStdout();
  ASSERT_FALSE(ids.empty());
  ids.pop_back();  // newline
  testing::internal::CaptureStdout();
  EXPECT_EQ(DetokenizeCommand({"--tokenizer", dir + "/tokenizer.json", "--ids", ids}), 0);
  EXPECT_EQ(testing::internal::GetCapturedStdout(), "hello world\n");
  testing::internal::CaptureStderr();
  EXPECT_NE(TokenizeCommand({"--tokenizer", dir}), 0);
  EXPECT_NE(DetokenizeCommand({"--tokenizer", dir, "--ids", "1,x"}), 0);
  EXPECT_NE(DetokenizeCommand({"--tokenizer", dir, "--ids", "99999"}), 0);
  EXPECT_NE(TokenizeCommand({"--tokenizer", "/nonexistent", "--text", "a"}), 0);
  EXPECT_FALSE(testing::internal::GetCapturedStderr().empty());
}

TEST(Threads, ConcurrentEncodesAgree) {
  std::string dir = TempDir("threads");
  ASSERT_TRUE(WriteDemoTokenizer(dir, 2048).ok());
  auto t = Tokenizer::Load(dir);
  ASSERT_TRUE(t.ok());
  std::vector<std::string> texts;
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    std::string s;
    for (int w = 0; w < 30; ++w) s += std::string(" word") + std::to_string(rng() % 500);
    texts.push_back(s);
  }
  std::vector<std::vector<int32_t>> want;
  for (const auto& s : texts) want.push_back(Enc(**t, s));
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; ++th) {
    threads.emplace_back([&, th] {
      for (int rep = 0; rep < 5; ++rep) {
        for (size_t i = th; i < texts.size() + th; ++i) {
          size_t k = i % texts.size();
          auto ids = (*t)->Encode(texts[k]);
          if (!ids.ok() || *ids != want[k]) ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace sbserve
