#include "server/openai/protocol.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/engine.h"
#include "engine/tokenizer/utf8.h"
#include "server/openai/chat_template.h"

namespace sbserve::openai {
namespace {

using nlohmann::json;

constexpr int kMaxN = 128;
constexpr size_t kMaxPrompts = 256;

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// Present and not null.
const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status GetNumber(const json& body, const char* name, const json** out) {
  *out = Field(body, name);
  if (*out != nullptr && !(*out)->is_number()) return Bad(name, "must be a number");
  return absl::OkStatus();
}

absl::Status GetInt(const json& body, const char* name, const json** out) {
  *out = Field(body, name);
  if (*out == nullptr) return absl::OkStatus();
  if ((*out)->is_number_float()) {
    const double d = (*out)->get<double>();
    if (std::floor(d) != d) return Bad(name, "must be an integer");
  } else if (!(*out)->is_number_integer()) {
    return Bad(name, "must be an integer");
  }
  return absl::OkStatus();
}

int64_t AsInt(const json& j) {
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    return u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                           : static_cast<int64_t>(u);
  }
  if (j.is_number_integer()) return j.get<int64_t>();
  const double d = j.get<double>();
  if (d >= 9.2e18) return std::numeric_limits<int64_t>::max();
  if (d <= -9.2e18) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(d);
}

absl::Status GetBool(const json& body, const char* name, bool* out) {
  const json* f = Field(body, name);
  if (f == nullptr) return absl::OkStatus();
  if (!f->is_boolean()) return Bad(name, "must be true or false");
  *out = f->get<bool>();
  return absl::OkStatus();
}

// Clamps to the uint32 proto field; a negative value becomes 0, which the proto rules refuse
// where 0 is not allowed.
uint32_t ToU32(int64_t v) {
  if (v < 0) return 0;
  if (v > std::numeric_limits<uint32_t>::max()) return std::numeric_limits<uint32_t>::max();
  return static_cast<uint32_t>(v);
}

// The fields both APIs share: sampling, stopping, n, stream and the extensions.
absl::Status ParseCommon(const json& body, ParsedRequest* out, v1::GenerateRequest* proto) {
  // Structured output (vLLM takes response_format on completions too) is not something this server
  // does: refused rather than ignored, on both endpoints.
  if (const json* rf = Field(body, "response_format"); rf != nullptr) {
    const json* type = rf->is_object() ? Field(*rf, "type") : nullptr;
    if (type == nullptr || *type != "text") return Bad("response_format", "only {\"type\": \"text\"} is supported");
  }
  if (const json* m = Field(body, "model"); m != nullptr) {
    if (!m->is_string()) return Bad("model", "must be a string");
    out->model = m->get<std::string>();
  }
  if (const json* u = Field(body, "user"); u != nullptr) {
    if (!u->is_string()) return Bad("user", "must be a string");
    out->user = u->get<std::string>();
  }
  const json* f = nullptr;
  if (absl::Status s = GetInt(body, "n", &f); !s.ok()) return s;
  if (f != nullptr) {
    const int64_t n = AsInt(*f);
    if (n < 1 || n > kMaxN) return Bad("n", absl::StrCat("must be in [1, ", kMaxN, "]"));
    out->n = static_cast<int>(n);
  }
  if (absl::Status s = GetInt(body, "best_of", &f); !s.ok()) return s;
  if (f != nullptr && AsInt(*f) != out->n && AsInt(*f) != 1) return Bad("best_of", "only best_of = n is supported");
  if (absl::Status s = GetBool(body, "stream", &out->stream); !s.ok()) return s;
  if (const json* so = Field(body, "stream_options"); so != nullptr && out->stream) {
    if (!so->is_object()) return Bad("stream_options", "must be an object");
    if (const json* iu = Field(*so, "include_usage"); iu != nullptr) {
      if (!iu->is_boolean()) return Bad("stream_options.include_usage", "must be true or false");
      out->include_usage = iu->get<bool>();
    }
  }
  v1::SamplingParams* sp = proto->mutable_sampling();
  if (const json* lb = Field(body, "logit_bias"); lb != nullptr) {
    // {"<token id>": bias}: keys are token ids in decimal, as OpenAI's clients send them.
    if (!lb->is_object()) return Bad("logit_bias", "must be an object mapping token ids to biases");
    if (lb->size() > static_cast<size_t>(kMaxLogitBias)) {
      return Bad("logit_bias", absl::StrCat("at most ", kMaxLogitBias, " tokens"));
    }
    for (const auto& [key, value] : lb->items()) {
      int32_t id = 0;
      const bool digits = !key.empty() && key.size() <= 10 &&
                          std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (!digits || !absl::SimpleAtoi(key, &id)) {
        return Bad("logit_bias", absl::StrCat("keys must be token ids, got \"", key.substr(0, 32), "\""));
      }
      if (!value.is_number()) return Bad("logit_bias", absl::StrCat("the bias of token ", id, " must be a number"));
      if (!sp->mutable_logit_bias()->try_emplace(id, static_cast<float>(value.get<double>())).second) {
        return Bad("logit_bias", absl::StrCat("token ", id, " is listed twice"));
      }
    }
  }
  struct FloatField {
    const char* name;
    void (v1::SamplingParams::*set)(float);
  };
  for (const FloatField& ff : {FloatField{"temperature", &v1::SamplingParams::set_temperature},
                               FloatField{"top_p", &v1::SamplingParams::set_top_p},
                               FloatField{"min_p", &v1::SamplingParams::set_min_p},
                               FloatField{"repetition_penalty", &v1::SamplingParams::set_repetition_penalty},
                               FloatField{"presence_penalty", &v1::SamplingParams::set_presence_penalty},
                               FloatField{"frequency_penalty", &v1::SamplingParams::set_frequency_penalty}}) {
    if (absl::Status s = GetNumber(body, ff.name, &f); !s.ok()) return s;
    if (f != nullptr) (sp->*ff.set)(static_cast<float>(f->get<double>()));
  }
  if (absl::Status s = GetInt(body, "top_k", &f); !s.ok()) return s;
  if (f != nullptr) {
    // vLLM's -1 means off, as 0 does here.
    const int64_t k = AsInt(*f);
    sp->set_top_k(k == -1 ? 0 : static_cast<int32_t>(std::clamp<int64_t>(k, -2, std::numeric_limits<int32_t>::max())));
  }
  if (absl::Status s = GetInt(body, "seed", &f); !s.ok()) return s;
  // A negative seed is taken as its 64-bit two's complement.
  if (f != nullptr) sp->set_seed(f->is_number_unsigned() ? f->get<uint64_t>() : static_cast<uint64_t>(AsInt(*f)));

  v1::StoppingCriteria* st = proto->mutable_stopping();
  const json* max_tokens = nullptr;
  if (out->api == Api::kChat) {
    if (absl::Status s = GetInt(body, "max_completion_tokens", &max_tokens); !s.ok()) return s;
    out->max_completion_tokens = max_tokens != nullptr;
  }
  if (max_tokens == nullptr) {
    if (absl::Status s = GetInt(body, "max_tokens", &max_tokens); !s.ok()) return s;
  }
  if (max_tokens != nullptr) st->set_max_tokens(ToU32(AsInt(*max_tokens)));
  if (absl::Status s = GetInt(body, "min_tokens", &f); !s.ok()) return s;
  if (f != nullptr) {
    if (AsInt(*f) < 0) return Bad("min_tokens", "must be >= 0");
    st->set_min_tokens(ToU32(AsInt(*f)));
  }
  if (const json* stop = Field(body, "stop"); stop != nullptr) {
    // An empty stop string stops nothing: OpenAI ignores it, and so does this door.
    if (stop->is_string()) {
      if (!stop->get_ref<const std::string&>().empty()) st->add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) return Bad("stop", "must be a string or a list of strings");
        if (!s.get_ref<const std::string&>().empty()) st->add_stop(s.get<std::string>());
      }
    } else {
      return Bad("stop", "must be a string or a list of strings");
    }
  }
  if (const json* ids = Field(body, "stop_token_ids"); ids != nullptr) {
    if (!ids->is_array()) return Bad("stop_token_ids", "must be a list of token ids");
    for (const json& id : *ids) {
      if (!id.is_number_integer()) return Bad("stop_token_ids", "must be a list of token ids");
      const int64_t v = AsInt(id);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return Bad("stop_token_ids", absl::StrCat(v, " is not a token id"));
      }
      st->add_stop_token_ids(static_cast<int32_t>(v));
    }
  }
  bool b = false;
  if (absl::Status s = GetBool(body, "ignore_eos", &b); !s.ok()) return s;
  st->set_ignore_eos(b);
  b = false;
  if (absl::Status s = GetBool(body, "include_stop_str_in_output", &b); !s.ok()) return s;
  st->set_include_stop_str_in_output(b);
  if (Field(body, "skip_special_tokens") != nullptr) {
    b = true;
    if (absl::Status s = GetBool(body, "skip_special_tokens", &b); !s.ok()) return s;
    proto->set_skip_special_tokens(b);
    out->skip_special_tokens = b;
  }
  if (absl::Status s = GetInt(body, "priority", &f); !s.ok()) return s;
  if (f != nullptr) {
    const int64_t p = AsInt(*f);
    if (p < std::numeric_limits<int32_t>::min() || p > std::numeric_limits<int32_t>::max()) {
      return Bad("priority", "out of range");
    }
    proto->set_priority(static_cast<int32_t>(p));
  }
  return absl::OkStatus();
}

