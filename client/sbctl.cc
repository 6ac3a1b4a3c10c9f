// sbctl: command-line client of sbserve.
//
//   sbctl [--addr HOST:PORT] [--timeout DURATION] [--api-key KEY] [--tls-ca FILE | --tls]
//         [--tls-cert FILE --tls-key FILE] COMMAND [ARGS]
//     generate "prompt" [sampling and stopping flags] [--json] [--unary]
//     health [--service NAME]
//     info
//     tokenize "text" [--no-special]
//     abort ID...
//     bench [--concurrency C | --request-rate R] [--requests N] [--duration D] [--prompt-tokens N|LO:HI]
//           [--max-tokens N|LO:HI] [--input FILE.jsonl] [--shared-prefixes N --prefix-tokens P]
//           [--slo-ttft MS] [--slo-itl MS] [--json [FILE]] [--plot FILE.svg] ...
// The address also comes from SBSERVE_ADDR (default localhost:50051), the key from SBSERVE_API_KEY.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_interceptor.h>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <sstream>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/bench.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sbserve/v1/sbserve.grpc.pb.h"

namespace {

using sbserve::v1::SbServe;

constexpr char kUsage[] = R"(usage: sbctl [--addr HOST:PORT] [--timeout DURATION] COMMAND [ARGS]

commands:
  generate PROMPT      stream a completion to the terminal
      --ids 1,2,3            send token ids instead of PROMPT text
      --max-tokens N --min-tokens N --temperature T --top-k K --top-p P --min-p P
      --repetition-penalty R --presence-penalty P --frequency-penalty F --seed S
      --logit-bias ID:BIAS (repeatable; BIAS in [-100, 100] is added to token ID's logit)
      --stop STRING (repeatable) --stop-token-id ID (repeatable) --ignore-eos
      --include-stop-str --logprobs N --priority N --id REQUEST_ID
      --prompt-logprobs N    the logprob of every prompt token after the first, plus the top N
      --keep-special         do not skip special tokens in the text
      --no-add-special       do not let the tokenizer add special tokens (e.g. bos) to PROMPT
      --json                 print every response message as one JSON line
      --unary                use the unary Complete RPC
  health [--service NAME]  liveness ("") and readiness (sbserve.v1.SbServe); exit 0 when ready
  info                     model and server information (JSON)
  tokenize TEXT [--no-special]
  abort ID...
  bench                    load test: streaming Generate requests, client-side latency and throughput
    load:     --concurrency C (closed loop, default 32) | --request-rate R|inf (Poisson arrivals;
              --concurrency then caps requests in flight); --requests N (alias --num-requests;
              default 200) and/or --duration 60s
    prompts:  --prompt-tokens N|LO:HI (random token ids, exact length) | --prompt-words N (text,
              default 32) | --input FILE.jsonl (lines of {"prompt": "..."} or {"prompt_ids": [...]},
              optional "max_tokens"); --shared-prefixes N --prefix-tokens P (each prompt = one of N
              prefixes of P ids + its own --prompt-tokens suffix)
    output:   --max-tokens N|LO:HI (default 64; ignore_eos) --temperature T (default 0) --seed S
              --logprobs N (each token's logprob and N alternatives, as the HTTP bench asks)
              --prompt-logprobs N (each request also scores its prompt, as evaluation harnesses do)
    retries:  RESOURCE_EXHAUSTED is retried after the server's retry-after plus jitter:
              --max-retries 20 --max-retry-time 120s
    report:   --slo-ttft MS --slo-itl MS (goodput) --json [FILE] (no FILE: JSON alone on stdout)
              --plot FILE.svg --save-input FILE.jsonl (the requests sent, for --input)
              --progress / --no-progress (default: a progress line while stderr is a terminal)

--addr defaults to $SBSERVE_ADDR or localhost:50051; --timeout (e.g. 30s) sets the call deadline.
--api-key KEY (or $SBSERVE_API_KEY) sends "authorization: Bearer KEY" with every call, for a server
with --api-keys-file. --tls-ca FILE connects over TLS trusting that CA (--tls: the system's roots);
--tls-cert FILE --tls-key FILE present a client certificate (a server with --tls-client-ca).
)";

[[noreturn]] void Die(const std::string& msg, int code = 2) {
  std::cerr << "sbctl: " << msg << "\n";
  std::exit(code);
}

int Fail(const grpc::Status& st) {
  std::cerr << "sbctl: " << st.error_code() << " " << st.error_message() << "\n";
  return 1;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// Flags after the command: --name value, --name=value, or boolean --name.
struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;

  bool Has(const std::string& k) const { return flags.count(k) > 0; }
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  }
  std::vector<std::string> All(const std::string& k) const {
    std::vector<std::string> out;
    auto [a, b] = flags.equal_range(k);
    for (auto it = a; it != b; ++it) out.push_back(it->second);
    return out;
  }
};

// `optional` flags take the next argument as their value unless it is missing or another flag
// (then their value is `optional_default`).
Args ParseArgs(const std::vector<std::string>& in, const std::vector<std::string>& booleans,
               const std::vector<std::string>& optional = {}, const std::string& optional_default = "") {
  Args a;
  auto listed = [](const std::vector<std::string>& list, const std::string& name) {
    return std::find(list.begin(), list.end(), name) != list.end();
  };
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string& s = in[i];
    if (s.rfind("--", 0) != 0 || s.size() == 2) {
      a.positional.push_back(s);
      continue;
    }
    std::string name = s.substr(2);
    if (size_t eq = name.find('='); eq != std::string::npos) {
      a.flags.emplace(name.substr(0, eq), name.substr(eq + 1));
    } else if (listed(booleans, name)) {
      a.flags.emplace(name, "true");
    } else if (listed(optional, name) && (i + 1 >= in.size() || in[i + 1].rfind("--", 0) == 0)) {
      a.flags.emplace(name, optional_default);
    } else {
      if (i + 1 >= in.size()) Die(absl::StrCat("--", name, " needs a value"));
      a.flags.emplace(name, in[++i]);
    }
  }
  return a;
}

template <typename T>
T Num(const Args& a, const std::string& k) {
  T v{};
  const std::string s = a.Get(k);
  bool ok;
  if constexpr (std::is_floating_point_v<T>) {
    double d;
    ok = absl::SimpleAtod(s, &d);
    v = static_cast<T>(d);
  } else {
    ok = absl::SimpleAtoi(s, &v);
  }
  if (!ok) Die(absl::StrCat("--", k, ": '", s, "' is not a number"));
  return v;
}

void SetDeadline(grpc::ClientContext& ctx, absl::Duration timeout) {
  if (timeout > absl::ZeroDuration()) ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

int Generate(SbServe::Stub& stub, const Args& a, absl::Duration timeout) {
  sbserve::v1::GenerateRequest req;
  if (a.Has("ids")) {
    for (auto piece : absl::StrSplit(a.Get("ids"), ',', absl::SkipEmpty())) {
      int32_t id;
      if (!absl::SimpleAtoi(piece, &id)) Die(absl::StrCat("--ids: '", piece, "' is not an id"));
      req.mutable_token_ids()->add_ids(id);
    }
  } else {
    if (a.positional.size() != 1) Die("generate needs exactly one PROMPT (or --ids)");
    req.set_text(a.positional[0]);
  }
  auto* s = req.mutable_sampling();
  if (a.Has("temperature")) s->set_temperature(Num<float>(a, "temperature"));
  if (a.Has("top-k")) s->set_top_k(Num<int32_t>(a, "top-k"));
  if (a.Has("top-p")) s->set_top_p(Num<float>(a, "top-p"));
  if (a.Has("min-p")) s->set_min_p(Num<float>(a, "min-p"));
  if (a.Has("repetition-penalty")) s->set_repetition_penalty(Num<float>(a, "repetition-penalty"));
  if (a.Has("presence-penalty")) s->set_presence_penalty(Num<float>(a, "presence-penalty"));
  if (a.Has("frequency-penalty")) s->set_frequency_penalty(Num<float>(a, "frequency-penalty"));
  if (a.Has("seed")) s->set_seed(Num<uint64_t>(a, "seed"));
  for (const auto& x : a.All("logit-bias")) {
    std::pair<std::string, std::string> kv = absl::StrSplit(x, absl::MaxSplits(':', 1));
    int32_t id;
    float bias;
    if (!absl::SimpleAtoi(kv.first, &id) || !absl::SimpleAtof(kv.second, &bias)) {
      Die(absl::StrCat("--logit-bias: '", x, "' is not ID:BIAS"));
    }
    (*s->mutable_logit_bias())[id] = bias;
  }
  auto* st = req.mutable_stopping();
  if (a.Has("max-tokens")) st->set_max_tokens(Num<uint32_t>(a, "max-tokens"));
  if (a.Has("min-tokens")) st->set_min_tokens(Num<uint32_t>(a, "min-tokens"));
  for (const auto& x : a.All("stop")) st->add_stop(x);
  for (const auto& x : a.All("stop-token-id")) {
    int32_t id;
    if (!absl::SimpleAtoi(x, &id)) Die(absl::StrCat("--stop-token-id: '", x, "' is not an id"));
    st->add_stop_token_ids(id);
  }
  st->set_ignore_eos(a.Has("ignore-eos"));
  st->set_include_stop_str_in_output(a.Has("include-stop-str"));
  if (a.Has("logprobs")) req.set_logprobs(Num<uint32_t>(a, "logprobs"));
  if (a.Has("prompt-logprobs")) req.set_prompt_logprobs(Num<uint32_t>(a, "prompt-logprobs"));
  if (a.Has("priority")) req.set_priority(Num<int32_t>(a, "priority"));
  if (a.Has("id")) req.set_request_id(a.Get("id"));
  if (a.Has("keep-special")) req.set_skip_special_tokens(false);
  if (a.Has("no-add-special")) req.set_add_special_tokens(false);
  const bool json = a.Has("json");

  grpc::ClientContext ctx;
  SetDeadline(ctx, timeout);
  if (a.Has("unary")) {
    sbserve::v1::GenerateResponse resp;
    grpc::Status status = stub.Complete(&ctx, req, &resp);
    if (!status.ok()) return Fail(status);
    if (json) {
      std::cout << ToJson(resp) << "\n";
    } else {
      std::cout << resp.text() << "\n";
      std::cerr << "[" << sbserve::v1::FinishReason_Name(resp.finish_reason()) << ", "
                << resp.usage().prompt_tokens() << " prompt + " << resp.usage().completion_tokens()
                << " completion tokens]\n";
    }
    return 0;
  }
  auto reader = stub.Generate(&ctx, req);
  sbserve::v1::GenerateResponse msg;
  sbserve::v1::GenerateResponse last;
  while (reader->Read(&msg)) {
    if (json) {
      std::cout << ToJson(msg) << "\n" << std::flush;
    } else {
      std::cout << msg.text() << std::flush;
    }
    if (msg.finish_reason() != sbserve::v1::FINISH_REASON_UNSPECIFIED) last = msg;
  }
  grpc::Status status = reader->Finish();
  if (!json) {
    std::cout << "\n";
    if (last.finish_reason() != sbserve::v1::FINISH_REASON_UNSPECIFIED) {
      std::cerr << "[" << sbserve::v1::FinishReason_Name(last.finish_reason()) << ", "
                << last.usage().prompt_tokens() << " prompt + " << last.usage().completion_tokens()
                << " completion tokens, first token " << last.timings().first_token_us() / 1000.0 << " ms]\n";
    }
  }
  if (!status.ok()) return Fail(status);
  return 0;
}

int Health(const std::shared_ptr<grpc::Channel>& ch, const Args& a, absl::Duration timeout) {
  auto stub = grpc::health::v1::Health::NewStub(ch);
  std::vector<std::string> services = {"", "sbserve.v1.SbServe"};
  if (a.Has("service")) services = {a.Get("service")};
  bool all = true;
  for (const auto& svc : services) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(svc);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status st = stub->Check(&ctx, req, &resp);
    const std::string label = svc.empty() ? "live  (\"\")" : absl::StrCat("ready (", svc, ")");
    if (!st.ok()) {
      std::cout << label << ": error " << st.error_code() << " " << st.error_message() << "\n";
      all = false;
      continue;
    }
    std::cout << label << ": " << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()) << "\n";
    all = all && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  }
  return all ? 0 : 1;
}

