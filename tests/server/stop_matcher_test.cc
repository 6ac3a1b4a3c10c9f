#include "engine/stop_matcher.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sbserve {
namespace {

// Feeds `deltas` and returns (released text, matched stop or "").
std::pair<std::string, std::string> Feed(std::vector<std::string> stops, const std::vector<std::string>& deltas) {
  StopMatcher m(std::move(stops));
  std::string out;
  for (const auto& d : deltas) {
    StopMatcher::Result r = m.Push(d);
    out += r.text;
    if (r.matched) return {out, r.stop};
  }
  out += m.Flush();
  return {out, ""};
}

TEST(StopMatcher, MatchAcrossManyDeltas) {
  auto [text, stop] = Feed({"STOP"}, {"abc S", "T", "O", "Pxyz"});
  EXPECT_EQ(text, "abc ");
  EXPECT_EQ(stop, "STOP");
}

TEST(StopMatcher, HoldsBackOnlyPossiblePrefixes) {
  StopMatcher m({"world"});
  StopMatcher::Result r = m.Push("hello wor");
  EXPECT_EQ(r.text, "hello ");  // "wor" may become "world"
  EXPECT_FALSE(r.matched);
  r = m.Push("m");
  EXPECT_EQ(r.text, "worm");    // it did not
  EXPECT_EQ(m.held(), 0u);
}

TEST(StopMatcher, SelfOverlappingStop) {
  // "abcab" + "d" + "abcabc": the held "abcab" turns out not to match, the later one does.
  auto [text, stop] = Feed({"abcabc"}, {"xxabcab", "dabcab", "c!"});
  EXPECT_EQ(text, "xxabcabd");
  EXPECT_EQ(stop, "abcabc");
}

TEST(StopMatcher, EarliestOfSeveralStopsWins) {
  auto [text, stop] = Feed({"zz", "b"}, {"a", "bzz"});
  EXPECT_EQ(text, "a");
  EXPECT_EQ(stop, "b");
}

TEST(StopMatcher, NoMatchReleasesEverything) {
  auto [text, stop] = Feed({"STOP"}, {"ST", "OR", "Y S"});
  EXPECT_EQ(text, "STORY S");
  EXPECT_EQ(stop, "");
}

TEST(StopMatcher, ReleasePassesThroughAndDoesNotMatch) {
  StopMatcher m({"ab"});
  StopMatcher::Result r = m.Push("xab", StopMatcher::Check::kRelease);
  EXPECT_EQ(r.text, "xab");
  EXPECT_FALSE(r.matched);
  r = m.Push("yab");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "y");
}

// Before min_tokens nothing matches, but a possible stop prefix is still held back: a stop string
// that completes once matching is on is found even though it began earlier, and none of it leaks.
TEST(StopMatcher, HoldOnlyMatchesNothingButKeepsAPrefixForLater) {
  StopMatcher m({"sMetrics", "ab"});
  StopMatcher::Result r = m.Push("xab", StopMatcher::Check::kHoldOnly);
  EXPECT_EQ(r.text, "xab");  // a complete stop string before min_tokens is plain text
  EXPECT_FALSE(r.matched);
  r = m.Push("s", StopMatcher::Check::kHoldOnly);
  EXPECT_EQ(r.text, "");
  EXPECT_FALSE(r.matched);
  r = m.Push("Metrics!");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.stop, "sMetrics");
  EXPECT_EQ(r.text, "");
  // A shorter stop string held whole before min_tokens (as the start of a longer one) does not
  // match once matching is on; the longer one still can.
  for (const std::string next : {"Sure", "User: hi"}) {
    StopMatcher k({"\n", "\nUser:"});
    EXPECT_EQ(k.Push("Hi\n", StopMatcher::Check::kHoldOnly).text, "Hi");
    r = k.Push(next);
    if (next == "Sure") {
      EXPECT_FALSE(r.matched) << "\\n came before min_tokens";
      EXPECT_EQ(r.text, "\nSure");
      r = k.Push("\n");
      EXPECT_TRUE(r.matched);
      EXPECT_EQ(r.stop, "\n");
    } else {
      EXPECT_TRUE(r.matched);
      EXPECT_EQ(r.stop, "\nUser:");
      EXPECT_EQ(r.text, "");
    }
  }
  // Held text that turns out not to be a stop string goes out.
  StopMatcher n({"sMetrics"});
  EXPECT_EQ(n.Push("xs", StopMatcher::Check::kHoldOnly).text, "x");
  EXPECT_EQ(n.Push("o").text, "so");
}

TEST(StopMatcher, NothingAfterMatch) {
  StopMatcher m({"x"});
  EXPECT_TRUE(m.Push("ax").matched);
  EXPECT_EQ(m.Push("more").text, "");
  EXPECT_EQ(m.Flush(), "");
}

}  // namespace
}  // namespace sbserve
