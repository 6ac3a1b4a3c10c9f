#include "server/metrics/text_format.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace sbserve::metrics {
namespace {

TEST(TextFormat, MetricNames) {
  EXPECT_TRUE(IsValidMetricName("sbserve_prompt_tokens_total"));
  EXPECT_TRUE(IsValidMetricName("vllm:num_requests_running"));
  EXPECT_TRUE(IsValidMetricName("_x"));
  EXPECT_TRUE(IsValidMetricName(":x9"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidMetricName("9lives"));
  EXPECT_FALSE(IsValidMetricName("has-dash"));
  EXPECT_FALSE(IsValidMetricName("has space"));
  EXPECT_FALSE(IsValidMetricName("caf\xc3\xa9"));
}

TEST(TextFormat, LabelNames) {
  EXPECT_TRUE(IsValidLabelName("finished_reason"));
  EXPECT_TRUE(IsValidLabelName("_a1"));
  EXPECT_FALSE(IsValidLabelName(""));
  EXPECT_FALSE(IsValidLabelName("__name__"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("1a"));
}

TEST(TextFormat, EscapeLabelValue) {
  EXPECT_EQ(EscapeLabelValue("plain"), "plain");
  EXPECT_EQ(EscapeLabelValue("a\\b"), "a\\\\b");
  EXPECT_EQ(EscapeLabelValue("say \"hi\""), "say \\\"hi\\\"");
  EXPECT_EQ(EscapeLabelValue("two\nlines"), "two\\nlines");
  EXPECT_EQ(EscapeLabelValue("\\n"), "\\\\n");  // a literal backslash-n stays distinguishable
  EXPECT_EQ(EscapeLabelValue("tab\tutf8 \xc3\xa9"), "tab\tutf8 \xc3\xa9");
}

TEST(TextFormat, EscapeHelp) {
  EXPECT_EQ(EscapeHelp("a \"quoted\" word"), "a \"quoted\" word");
  EXPECT_EQ(EscapeHelp("back\\slash"), "back\\\\slash");
  EXPECT_EQ(EscapeHelp("line1\nline2"), "line1\\nline2");
}

TEST(TextFormat, FormatValue) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(-0.0), "0");
  EXPECT_EQ(FormatValue(42), "42");
  EXPECT_EQ(FormatValue(-7), "-7");
  EXPECT_EQ(FormatValue(1234567), "1234567");
  EXPECT_EQ(FormatValue(9007199254740991.0), "9007199254740991");
  EXPECT_EQ(FormatValue(0.0002), "0.0002");
  EXPECT_EQ(FormatValue(2.5), "2.5");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
  // Whatever notation is chosen, it must parse back to the same double.
  for (double v : {1e-9, 3.0e-5, 1.0 / 3.0, 6.02214076e23, 1e300, 0.30000000000000004}) {
    const std::string s = FormatValue(v);
    EXPECT_EQ(std::strtod(s.c_str(), nullptr), v) << s;
  }
}

}  // namespace
}  // namespace sbserve::metrics