int Info(SbServe::Stub& stub, absl::Duration timeout) {
  sbserve::v1::ModelInfo model;
  sbserve::v1::ServerInfo server;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    grpc::Status st = stub.GetServerInfo(&ctx, {}, &server);
    if (!st.ok()) return Fail(st);
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    grpc::Status st = stub.GetModelInfo(&ctx, {}, &model);
    if (!st.ok()) return Fail(st);
  }
  std::cout << "{\"model\": " << ToJson(model) << ", \"server\": " << ToJson(server) << "}\n";
  return 0;
}

int Tokenize(SbServe::Stub& stub, const Args& a, absl::Duration timeout) {
  if (a.positional.size() != 1) Die("tokenize needs exactly one TEXT");
  sbserve::v1::TokenizeRequest req;
  req.set_text(a.positional[0]);
  if (a.Has("no-special")) req.set_add_special_tokens(false);
  sbserve::v1::TokenizeResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, timeout);
  grpc::Status st = stub.Tokenize(&ctx, req, &resp);
  if (!st.ok()) return Fail(st);
  std::cout << ToJson(resp) << "\n";
  return 0;
}

int Abort(SbServe::Stub& stub, const Args& a, absl::Duration timeout) {
  sbserve::v1::AbortRequest req;
  for (const auto& id : a.positional) req.add_request_ids(id);
  sbserve::v1::AbortResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, timeout);
  grpc::Status st = stub.Abort(&ctx, req, &resp);
  if (!st.ok()) return Fail(st);
  std::cout << ToJson(resp) << "\n";
  return 0;
}

