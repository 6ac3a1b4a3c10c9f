#include "server/convert.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sbserve {
namespace {

constexpr int kMaxStopStrings = 16;
constexpr size_t kMaxStopStringBytes = 256;
constexpr size_t kMaxRequestIdBytes = 256;

}  // namespace

absl::Status CheckNoUnknownFields(const google::protobuf::Message& message, const std::string& path) {
  const google::protobuf::Reflection* r = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = r->GetUnknownFields(message);
  if (unknown.field_count() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(path.empty() ? "request" : path, ": unknown field number ",
                                                   unknown.field(0).number(), " (not part of sbserve.v1)"));
  }
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(message, &fields);
  for (const auto* f : fields) {
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const std::string sub = path.empty() ? f->name() : absl::StrCat(path, ".", f->name());
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(message, f); ++i) {
        if (absl::Status s = CheckNoUnknownFields(r->GetRepeatedMessage(message, f, i), sub); !s.ok()) return s;
      }
    } else if (absl::Status s = CheckNoUnknownFields(r->GetMessage(message, f), sub); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateRequest> RequestFromProto(const v1::GenerateRequest& p) {
  if (absl::Status s = CheckNoUnknownFields(p); !s.ok()) return s;
  GenerateRequest r;
  if (p.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("request_id: longer than ", kMaxRequestIdBytes, " bytes"));
  }
  r.request_id = p.request_id();
  switch (p.input_case()) {
    case v1::GenerateRequest::kText:
      r.has_text = true;
      r.text = p.text();
      break;
    case v1::GenerateRequest::kTokenIds:
      r.prompt_ids.assign(p.token_ids().ids().begin(), p.token_ids().ids().end());
      break;
    default:
      return absl::InvalidArgumentError("input: set either text or token_ids");
  }
  const v1::SamplingParams& s = p.sampling();
  if (s.has_temperature()) r.sampling.temperature = s.temperature();
  if (s.has_top_k()) r.sampling.top_k = s.top_k();
  if (s.has_top_p()) r.sampling.top_p = s.top_p();
  if (s.has_min_p()) r.sampling.min_p = s.min_p();
  if (s.has_repetition_penalty()) r.sampling.repetition_penalty = s.repetition_penalty();
  if (s.has_presence_penalty()) r.sampling.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) r.sampling.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) {
    r.sampling.seed = s.seed();
    r.sampling.has_seed = true;
  }
  r.sampling.logit_bias.assign(s.logit_bias().begin(), s.logit_bias().end());
  std::sort(r.sampling.logit_bias.begin(), r.sampling.logit_bias.end());  // a map's order is unspecified
  if (absl::Status st = r.sampling.Validate(); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("sampling.", st.message()));
  }
  const v1::StoppingCriteria& st = p.stopping();
  constexpr uint32_t kMaxInt = std::numeric_limits<int32_t>::max();
  if (st.has_max_tokens()) {
    if (st.max_tokens() == 0) return absl::InvalidArgumentError("stopping.max_tokens: must be >= 1 when set");
    if (st.max_tokens() > kMaxInt) return absl::OutOfRangeError("stopping.max_tokens: too large");
    r.max_tokens = static_cast<int32_t>(st.max_tokens());
  }
  if (st.min_tokens() > kMaxInt) return absl::OutOfRangeError("stopping.min_tokens: too large");
  r.min_tokens = static_cast<int32_t>(st.min_tokens());
  if (st.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.stop: at most ", kMaxStopStrings, " stop strings"));
  }
  for (const auto& stop : st.stop()) {
    if (stop.empty()) return absl::InvalidArgumentError("stopping.stop: stop strings must not be empty");
    if (stop.size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stopping.stop: a stop string is longer than ", kMaxStopStringBytes, " bytes"));
    }
    r.stop_strings.push_back(stop);
  }
  r.stop_token_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  r.ignore_eos = st.ignore_eos();
  r.include_stop_str_in_output = st.include_stop_str_in_output();
  if (p.has_logprobs()) {
    if (p.logprobs() > 1024) return absl::OutOfRangeError("logprobs: too large");
    r.logprobs = static_cast<int32_t>(p.logprobs());
  }
  if (p.has_prompt_logprobs()) {
    if (p.prompt_logprobs() > 1024) return absl::OutOfRangeError("prompt_logprobs: too large");
    r.prompt_logprobs = static_cast<int32_t>(p.prompt_logprobs());
  }
  r.priority = p.priority();
  r.skip_special_tokens = p.has_skip_special_tokens() ? p.skip_special_tokens() : true;
  r.add_special_tokens = p.has_add_special_tokens() ? p.add_special_tokens() : true;
  r.cache_prefix = !(p.has_skip_prefix_cache() && p.skip_prefix_cache());
  return r;
}

v1::FinishReason FinishReasonToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kEos: return v1::FINISH_REASON_EOS;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kDeadline: return v1::FINISH_REASON_DEADLINE;
    case FinishReason::kError: return v1::FINISH_REASON_ERROR;
    case FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void AppendEvent(const GenerateEvent& e, v1::GenerateResponse* out) {
  for (int32_t id : e.token_ids) out->add_token_ids(id);
  out->mutable_text()->append(e.text);
  auto add = [](const StepLogprobs& lp, v1::Logprobs* l) {
    l->set_token_id(lp.token_id);
    l->set_logprob(lp.logprob);
    for (const TokenLogprob& t : lp.top) {
      v1::TokenLogprob* x = l->add_top();
      x->set_id(t.id);
      x->set_logprob(t.logprob);
    }
  };
  for (const StepLogprobs& lp : e.logprobs) add(lp, out->add_logprobs());
  for (const StepLogprobs& lp : e.prompt_logprobs) add(lp, out->add_prompt_logprobs());
  if (!e.finished) return;
  out->set_finish_reason(FinishReasonToProto(e.finish_reason));
  out->set_stop_reason(e.stop_reason);
  out->mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(e.prompt_tokens));
  out->mutable_usage()->set_completion_tokens(static_cast<uint32_t>(e.completion_tokens));
  v1::Timings* t = out->mutable_timings();
  t->set_queued_us(absl::ToInt64Microseconds(e.timings.queued));
  t->set_first_token_us(absl::ToInt64Microseconds(e.timings.first_token));
  t->set_last_token_us(absl::ToInt64Microseconds(e.timings.last_token));
  t->set_preemptions(static_cast<uint32_t>(e.timings.preemptions));
}

}  // namespace sbserve
