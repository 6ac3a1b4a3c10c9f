// Safetensors images built byte by byte, for the bounds the checkpoint tests do not reach: a
// header length between the file size - 8 and the file size, partial overlaps, the exact byte
// count of a tensor. Each kills a mutant of tests/mutants/.
#include <cstdint>
#include <string>

#include "engine/model/safetensors.h"
#include "gtest/gtest.h"

namespace sbserve {
namespace {

// 8-byte little-endian header length, the header, then `data_bytes` zero bytes.
std::string Image(const std::string& header, size_t data_bytes, uint64_t header_len_field = 0) {
  const uint64_t n = header_len_field ? header_len_field : header.size();
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += header;
  out.append(data_bytes, '\0');
  return out;
}

absl::Status Parse(const std::string& image) {
  return SafetensorsFile::FromMemory(image.data(), image.size(), "mem").status();
}

TEST(SafetensorsBounds, WellFormedImageParses) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  const std::string img = Image(h, 16);
  auto g = SafetensorsFile::FromMemory(img.data(), img.size(), "mem");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)->tensors().size(), 2u);
}

TEST(SafetensorsBounds, HeaderLengthReachingIntoTheLengthPrefixIsTruncation) {
  // A 100-byte image whose length field claims 96 header bytes: only 92 follow the prefix.
  const std::string h(92, ' ');
  const std::string img = Image(h, 0, /*header_len_field=*/96);
  ASSERT_EQ(img.size(), 100u);
  absl::Status st = Parse(img);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("truncated"), std::string::npos) << st;
}

TEST(SafetensorsBounds, PartialOverlapIsRefused) {
  // b starts inside a and ends inside c; no two begins are equal.
  const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
                        R"("c":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  absl::Status st = Parse(Image(h, 16));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("overlaps"), std::string::npos) << st;
}

TEST(SafetensorsBounds, ByteCountMustMatchTheShapeExactly) {
  const std::string more = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})";
  absl::Status st = Parse(Image(more, 12));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("holds 12 bytes but its shape and dtype need 8"), std::string::npos) << st;
  const std::string fewer = R"({"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,4]}})";
  st = Parse(Image(fewer, 4));
  EXPECT_NE(st.message().find("holds 4 bytes but its shape and dtype need 6"), std::string::npos) << st;
}

TEST(SafetensorsBounds, DataPastTheEndIsRefused) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  absl::Status st = Parse(Image(h, 12));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("outside the file"), std::string::npos) << st;
}

}  // namespace
}  // namespace sbserve
