// More StopMatcher cases: ties, several occurrences in one delta, holding back for several stop
// strings, empty stop strings (each kills a mutant of tests/mutants/ that the cases of
// stop_matcher_test.cc let through).
#include <string>
#include <vector>

#include "engine/stop_matcher.h"
#include "gtest/gtest.h"

namespace sbserve {
namespace {

TEST(StopMatcherMore, TieAtOnePositionTheLongerStopWins) {
  for (const std::vector<std::string>& stops : {std::vector<std::string>{"ab", "abc"},
                                                std::vector<std::string>{"abc", "ab"}}) {
    StopMatcher m(stops);
    StopMatcher::Result r = m.Push("xabcy");
    EXPECT_TRUE(r.matched);
    EXPECT_EQ(r.stop, "abc");
    EXPECT_EQ(r.text, "x");
  }
}

TEST(StopMatcherMore, FirstOccurrenceInOneDeltaStops) {
  StopMatcher m({"X"});
  StopMatcher::Result r = m.Push("aXbXc");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "a");
}

TEST(StopMatcherMore, HoldsTheLongestPartialMatchOverAllStops) {
  // "abc" may become "abcd"; the shorter partial match "c" of "cx" must not shrink the hold.
  StopMatcher m({"abcd", "cx"});
  StopMatcher::Result r = m.Push("zabc");
  EXPECT_FALSE(r.matched);
  EXPECT_EQ(r.text, "z");
  EXPECT_EQ(m.held(), 3u);
  r = m.Push("d");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.stop, "abcd");
  EXPECT_EQ(r.text, "");
}

TEST(StopMatcherMore, EmptyStopStringsAreIgnored) {
  StopMatcher m({"", "q"});
  StopMatcher::Result r = m.Push("abc");
  EXPECT_FALSE(r.matched);
  EXPECT_EQ(r.text, "abc");
  r = m.Push("xqz");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "x");
}

}  // namespace
}  // namespace sbserve
