// Added-token matching cases that tokenizer_test.cc does not separate: a single_word token
// followed (not preceded) by a word character, and the longest of two added tokens that start
// at the same place. Each kills a mutant of tests/mutants/.
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sbserve {
namespace {

using nlohmann::json;

// A byte-per-character BPE vocabulary without merges, plus `added` (ids from 100).
std::unique_ptr<Tokenizer> Load(const std::vector<std::string>& vocab, json added) {
  json v = json::object();
  for (size_t i = 0; i < vocab.size(); ++i) v[vocab[i]] = i;
  for (size_t i = 0; i < added.size(); ++i) added[i]["id"] = 100 + static_cast<int>(i);
  json root = {{"version", "1.0"},
               {"model", {{"type", "BPE"}, {"vocab", v}, {"merges", json::array()}}},
               {"added_tokens", added}};
  auto tok = Tokenizer::FromJson(root.dump(), "", "");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

std::vector<int32_t> Enc(const Tokenizer& t, std::string_view s) {
  auto ids = t.Encode(s, true);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(AddedTokensMore, SingleWordNeedsABoundaryAfterToo) {
  auto t = Load({"w", "o", "r", "d", "s", " "},
                json::array({{{"content", "word"}, {"special", false}, {"single_word", true},
                              {"normalized", false}}}));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Enc(*t, "word"), (std::vector<int32_t>{100}));
  EXPECT_EQ(Enc(*t, "word s"), (std::vector<int32_t>{100, 5, 4}));
  // "words": nothing before it, but a word character after it.
  EXPECT_EQ(Enc(*t, "words"), (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

TEST(AddedTokensMore, TheLongestAddedTokenAtAPositionWins) {
  auto t = Load({"<", ">", "a", "b"},
                json::array({{{"content", "<a>"}, {"special", true}, {"normalized", false}},
                             {{"content", "<a><b>"}, {"special", true}, {"normalized", false}}}));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Enc(*t, "<a><b>"), (std::vector<int32_t>{101}));
  EXPECT_EQ(Enc(*t, "<a><a>"), (std::vector<int32_t>{100, 100}));
}

}  // namespace
}  // namespace sbserve
