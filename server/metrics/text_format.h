// Pieces of the Prometheus text exposition format, version 0.0.4:
// https://prometheus.io/docs/instrumenting/exposition_formats/
//
// Kept separate from the registry so the exact escaping and number rules can be tested alone.
#pragma once

#include <string>
#include <string_view>

namespace sbserve::metrics {

// The Content-Type of a /metrics response in this format.
inline constexpr std::string_view kTextContentType = "text/plain; version=0.0.4; charset=utf-8";

// Metric names match [a-zA-Z_:][a-zA-Z0-9_:]*.
bool IsValidMetricName(std::string_view name);

// Label names match [a-zA-Z_][a-zA-Z0-9_]* and must not start with "__" (reserved by Prometheus).
bool IsValidLabelName(std::string_view name);

// Label values: backslash, double quote and line feed become \\, \" and \n.
std::string EscapeLabelValue(std::string_view value);

// HELP text: backslash and line feed become \\ and \n (double quotes stay as they are).
std::string EscapeHelp(std::string_view help);

// Sample values and `le` bounds: "+Inf", "-Inf", "NaN"; integers below 2^53 in plain decimal
// (so a token counter reads 1234567, not 1.234567e+06); anything else in the shortest form that
// parses back to the same double.
std::string FormatValue(double value);

// String joining for this library: absl::string_view is not std::string_view in Debian's abseil,
// so absl::StrCat does not take the std::string_view pieces used here.
template <typename... Parts>
void Append(std::string* out, const Parts&... parts) {
  (out->append(parts), ...);
}
template <typename... Parts>
std::string Cat(const Parts&... parts) {
  std::string out;
  Append(&out, parts...);
  return out;
}

}  // namespace sbserve::metrics