// A completions prompt: a string, a list of token ids, or a list of either.
absl::Status ParsePrompts(const json& body, ParsedRequest* out, const v1::GenerateRequest& base) {
  const json* p = Field(body, "prompt");
  if (p == nullptr) return Bad("prompt", "required");
  auto add_text = [&](const std::string& text) {
    v1::GenerateRequest r = base;
    r.set_text(text);
    out->prompts.push_back(std::move(r));
    out->echo_texts.push_back(text);
  };
  auto add_ids = [&](const json& ids) -> absl::Status {
    v1::GenerateRequest r = base;
    auto* t = r.mutable_token_ids();
    for (const json& id : ids) {
      if (!id.is_number_integer()) return Bad("prompt", "a token-id prompt must hold integers");
      const int64_t v = AsInt(id);
      // Out-of-vocabulary ids are the engine's to refuse; only the int32 range is checked here.
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return Bad("prompt", absl::StrCat(v, " is not a token id"));
      }
      t->add_ids(static_cast<int32_t>(v));
    }
    out->prompts.push_back(std::move(r));
    out->echo_texts.emplace_back();
    return absl::OkStatus();
  };
  if (p->is_string()) {
    add_text(p->get<std::string>());
    return absl::OkStatus();
  }
  if (!p->is_array() || p->empty()) return Bad("prompt", "must be a string, a list of token ids, or a non-empty list of either");
  if ((*p)[0].is_number()) return add_ids(*p);
  if (p->size() > kMaxPrompts) return Bad("prompt", absl::StrCat("at most ", kMaxPrompts, " prompts per request"));
  for (const json& one : *p) {
    if (one.is_string()) {
      add_text(one.get<std::string>());
    } else if (one.is_array()) {
      if (absl::Status s = add_ids(one); !s.ok()) return s;
    } else {
      return Bad("prompt", "must be a string, a list of token ids, or a list of either");
    }
  }
  return absl::OkStatus();
}

