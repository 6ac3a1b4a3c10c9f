// The proto <-> engine conversions field by field: every GenerateRequest field set to a value that
// differs from its default must reach the engine's request unchanged (a dropped line in the
// converter shows up here, where no server test's timing could tell), unset optionals take their
// documented defaults, and every finish reason and event field maps back.
#include "server/convert.h"

#include <gtest/gtest.h>

namespace sbserve {
namespace {

v1::GenerateRequest FullRequest() {
  v1::GenerateRequest p;
  p.set_request_id("req-7");
  p.mutable_token_ids()->add_ids(5);
  p.mutable_token_ids()->add_ids(17);
  p.mutable_token_ids()->add_ids(3);
  v1::SamplingParams* s = p.mutable_sampling();
  s->set_temperature(0.7f);
  s->set_top_k(12);
  s->set_top_p(0.85f);
  s->set_min_p(0.05f);
  s->set_repetition_penalty(1.2f);
  s->set_presence_penalty(0.3f);
  s->set_frequency_penalty(-0.4f);
  s->set_seed(987654321);
  (*s->mutable_logit_bias())[40] = -100.f;
  (*s->mutable_logit_bias())[7] = 2.5f;
  (*s->mutable_logit_bias())[1000] = 0.f;
  v1::StoppingCriteria* st = p.mutable_stopping();
  st->set_max_tokens(33);
  st->set_min_tokens(4);
  st->add_stop("END");
  st->add_stop("\n\n");
  st->add_stop_token_ids(42);
  st->add_stop_token_ids(43);
  st->set_ignore_eos(true);
  st->set_include_stop_str_in_output(true);
  p.set_logprobs(5);
  p.set_prompt_logprobs(2);
  p.set_priority(-3);
  p.set_skip_special_tokens(false);
  p.set_add_special_tokens(false);
  p.set_skip_prefix_cache(true);
  return p;
}

TEST(Convert, EveryRequestFieldReachesTheEngine) {
  auto r = RequestFromProto(FullRequest());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request_id, "req-7");
  EXPECT_FALSE(r->has_text);
  EXPECT_EQ(r->prompt_ids, (std::vector<int32_t>{5, 17, 3}));
  EXPECT_FLOAT_EQ(r->sampling.temperature, 0.7f);
  EXPECT_EQ(r->sampling.top_k, 12);
  EXPECT_FLOAT_EQ(r->sampling.top_p, 0.85f);
  EXPECT_FLOAT_EQ(r->sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(r->sampling.repetition_penalty, 1.2f);
  EXPECT_FLOAT_EQ(r->sampling.presence_penalty, 0.3f);
  EXPECT_FLOAT_EQ(r->sampling.frequency_penalty, -0.4f);
  EXPECT_TRUE(r->sampling.has_seed);
  EXPECT_EQ(r->sampling.seed, 987654321u);
  // In token order, whatever order the map iterates in.
  EXPECT_EQ(r->sampling.logit_bias, (std::vector<std::pair<int32_t, float>>{{7, 2.5f}, {40, -100.f}, {1000, 0.f}}));
  EXPECT_EQ(r->max_tokens, 33);
  EXPECT_EQ(r->min_tokens, 4);
  EXPECT_EQ(r->stop_strings, (std::vector<std::string>{"END", "\n\n"}));
  EXPECT_EQ(r->stop_token_ids, (std::vector<int32_t>{42, 43}));
  EXPECT_TRUE(r->ignore_eos);
  EXPECT_TRUE(r->include_stop_str_in_output);
  EXPECT_EQ(r->logprobs, 5);
  EXPECT_EQ(r->prompt_logprobs, 2);
  EXPECT_EQ(r->priority, -3);
  EXPECT_FALSE(r->skip_special_tokens);
  EXPECT_FALSE(r->add_special_tokens);
  EXPECT_FALSE(r->cache_prefix);  // skip_prefix_cache
}

TEST(Convert, UnsetFieldsTakeTheDocumentedDefaults) {
  v1::GenerateRequest p;
  p.set_request_id("x");
  p.set_text("hello");
  auto r = RequestFromProto(p);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->has_text);
  EXPECT_EQ(r->text, "hello");
  const SamplingParams d;
  EXPECT_EQ(r->sampling.temperature, d.temperature);
  EXPECT_EQ(r->sampling.top_k, 0);
  EXPECT_EQ(r->sampling.top_p, 1.0f);
  EXPECT_EQ(r->sampling.min_p, 0.0f);
  EXPECT_EQ(r->sampling.repetition_penalty, 1.0f);
  EXPECT_FALSE(r->sampling.has_seed);
  EXPECT_TRUE(r->sampling.logit_bias.empty());
  EXPECT_EQ(r->max_tokens, 0);  // the engine's default, capped by the context
  EXPECT_EQ(r->logprobs, -1);   // none
  EXPECT_EQ(r->prompt_logprobs, -1);
  EXPECT_EQ(r->priority, 0);
  EXPECT_FALSE(r->ignore_eos);
  EXPECT_TRUE(r->skip_special_tokens);
  EXPECT_TRUE(r->add_special_tokens);
  EXPECT_TRUE(r->cache_prefix);
  p.set_skip_prefix_cache(false);
  r = RequestFromProto(p);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->cache_prefix);
  p.clear_skip_prefix_cache();
  // logprobs = 0 is "the sampled token's logprob, no alternatives", not "none".
  p.set_logprobs(0);
  r = RequestFromProto(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->logprobs, 0);
  // An explicit temperature of 0 (greedy) is kept, not mistaken for unset.
  p.mutable_sampling()->set_temperature(0.f);
  r = RequestFromProto(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->sampling.temperature, 0.f);
}

