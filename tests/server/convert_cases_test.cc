// RequestFromProto, the front door's validation of a GenerateRequest, case by case (each kills
// a mutant of tests/mutants/ that the end-to-end server tests let through).
#include "server/convert.h"

#include <string>

#include "gtest/gtest.h"

namespace sbserve {
namespace {

v1::GenerateRequest Base() {
  v1::GenerateRequest p;
  p.mutable_token_ids()->add_ids(1);
  return p;
}

TEST(ConvertCases, MaxTokensZeroIsRefusedWhenSet) {
  v1::GenerateRequest p = Base();
  p.mutable_stopping()->set_max_tokens(0);
  absl::StatusOr<GenerateRequest> r = RequestFromProto(p);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("stopping.max_tokens"), std::string::npos) << r.status();
  p.mutable_stopping()->clear_max_tokens();
  r = RequestFromProto(p);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->max_tokens, 0) << "unset: the engine's default";
}

TEST(ConvertCases, LogitBiasOutOfRangeIsRefusedNamingTheField) {
  v1::GenerateRequest p = Base();
  (*p.mutable_sampling()->mutable_logit_bias())[3] = 100.f;
  (*p.mutable_sampling()->mutable_logit_bias())[4] = -100.f;
  ASSERT_TRUE(RequestFromProto(p).ok());
  (*p.mutable_sampling()->mutable_logit_bias())[4] = -100.5f;
  absl::StatusOr<GenerateRequest> r = RequestFromProto(p);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("sampling.logit_bias: the bias of token 4"), std::string::npos) << r.status();
  p.mutable_sampling()->mutable_logit_bias()->erase(4);
  (*p.mutable_sampling()->mutable_logit_bias())[-2] = 1.f;
  r = RequestFromProto(p);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange) << "as for an id past the vocabulary's end";
  EXPECT_NE(r.status().message().find("sampling.logit_bias: token -2 is outside"), std::string::npos) << r.status();
}

TEST(ConvertCases, SixteenStopStringsAreTheLimit) {
  v1::GenerateRequest p = Base();
  for (int i = 0; i < 16; ++i) p.mutable_stopping()->add_stop("s" + std::to_string(i));
  absl::StatusOr<GenerateRequest> r = RequestFromProto(p);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stop_strings.size(), 16u);
  p.mutable_stopping()->add_stop("one too many");
  r = RequestFromProto(p);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("stopping.stop"), std::string::npos) << r.status();
}

TEST(ConvertCases, SeedIsCarriedAndMarkedSet) {
  v1::GenerateRequest p = Base();
  absl::StatusOr<GenerateRequest> r = RequestFromProto(p);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->sampling.has_seed);
  p.mutable_sampling()->set_seed(1234);
  r = RequestFromProto(p);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->sampling.has_seed);
  EXPECT_EQ(r->sampling.seed, 1234u);
}

TEST(ConvertCases, SpecialTokenDefaults) {
  v1::GenerateRequest p = Base();
  absl::StatusOr<GenerateRequest> r = RequestFromProto(p);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->skip_special_tokens);
  EXPECT_TRUE(r->add_special_tokens);
  p.set_skip_special_tokens(false);
  r = RequestFromProto(p);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->skip_special_tokens);
}

TEST(ConvertCases, UnknownFieldsInNestedMessagesAreRefused) {
  v1::GenerateRequest p = Base();
  p.mutable_sampling()->set_temperature(0.5f);
  p.mutable_sampling()->GetReflection()->MutableUnknownFields(p.mutable_sampling())->AddVarint(999, 1);
  absl::StatusOr<GenerateRequest> r = RequestFromProto(p);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("sampling: unknown field number 999"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace sbserve