// N, or LO:HI for a length drawn uniformly from [LO, HI].
sbserve::client::LengthRange Range(const Args& a, const std::string& k, int min) {
  const std::string s = a.Get(k);
  sbserve::client::LengthRange r;
  const size_t colon = s.find(':');
  bool ok = colon == std::string::npos
                ? absl::SimpleAtoi(s, &r.lo)
                : absl::SimpleAtoi(s.substr(0, colon), &r.lo) && absl::SimpleAtoi(s.substr(colon + 1), &r.hi);
  if (colon == std::string::npos) r.hi = r.lo;
  if (!ok || r.lo < min || r.hi < r.lo) {
    Die(absl::StrCat("--", k, ": '", s, "' is not N or LO:HI with ", min, " <= LO <= HI"));
  }
  return r;
}

int Bench(const std::shared_ptr<grpc::Channel>& channel, const Args& a) {
  sbserve::client::BenchOptions o;
  if (!a.positional.empty()) Die(absl::StrCat("bench: unexpected argument '", a.positional[0], "'"));
  const bool open_loop = a.Has("request-rate");
  for (const char* k : {"requests", "num-requests"}) {
    if (a.Has(k)) o.requests = Num<int64_t>(a, k);
  }
  if ((a.Has("requests") || a.Has("num-requests")) && o.requests < 1) Die("bench: --requests must be >= 1");
  if (a.Has("duration")) {
    absl::Duration d;
    if (!absl::ParseDuration(a.Get("duration"), &d)) {
      double s;
      if (!absl::SimpleAtod(a.Get("duration"), &s)) Die("--duration: not a duration like 60s or a number of seconds");
      d = absl::Seconds(s);
    }
    o.duration_s = absl::ToDoubleSeconds(d);
    if (!(o.duration_s > 0)) Die("--duration must be > 0");
  }
  if (open_loop) {
    const std::string r = a.Get("request-rate");
    if (r == "inf") {
      o.request_rate = std::numeric_limits<double>::infinity();
    } else {
      o.request_rate = Num<double>(a, "request-rate");
      if (!(o.request_rate > 0) || std::isinf(o.request_rate)) Die("--request-rate must be > 0 (or inf)");
    }
    o.concurrency = a.Has("concurrency") ? Num<int>(a, "concurrency") : 0;
  } else if (a.Has("concurrency")) {
    o.concurrency = Num<int>(a, "concurrency");
  }
  if (a.Has("concurrency") && o.concurrency < 1) Die("--concurrency must be >= 1");
  if (a.Has("input")) o.input_jsonl = a.Get("input");
  if (a.Has("prompt-tokens")) o.prompt_tokens = Range(a, "prompt-tokens", 1);
  if (a.Has("prompt-words")) o.prompt_words = Num<int>(a, "prompt-words");
  if (o.prompt_words < 0) Die("--prompt-words must be >= 0");
  if (a.Has("max-tokens")) o.max_tokens = Range(a, "max-tokens", 1);
  if (a.Has("shared-prefixes") != a.Has("prefix-tokens")) Die("bench: --shared-prefixes and --prefix-tokens go together");
  if (a.Has("shared-prefixes")) {
    o.shared_prefixes = Num<int>(a, "shared-prefixes");
    o.prefix_tokens = Num<int>(a, "prefix-tokens");
    if (o.shared_prefixes < 1 || o.prefix_tokens < 1) Die("bench: --shared-prefixes and --prefix-tokens must be >= 1");
  }
  if (!o.input_jsonl.empty() && (a.Has("prompt-tokens") || a.Has("prompt-words") || a.Has("shared-prefixes"))) {
    Die("bench: --input sets the prompts; drop --prompt-tokens, --prompt-words and --shared-prefixes");
  }
  if (a.Has("temperature")) o.temperature = Num<float>(a, "temperature");
  if (a.Has("seed")) o.seed = Num<uint64_t>(a, "seed");
  if (a.Has("logprobs")) o.logprobs = Num<int>(a, "logprobs");
  if (a.Has("logprobs") && o.logprobs < 0) Die("bench: --logprobs must be >= 0");
  if (a.Has("prompt-logprobs")) o.prompt_logprobs = Num<int>(a, "prompt-logprobs");
  if (a.Has("prompt-logprobs") && o.prompt_logprobs < 0) Die("bench: --prompt-logprobs must be >= 0");
  if (a.Has("max-retries")) o.max_retries = Num<int>(a, "max-retries");
  if (o.max_retries < 0) Die("--max-retries must be >= 0");
  if (a.Has("max-retry-time")) {
    absl::Duration d;
    if (!absl::ParseDuration(a.Get("max-retry-time"), &d) || d < absl::ZeroDuration()) {
      Die("--max-retry-time: not a duration like 120s");
    }
    o.max_retry_s = absl::ToDoubleSeconds(d);
  }
  if (a.Has("slo-ttft")) o.slo_ttft_ms = Num<double>(a, "slo-ttft");
  if (a.Has("slo-itl")) o.slo_itl_ms = Num<double>(a, "slo-itl");
  if (o.slo_ttft_ms < 0 || o.slo_itl_ms < 0) Die("--slo-ttft and --slo-itl are milliseconds >= 0");
  if (a.Has("json")) o.json_file = a.Get("json");
  if (a.Has("plot")) o.plot_file = a.Get("plot");
  if (a.Has("save-input")) o.save_input_file = a.Get("save-input");
  o.progress = a.Has("progress") || (!a.Has("no-progress") && isatty(STDERR_FILENO) == 1);
  static const char* kKnown[] = {"requests", "num-requests", "duration", "request-rate", "concurrency", "input",
                                 "prompt-tokens", "prompt-words", "max-tokens", "shared-prefixes", "prefix-tokens",
                                 "temperature", "seed", "logprobs", "prompt-logprobs", "max-retries", "max-retry-time", "slo-ttft", "slo-itl", "json",
                                 "plot", "save-input", "progress", "no-progress"};
  for (const auto& [k, v] : a.flags) {
    if (std::find(std::begin(kKnown), std::end(kKnown), k) == std::end(kKnown)) Die(absl::StrCat("bench: unknown option --", k));
  }
  return sbserve::client::RunBench(channel, o);
}