// A token as logprobs list it: its piece inside the text, with a part of a UTF-8 character shown as
// U+FFFD (chat's `bytes` carries the piece's own bytes).
std::string TokenText(const TextCodec& codec, int32_t id) {
  return tokenizer_internal::Utf8Lossy(codec.TokenBytes(id, false));
}

json TokenBytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

absl::StatusOr<ParsedRequest> ParseCompletionRequest(const json& body) {
  if (!body.is_object()) return Bad("body", "must be a JSON object");
  ParsedRequest out;
  out.api = Api::kCompletions;
  v1::GenerateRequest base;
  if (absl::Status s = ParseCommon(body, &out, &base); !s.ok()) return s;
  if (const json* sfx = Field(body, "suffix"); sfx != nullptr && !(sfx->is_string() && sfx->get<std::string>().empty())) {
    return Bad("suffix", "not supported");
  }
  if (absl::Status s = GetBool(body, "echo", &out.echo); !s.ok()) return s;
  const json* f = nullptr;
  if (absl::Status s = GetInt(body, "logprobs", &f); !s.ok()) return s;
  if (f != nullptr) {
    const int64_t lp = AsInt(*f);
    if (lp < 0) return Bad("logprobs", "must be >= 0");
    // Values above the server's limit are the engine's to refuse, with the limit in the message.
    out.logprobs = static_cast<int>(std::min<int64_t>(lp, 1 << 20));
    base.set_logprobs(static_cast<uint32_t>(out.logprobs));
  }
  // echo with logprobs scores the prompt too: every prompt token after the first gets its logprob.
  if (out.echo && out.logprobs >= 0) base.set_prompt_logprobs(static_cast<uint32_t>(out.logprobs));
  if (absl::Status s = ParsePrompts(body, &out, base); !s.ok()) return s;
  return out;
}

