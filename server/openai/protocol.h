// The OpenAI wire format: request bodies of /v1/completions and /v1/chat/completions turned into
// sbserve.v1.GenerateRequest messages (so that server/convert.cc's RequestFromProto validates
// them exactly as it validates gRPC requests), statuses turned into OpenAI error objects, and the
// response, chunk and logprobs shapes built from engine events.
//
// Field rules (documented in README "OpenAI HTTP API"):
//   - unknown fields are ignored (OpenAI SDKs send fields a server may not know);
//   - known fields whose meaning sbserve cannot honour are refused with 400 naming them
//     (tools, suffix, best_of other than n, response_format other than text);
//   - vLLM's extension fields top_k (-1 or 0: off), min_p, repetition_penalty, min_tokens,
//     ignore_eos, stop_token_ids, skip_special_tokens, include_stop_str_in_output, priority,
//     add_generation_prompt and chat_template_kwargs are accepted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/request.h"
#include "nlohmann/json.hpp"
#include "sbserve/v1/sbserve.pb.h"

namespace sbserve {
class ChatTemplate;
class TextCodec;
}  // namespace sbserve

namespace sbserve::openai {

enum class Api { kCompletions, kChat };

// One request body, parsed. `prompts` holds one GenerateRequest per prompt (completions accept a
// list of prompts); each is run `n` times, so choice index = prompt_index * n + j.
struct ParsedRequest {
  Api api = Api::kCompletions;
  std::string model;  // empty: the served model
  std::vector<v1::GenerateRequest> prompts;
  std::vector<std::string> echo_texts;  // per prompt, with echo (token-id prompts: filled once decoded)
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;
  // Completions: `logprobs` (top-n, 0..max); chat: `top_logprobs` when `logprobs` is true. -1: off.
  int logprobs = -1;
  bool skip_special_tokens = true;  // special tokens are left out of the text (and of text_offset)
  bool max_completion_tokens = false;  // chat: the limit came as max_completion_tokens (errors name it)
  std::string user;
};

// JSON-level checks (types, the fields sbserve refuses) and the request conversion; validation
// of values is RequestFromProto's. Statuses are INVALID_ARGUMENT "field: why" in OpenAI's names.
absl::StatusOr<ParsedRequest> ParseCompletionRequest(const nlohmann::json& body);
// `chat_template` null: the model has none; then INVALID_ARGUMENT naming `messages` and
// `template_error` (why it has none).
absl::StatusOr<ParsedRequest> ParseChatRequest(const nlohmann::json& body, const ChatTemplate* chat_template,
                                               const std::string& template_error);

// The per-choice GenerateRequest: prompt `p` of `req`, choice j. A set seed becomes seed + j.
v1::GenerateRequest ChoiceRequest(const ParsedRequest& req, size_t p, int j);

// Rewrites the field path a validation message starts with ("sampling.temperature: ...",
// "stopping.max_tokens: ...") into the OpenAI field name ("temperature: ...").
absl::Status ToOpenAiNames(const absl::Status& s, Api api, bool max_completion_tokens = false);

// OpenAI's error object and the HTTP status for an absl::Status.
struct HttpError {
  int http_status = 500;
  nlohmann::json body;  // {"error": {"message", "type", "param", "code"}}
  int64_t retry_after_ms = -1;  // RESOURCE_EXHAUSTED with the engine's payload
};
HttpError ErrorFor(const absl::Status& s);
HttpError MakeError(int http_status, const std::string& type, const std::string& message,
                    const std::string& param = "", const std::string& code = "");

// "length" / "stop" (eos is "stop"); other reasons end with an error status instead.
const char* FinishReasonString(FinishReason r);

// Logprobs of `lps` in the completions shape {tokens, token_logprobs, top_logprobs, text_offset}.
// Every sampled token is listed with its own text: its piece inside a text
// (TextCodec::TokenBytes), a part of a UTF-8 character shown as U+FFFD. `text_offset` is where the
// first token's text starts in the choice's text, and `text` is that text as far as it is known,
// from offset `base` on (the whole text, or what was streamed so far). Each offset is a byte
// position in the choice's text: a token advances it by what it adds there, read off `text` (its
// piece; its text alone where a text's start took part of the piece; nothing for a special token
// the text does not hold), or by its piece where the text is not known yet. `end`, when set,
// receives the offset after the last token (where the next one's text starts).
nlohmann::json CompletionLogprobs(const std::vector<StepLogprobs>& lps, const TextCodec& codec, int top_n,
                                  std::string_view text, size_t base, size_t text_offset, bool skip_special,
                                  size_t* end = nullptr);
// The same shape for an echoed prompt (echo with logprobs): every prompt token, the first with null
// logprobs (nothing comes before it), the others with `prompt_lps` (the request's prompt_logprobs,
// tokens 1 ..), offsets from 0 in `echo_text`.
nlohmann::json EchoLogprobs(const std::vector<int32_t>& prompt_ids, const std::vector<StepLogprobs>& prompt_lps,
                            const TextCodec& codec, int top_n, std::string_view echo_text, bool skip_special);
// Appends the entries of `more` to `into` (both in the completions shape).
void AppendLogprobs(nlohmann::json* into, const nlohmann::json& more);
// Logprobs in the chat shape: the `content` array [{token, logprob, bytes, top_logprobs}]; `bytes`
// are the token's own bytes (its piece inside a text), a part of a UTF-8 character included, so that
// the bytes of the tokens of one character join into it.
nlohmann::json ChatLogprobsContent(const std::vector<StepLogprobs>& lps, const TextCodec& codec, int top_n);

// Serializes with invalid UTF-8 replaced (a token's text may be a partial UTF-8 sequence).
std::string Dump(const nlohmann::json& j);

}  // namespace sbserve::openai