// Adds "authorization: Bearer KEY" to every call of the channel (bench's and health's included).
class BearerInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *header_});
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;
};

class BearerInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(std::string key) : header_("Bearer " + std::move(key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(&header_);
  }

 private:
  std::string header_;
};

std::string ReadFileOrDie(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die(absl::StrCat(flag, ": cannot read '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string addr = std::getenv("SBSERVE_ADDR") != nullptr ? std::getenv("SBSERVE_ADDR") : "localhost:50051";
  absl::Duration timeout = absl::ZeroDuration();
  std::string api_key = std::getenv("SBSERVE_API_KEY") != nullptr ? std::getenv("SBSERVE_API_KEY") : "";
  bool tls = false;
  std::string tls_ca, tls_cert, tls_key;
  size_t i = 0;
  for (; i < args.size() && args[i].rfind("--", 0) == 0; ++i) {
    std::string a = args[i];
    std::string v;
    if (size_t eq = a.find('='); eq != std::string::npos) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if (a != "--help" && a != "--tls" && i + 1 < args.size()) {
      v = args[++i];
    }
    if (a == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--addr") {
      addr = v;
    } else if (a == "--timeout") {
      if (!absl::ParseDuration(v, &timeout)) Die(absl::StrCat("--timeout: '", v, "' is not a duration like 30s"));
    } else if (a == "--api-key") {
      api_key = v;
    } else if (a == "--tls") {
      tls = true;
    } else if (a == "--tls-ca") {
      tls = true;
      tls_ca = ReadFileOrDie(a, v);
    } else if (a == "--tls-cert") {
      tls_cert = ReadFileOrDie(a, v);
    } else if (a == "--tls-key") {
      tls_key = ReadFileOrDie(a, v);
    } else {
      Die(absl::StrCat("unknown option ", a, "\n", kUsage));
    }
  }
  if (i >= args.size()) Die(kUsage);
  const std::string cmd = args[i];
  const std::vector<std::string> rest(args.begin() + static_cast<long>(i) + 1, args.end());
  const Args a = cmd == "bench" ? ParseArgs(rest, {"no-progress", "progress"}, {"json"}, "-")
                                : ParseArgs(rest, {"json", "unary", "ignore-eos", "include-stop-str", "keep-special",
                                                   "no-special", "no-add-special"});

  grpc::ChannelArguments ca;
  ca.SetMaxReceiveMessageSize(64 << 20);
  if (tls_cert.empty() != tls_key.empty()) Die("--tls-cert and --tls-key go together");
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (tls || !tls_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = tls_ca;  // empty: the system's roots
    ssl.pem_private_key = tls_key;
    ssl.pem_cert_chain = tls_cert;
    creds = grpc::SslCredentials(ssl);
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (!api_key.empty()) interceptors.push_back(std::make_unique<BearerInterceptorFactory>(api_key));
  auto channel = grpc::experimental::CreateCustomChannelWithInterceptors(addr, creds, ca, std::move(interceptors));
  auto stub = SbServe::NewStub(channel);
  if (cmd == "generate") return Generate(*stub, a, timeout);
  if (cmd == "health") return Health(channel, a, timeout > absl::ZeroDuration() ? timeout : absl::Seconds(5));
  if (cmd == "info") return Info(*stub, timeout);
  if (cmd == "tokenize") return Tokenize(*stub, a, timeout);
  if (cmd == "abort") return Abort(*stub, a, timeout);
  if (cmd == "bench") return Bench(channel, a);
  Die(absl::StrCat("unknown command '", cmd, "'\n", kUsage));
}