absl::StatusOr<ParsedRequest> ParseChatRequest(const json& body, const ChatTemplate* chat_template,
                                               const std::string& template_error) {
  if (!body.is_object()) return Bad("body", "must be a JSON object");
  ParsedRequest out;
  out.api = Api::kChat;
  v1::GenerateRequest base;
  if (absl::Status s = ParseCommon(body, &out, &base); !s.ok()) return s;
  if (const json* tools = Field(body, "tools"); tools != nullptr && !(tools->is_array() && tools->empty())) {
    return Bad("tools", "tool calls are not supported");
  }
  bool want_logprobs = false;
  if (absl::Status s = GetBool(body, "logprobs", &want_logprobs); !s.ok()) return s;
  const json* top = nullptr;
  if (absl::Status s = GetInt(body, "top_logprobs", &top); !s.ok()) return s;
  if (top != nullptr && !want_logprobs) return Bad("top_logprobs", "needs logprobs: true");
  if (want_logprobs) {
    const int64_t n = top != nullptr ? AsInt(*top) : 0;
    if (n < 0) return Bad("top_logprobs", "must be >= 0");
    out.logprobs = static_cast<int>(std::min<int64_t>(n, 1 << 20));
    base.set_logprobs(static_cast<uint32_t>(out.logprobs));
  }
  const json* messages = Field(body, "messages");
  if (messages == nullptr || !messages->is_array() || messages->empty()) {
    return Bad("messages", "must be a non-empty list of messages");
  }
  // What the template sees: every content a string, as vLLM gives templates by default. A list of
  // text parts becomes their texts joined by newlines, a missing or null content the empty string
  // (an assistant turn that only called tools), so that templates written for strings render them.
  json rendered = json::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string at = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return Bad(at, "must be an object");
    const json* role = Field(m, "role");
    if (role == nullptr || !role->is_string()) return Bad(absl::StrCat(at, ".role"), "must be a string");
    const json* content = Field(m, "content");
    if (content != nullptr && !content->is_string() && !content->is_array()) {
      return Bad(absl::StrCat(at, ".content"), "must be a string or a list of content parts");
    }
    json& out_m = rendered.emplace_back(m);
    if (content == nullptr) {
      out_m["content"] = "";
    } else if (content->is_array()) {
      std::string text;
      for (size_t k = 0; k < content->size(); ++k) {
        const json& part = (*content)[k];
        const json* type = part.is_object() ? Field(part, "type") : nullptr;
        if (type == nullptr || *type != "text") {
          return Bad(absl::StrCat(at, ".content"), "only text content parts are supported");
        }
        const json* t = Field(part, "text");
        if (t == nullptr || !t->is_string()) return Bad(absl::StrCat(at, ".content[", k, "].text"), "must be a string");
        if (k > 0) text.push_back('\n');
        text += t->get<std::string>();
      }
      out_m["content"] = std::move(text);
    }
  }
  bool add_generation_prompt = true;
  if (absl::Status s = GetBool(body, "add_generation_prompt", &add_generation_prompt); !s.ok()) return s;
  json extra = json::object();
  if (const json* kw = Field(body, "chat_template_kwargs"); kw != nullptr) {
    if (!kw->is_object()) return Bad("chat_template_kwargs", "must be an object");
    extra = *kw;
  }
  if (chat_template == nullptr) {
    return Bad("messages", absl::StrCat("this model has no chat template (", template_error,
                                        "); start sbserve with --chat-template FILE, or use /v1/completions"));
  }
  absl::StatusOr<std::string> prompt = chat_template->Apply(rendered, add_generation_prompt, extra);
  if (!prompt.ok()) return Bad("messages", absl::StrCat("chat template: ", prompt.status().message()));
  // The template writes the special tokens itself (bos and the turn markers).
  base.set_add_special_tokens(false);
  base.set_text(*std::move(prompt));
  out.prompts.push_back(std::move(base));
  out.echo_texts.emplace_back();
  return out;
}