TEST(Convert, MalformedFieldsAreRefusedByName) {
  auto code_and_field = [](v1::GenerateRequest p, absl::StatusCode code, const char* field) {
    auto r = RequestFromProto(p);
    ASSERT_FALSE(r.ok()) << field;
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status();
  };
  v1::GenerateRequest p = FullRequest();
  p.clear_input();
  code_and_field(p, absl::StatusCode::kInvalidArgument, "input");
  p = FullRequest();
  p.mutable_sampling()->set_top_p(0.f);
  code_and_field(p, absl::StatusCode::kInvalidArgument, "sampling.top_p");
  p = FullRequest();
  p.mutable_stopping()->set_max_tokens(0);
  code_and_field(p, absl::StatusCode::kInvalidArgument, "stopping.max_tokens");
  p = FullRequest();
  p.mutable_stopping()->add_stop("");
  code_and_field(p, absl::StatusCode::kInvalidArgument, "stopping.stop");
  p = FullRequest();
  p.set_logprobs(5000);
  code_and_field(p, absl::StatusCode::kOutOfRange, "logprobs");
  p = FullRequest();
  p.set_request_id(std::string(300, 'a'));
  code_and_field(p, absl::StatusCode::kInvalidArgument, "request_id");
  // An unknown field number (a newer client's field) is refused, not silently dropped.
  p = FullRequest();
  p.mutable_sampling()->GetReflection()->MutableUnknownFields(p.mutable_sampling())->AddVarint(99, 1);
  code_and_field(p, absl::StatusCode::kInvalidArgument, "sampling: unknown field number 99");
}

TEST(Convert, FinishReasonsAndEventFieldsMapBack) {
  EXPECT_EQ(FinishReasonToProto(FinishReason::kLength), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kStop), v1::FINISH_REASON_STOP);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kEos), v1::FINISH_REASON_EOS);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kCancelled), v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kDeadline), v1::FINISH_REASON_DEADLINE);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kError), v1::FINISH_REASON_ERROR);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kNone), v1::FINISH_REASON_UNSPECIFIED);

  GenerateEvent e;
  e.token_ids = {7, 8};
  e.text = "ab";
  e.logprobs = {{7, -0.5f, {{7, -0.5f}, {9, -1.5f}}}, {8, -0.25f, {}}};
  v1::GenerateResponse out;
  AppendEvent(e, &out);
  EXPECT_EQ(out.token_ids_size(), 2);
  EXPECT_EQ(out.text(), "ab");
  ASSERT_EQ(out.logprobs_size(), 2);
  EXPECT_EQ(out.logprobs(0).top_size(), 2);
  EXPECT_EQ(out.logprobs(0).top(1).id(), 9);
  EXPECT_FLOAT_EQ(out.logprobs(1).logprob(), -0.25f);
  EXPECT_EQ(out.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);  // not final: no finish fields
  EXPECT_FALSE(out.has_usage());

  e.finished = true;
  e.finish_reason = FinishReason::kStop;
  e.stop_reason = "42";
  e.prompt_tokens = 11;
  e.completion_tokens = 2;
  e.timings.queued = absl::Microseconds(10);
  e.timings.first_token = absl::Microseconds(200);
  e.timings.last_token = absl::Microseconds(900);
  e.timings.preemptions = 3;
  v1::GenerateResponse fin;
  AppendEvent(e, &fin);
  EXPECT_EQ(fin.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(fin.stop_reason(), "42");
  EXPECT_EQ(fin.usage().prompt_tokens(), 11u);
  EXPECT_EQ(fin.usage().completion_tokens(), 2u);
  EXPECT_EQ(fin.timings().queued_us(), 10);
  EXPECT_EQ(fin.timings().first_token_us(), 200);
  EXPECT_EQ(fin.timings().last_token_us(), 900);
  EXPECT_EQ(fin.timings().preemptions(), 3u);
}

}  // namespace
}  // namespace sbserve