v1::GenerateRequest ChoiceRequest(const ParsedRequest& req, size_t p, int j) {
  v1::GenerateRequest r = req.prompts[p];
  if (r.sampling().has_seed() && j > 0) r.mutable_sampling()->set_seed(r.sampling().seed() + static_cast<uint64_t>(j));
  return r;
}

absl::Status ToOpenAiNames(const absl::Status& s, Api api, bool max_completion_tokens) {
  if (s.ok()) return s;
  // The gRPC field paths, wherever they appear, in the names the client sent.
  std::string msg = absl::StrReplaceAll(
      s.message(), {{"stopping.max_tokens", max_completion_tokens ? "max_completion_tokens" : "max_tokens"},
                    {"stopping.", ""},
                    {"sampling.", ""}});
  struct Rename {
    const char* from;
    const char* to;
  };
  const bool chat = api == Api::kChat;
  const Rename renames[] = {
      {"logprobs:", chat ? "top_logprobs:" : "logprobs:"},
      {"text:", chat ? "messages:" : "prompt:"},
      {"token_ids:", "prompt:"},
      {"input:", chat ? "messages:" : "prompt:"},
  };
  for (const Rename& r : renames) {
    if (absl::StartsWith(msg, r.from)) {
      msg = absl::StrCat(r.to, msg.substr(std::string(r.from).size()));
      break;
    }
  }
  absl::Status out(s.code(), msg);
  s.ForEachPayload([&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

HttpError MakeError(int http_status, const std::string& type, const std::string& message, const std::string& param,
                    const std::string& code) {
  HttpError e;
  e.http_status = http_status;
  e.body = {{"error",
             {{"message", message},
              {"type", type},
              {"param", param.empty() ? json(nullptr) : json(param)},
              {"code", code.empty() ? json(nullptr) : json(code)}}}};
  return e;
}

HttpError ErrorFor(const absl::Status& s) {
  const std::string msg(s.message());
  // Validation messages start with the field they are about.
  std::string param;
  if (const size_t colon = msg.find(':'); colon != std::string::npos && colon < 64 &&
                                          msg.find(' ') > colon) {
    param = msg.substr(0, colon);
  }
  HttpError e;
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      e = MakeError(400, "invalid_request_error", msg, param);
      break;
    case absl::StatusCode::kUnauthenticated:
      e = MakeError(401, "authentication_error", msg, "", "invalid_api_key");
      break;
    case absl::StatusCode::kPermissionDenied:
      e = MakeError(403, "permission_error", msg);
      break;
    case absl::StatusCode::kNotFound:
      e = MakeError(404, "not_found_error", msg, param, "model_not_found");
      break;
    case absl::StatusCode::kAlreadyExists:
      e = MakeError(409, "invalid_request_error", msg, param);
      break;
    case absl::StatusCode::kResourceExhausted:
      e = MakeError(429, "rate_limit_error", msg);
      if (auto ms = s.GetPayload(kRetryAfterPayloadUrl); ms.has_value()) {
        int64_t v = 0;
        if (absl::SimpleAtoi(std::string(*ms), &v)) e.retry_after_ms = v;
      }
      break;
    case absl::StatusCode::kUnavailable:
      e = MakeError(503, "service_unavailable", msg);
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e = MakeError(504, "timeout_error", msg);
      break;
    case absl::StatusCode::kCancelled:
      // nginx's "client closed request"; nobody reads it, the log line does.
      e = MakeError(499, "cancelled", msg);
      break;
    default:
      e = MakeError(500, "server_error", msg);
      break;
  }
  return e;
}

const char* FinishReasonString(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStop:
    case FinishReason::kEos: return "stop";
    default: return nullptr;
  }
}

json CompletionLogprobs(const std::vector<StepLogprobs>& lps, const TextCodec& codec, int top_n, std::string_view text,
                        size_t base, size_t text_offset, bool skip_special, size_t* end) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
  size_t at = text_offset;
  // Whether `s` is the choice's text at `at` (as far as the text is known).
  auto here = [&](std::string_view s) {
    const size_t rel = at - base;
    return !s.empty() && at >= base && rel + s.size() <= text.size() && text.compare(rel, s.size(), s) == 0;
  };
  for (const StepLogprobs& lp : lps) {
    const std::string shown = TokenText(codec, lp.token_id);
    tokens.push_back(shown);
    token_logprobs.push_back(lp.logprob);
    offsets.push_back(at);
    // What the token adds to the text, read off the text where it is known: its piece; or its text
    // alone, where the decoder's rules for a text's start took a part of the piece (a SentencePiece
    // token's space at the start of a text or of an output that could not continue its prompt's);
    // nothing for a special token the text does not hold (skipped, or added by the tokenizer, as a
    // BOS is to an echoed prompt). Where the text is not known yet (held back), its piece.
    const std::string piece = codec.TokenBytes(lp.token_id, false);
    if (at < base || at - base >= text.size()) {
      at += codec.TokenBytes(lp.token_id, skip_special).size();
    } else if (here(piece)) {
      at += piece.size();
    } else if (const std::string alone = codec.Decode({lp.token_id}, skip_special); here(alone)) {
      at += alone.size();
    } else if (!codec.TokenBytes(lp.token_id, true).empty()) {
      at += piece.size();
    }
    // OpenAI: the top `logprobs` alternatives plus the sampled token, so up to logprobs + 1.
    json alts = json::object();
    for (int i = 0; i < top_n && i < static_cast<int>(lp.top.size()); ++i) {
      alts[TokenText(codec, lp.top[i].id)] = lp.top[i].logprob;
    }
    if (!alts.contains(shown)) alts[shown] = lp.logprob;
    top.push_back(std::move(alts));
  }
  if (end != nullptr) *end = at;
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

json EchoLogprobs(const std::vector<int32_t>& prompt_ids, const std::vector<StepLogprobs>& prompt_lps,
                  const TextCodec& codec, int top_n, std::string_view echo_text, bool skip_special) {
  if (prompt_ids.empty()) return CompletionLogprobs({}, codec, top_n, echo_text, 0, 0, skip_special);
  // The first token goes through the same rule for its text and offsets, then loses its logprobs:
  // nothing comes before it (OpenAI: null).
  std::vector<StepLogprobs> all;
  all.reserve(prompt_lps.size() + 1);
  all.push_back(StepLogprobs{prompt_ids[0], 0.f, {}});
  all.insert(all.end(), prompt_lps.begin(), prompt_lps.end());
  json out = CompletionLogprobs(all, codec, top_n, echo_text, 0, 0, skip_special);
  out["token_logprobs"][0] = nullptr;
  out["top_logprobs"][0] = nullptr;
  return out;
}

void AppendLogprobs(json* into, const json& more) {
  for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
    for (const json& v : more[k]) (*into)[k].push_back(v);
  }
}

json ChatLogprobsContent(const std::vector<StepLogprobs>& lps, const TextCodec& codec, int top_n) {
  json content = json::array();
  for (const StepLogprobs& lp : lps) {
    json alts = json::array();
    for (int i = 0; i < top_n && i < static_cast<int>(lp.top.size()); ++i) {
      const std::string bytes = codec.TokenBytes(lp.top[i].id, false);
      alts.push_back({{"token", tokenizer_internal::Utf8Lossy(bytes)}, {"logprob", lp.top[i].logprob}, {"bytes", TokenBytes(bytes)}});
    }
    const std::string bytes = codec.TokenBytes(lp.token_id, false);
    content.push_back({{"token", tokenizer_internal::Utf8Lossy(bytes)},
                       {"logprob", lp.logprob},
                       {"bytes", TokenBytes(bytes)},
                       {"top_logprobs", alts}});
  }
  return content;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace sbserve::openai
