#include "server/options.h"

#include <algorithm>
#include <cstdlib>
#include <functional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace sbserve {
namespace {

struct Flag {
  const char* name;
  const char* help;
  std::function<std::string(const ServerOptions&)> show;
  std::function<absl::Status(ServerOptions&, const std::string&)> set;
  bool boolean = false;  // may stand alone: --flag means --flag=true
};

absl::Status Bad(const std::string& name, const std::string& value, const char* want) {
  return absl::InvalidArgumentError(absl::StrCat("--", name, ": '", value, "' is not ", want));
}

template <typename T>
std::function<absl::Status(ServerOptions&, const std::string&)> Int(const char* name, T ServerOptions::*f,
                                                                    int64_t lo, int64_t hi) {
  return [=](ServerOptions& o, const std::string& v) {
    int64_t x = 0;
    if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) return Bad(name, v, absl::StrCat("an integer in [", lo, ", ", hi, "]").c_str());
    o.*f = static_cast<T>(x);
    return absl::OkStatus();
  };
}

template <typename T>
std::function<absl::Status(ServerOptions&, const std::string&)> EngineInt(const char* name, T EngineOptions::*f,
                                                                          int64_t lo, int64_t hi) {
  return [=](ServerOptions& o, const std::string& v) {
    int64_t x = 0;
    if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) return Bad(name, v, absl::StrCat("an integer in [", lo, ", ", hi, "]").c_str());
    o.engine.*f = static_cast<T>(x);
    return absl::OkStatus();
  };
}

// "true" / "1" or "false" / "0".
absl::Status ParseBool(const char* name, const std::string& v, bool* out) {
  if (v == "true" || v == "1") {
    *out = true;
  } else if (v == "false" || v == "0") {
    *out = false;
  } else {
    return Bad(name, v, "true or false");
  }
  return absl::OkStatus();
}

std::function<absl::Status(ServerOptions&, const std::string&)> Bool(const char* name, bool ServerOptions::*f) {
  return [=](ServerOptions& o, const std::string& v) { return ParseBool(name, v, &(o.*f)); };
}

std::function<absl::Status(ServerOptions&, const std::string&)> EngineBool(const char* name, bool EngineOptions::*f) {
  return [=](ServerOptions& o, const std::string& v) { return ParseBool(name, v, &(o.engine.*f)); };
}

std::function<absl::Status(ServerOptions&, const std::string&)> Str(std::string ServerOptions::*f) {
  return [=](ServerOptions& o, const std::string& v) {
    o.*f = v;
    return absl::OkStatus();
  };
}

absl::StatusOr<absl::Duration> ParseDuration(const std::string& v) {
  absl::Duration d;
  if (absl::ParseDuration(v, &d)) return d;
  double s = 0;
  if (absl::SimpleAtod(v, &s)) return absl::Seconds(s);
  return absl::InvalidArgumentError("bad duration");
}

const std::vector<Flag>& Flags() {
  static const auto* flags = new std::vector<Flag>{
      {"model", "checkpoint directory (config.json, safetensors, tokenizer.json); empty: the demo model",
       [](const ServerOptions& o) { return o.model; }, Str(&ServerOptions::model)},
      {"host", "gRPC listen address", [](const ServerOptions& o) { return o.host; }, Str(&ServerOptions::host)},
      {"port", "gRPC port (0: any free port)", [](const ServerOptions& o) { return absl::StrCat(o.port); },
       Int("port", &ServerOptions::port, 0, 65535)},
      {"metrics-host", "metrics HTTP listen address", [](const ServerOptions& o) { return o.metrics_host; },
       Str(&ServerOptions::metrics_host)},
      {"metrics-port", "metrics HTTP port for /metrics, /health, /ready (0: any free port, -1: off)",
       [](const ServerOptions& o) { return absl::StrCat(o.metrics_port); },
       Int("metrics-port", &ServerOptions::metrics_port, -1, 65535)},
      {"probe-port", "open operations port: /health, /ready and /metrics over plain HTTP with no API key, "
                     "beside a TLS/mTLS or keyed metrics port (0: any free port, -1: off)",
       [](const ServerOptions& o) { return absl::StrCat(o.probe_port); },
       Int("probe-port", &ServerOptions::probe_port, -1, 65535)},
      {"backend", "auto | cpu | cuda (auto: CUDA when built with it and a device is present)",
       [](const ServerOptions& o) { return o.backend; },
       [](ServerOptions& o, const std::string& v) {
         if (v != "auto" && v != "cpu" && v != "cuda") return Bad("backend", v, "auto, cpu or cuda");
         o.backend = v;
         return absl::OkStatus();
       }},
      {"deterministic",
       "batch-invariant CUDA engines: a request's tokens do not depend on what else is batched, on chunked "
       "prefill or on preemption (slower; true | false; bare --deterministic means true)",
       [](const ServerOptions& o) { return o.deterministic ? "true" : "false"; },
       Bool("deterministic", &ServerOptions::deterministic), true},
      {"device", "CUDA device ordinal", [](const ServerOptions& o) { return absl::StrCat(o.device); },
       Int("device", &ServerOptions::device, 0, 1024)},
      {"devices", "data-parallel serving, one engine per device behind this server: 'all' or '0,1,...' "
                  "(CUDA ordinals), or 'cpu:N' (N engines on the CPU backend); empty: one engine on --device",
       [](const ServerOptions& o) { return o.devices; },
       [](ServerOptions& o, const std::string& v) {
         if (absl::StatusOr<DeviceList> d = ParseDevices(v); !d.ok()) return d.status();
         o.devices = v;
         return absl::OkStatus();
       }},
      {"affinity-slack", "with --devices: how much more loaded (a fraction of KV capacity) the engine that last "
                         "took a prompt's first block may be and still get the next one (negative: off)",
       [](const ServerOptions& o) { return absl::StrCat(o.affinity_slack); },
       [](ServerOptions& o, const std::string& v) {
         double x = 0;
         if (!absl::SimpleAtod(v, &x) || !(x <= 1e6)) return Bad("affinity-slack", v, "a number");
         o.affinity_slack = x;
         return absl::OkStatus();
       }},
      {"cpu-threads", "CPU backend threads (0: all cores)", [](const ServerOptions& o) { return absl::StrCat(o.cpu_threads); },
       Int("cpu-threads", &ServerOptions::cpu_threads, 0, 4096)},
      {"max-batch-tokens", "tokens per engine step (decode tokens + prefill chunks); 0: auto (2048 on CUDA, 512 on the CPU)",
       [](const ServerOptions& o) { return absl::StrCat(o.engine.max_batch_tokens); },
       EngineInt("max-batch-tokens", &EngineOptions::max_batch_tokens, 0, 1 << 20)},
      {"max-num-seqs", "sequences per engine step", [](const ServerOptions& o) { return absl::StrCat(o.engine.max_num_seqs); },
       EngineInt("max-num-seqs", &EngineOptions::max_num_seqs, 1, 1 << 16)},
      {"max-queued-requests", "admission: waiting requests before RESOURCE_EXHAUSTED; 0: auto (max(256, 4 x --max-num-seqs))",
       [](const ServerOptions& o) { return absl::StrCat(o.engine.max_queued_requests); },
       EngineInt("max-queued-requests", &EngineOptions::max_queued_requests, 0, 1 << 24)},
      {"max-queued-tokens", "admission: waiting prompt tokens before RESOURCE_EXHAUSTED; 0: auto (what the engine "
                            "prefills in 10 s at its rate measured at start-up, at least the KV token capacity)",
       [](const ServerOptions& o) { return absl::StrCat(o.engine.max_queued_tokens); },
       EngineInt("max-queued-tokens", &EngineOptions::max_queued_tokens, 0, int64_t{1} << 40)},
      {"default-max-tokens", "max_tokens when a request leaves it unset (capped by the context)",
       [](const ServerOptions& o) { return absl::StrCat(o.engine.default_max_tokens); },
       EngineInt("default-max-tokens", &EngineOptions::default_max_tokens, 1, 1 << 24)},
      {"max-step-failures", "consecutive failed engine steps before readiness turns NOT_SERVING (a fatal device error: at once)",
       [](const ServerOptions& o) { return absl::StrCat(o.engine.max_consecutive_step_failures); },
       EngineInt("max-step-failures", &EngineOptions::max_consecutive_step_failures, 1, 1 << 20)},
      {"kv-block-size", "tokens per KV cache block", [](const ServerOptions& o) { return absl::StrCat(o.engine.kv_block_size); },
       EngineInt("kv-block-size", &EngineOptions::kv_block_size, 1, 4096)},
      {"kv-cache-mb", "KV cache size in MiB, at least one full context (used when --kv-blocks is 0); 0: auto "
                      "(CUDA: from --gpu-memory-utilization; CPU: 1/16 of available RAM, at most 1 GiB)",
       [](const ServerOptions& o) { return absl::StrCat(o.engine.kv_cache_bytes >> 20); },
       [](ServerOptions& o, const std::string& v) {
         int64_t mb = 0;
         if (!absl::SimpleAtoi(v, &mb) || mb < 0 || mb > (int64_t{1} << 24)) return Bad("kv-cache-mb", v, "a size in MiB (0: auto)");
         o.engine.kv_cache_bytes = mb << 20;
         return absl::OkStatus();
       }},
      {"gpu-memory-utilization", "share of the device's memory sbserve may use (weights, activations, KV cache), in (0, 1]; "
                                 "the KV cache gets what is left of it after a warm-up step at the largest batch",
       [](const ServerOptions& o) { return absl::StrFormat("%.2f", o.engine.gpu_memory_utilization); },
       [](ServerOptions& o, const std::string& v) {
         double x = 0;
         if (!absl::SimpleAtod(v, &x) || !(x > 0.0 && x <= 1.0)) return Bad("gpu-memory-utilization", v, "a fraction in (0, 1]");
         o.engine.gpu_memory_utilization = x;
         return absl::OkStatus();
       }},
      {"kv-blocks", "KV cache blocks, exactly (may be less than one context: longer requests are refused); 0: from --kv-cache-mb", [](const ServerOptions& o) { return absl::StrCat(o.engine.kv_num_blocks); },
       EngineInt("kv-blocks", &EngineOptions::kv_num_blocks, 0, 1 << 24)},
      {"sampling-threads", "threads that draw tokens from the logit rows of a step (0: all cores, 1: the engine thread)",
       [](const ServerOptions& o) { return absl::StrCat(o.engine.sampling_threads); },
       EngineInt("sampling-threads", &EngineOptions::sampling_threads, 0, 1024)},
      {"enable-prefix-caching",
       "automatic prefix caching: requests with equal leading full KV blocks share them (true | false)",
       [](const ServerOptions& o) { return o.engine.enable_prefix_caching ? "true" : "false"; },
       EngineBool("enable-prefix-caching", &EngineOptions::enable_prefix_caching)},
      {"overlap-steps",
       "pack and launch the next step while the device runs the current one (true | false)",
       [](const ServerOptions& o) { return o.engine.overlap_steps ? "true" : "false"; },
       EngineBool("overlap-steps", &EngineOptions::overlap_steps)},
      {"max-logprobs", "largest logprobs (top-n) a request may ask for",
       [](const ServerOptions& o) { return absl::StrCat(o.engine.max_logprobs); },
       EngineInt("max-logprobs", &EngineOptions::max_logprobs, 0, 1024)},
      {"retry-after", "retry delay suggested with RESOURCE_EXHAUSTED (e.g. 500ms)",
       [](const ServerOptions& o) { return absl::FormatDuration(o.engine.retry_after); },
       [](ServerOptions& o, const std::string& v) {
         auto d = ParseDuration(v);
         if (!d.ok() || *d < absl::ZeroDuration()) return Bad("retry-after", v, "a duration");
         o.engine.retry_after = *d;
         return absl::OkStatus();
       }},
      {"drain-timeout", "on SIGTERM, how long in-flight requests may finish (e.g. 30s)",
       [](const ServerOptions& o) { return absl::FormatDuration(o.drain_timeout); },
       [](ServerOptions& o, const std::string& v) {
         auto d = ParseDuration(v);
         if (!d.ok() || *d < absl::ZeroDuration()) return Bad("drain-timeout", v, "a duration");
         o.drain_timeout = *d;
         return absl::OkStatus();
       }},
      {"load-delay", "testing: stay in the loading state this long before loading the model",
       [](const ServerOptions& o) { return absl::FormatDuration(o.load_delay); },
       [](ServerOptions& o, const std::string& v) {
         auto d = ParseDuration(v);
         if (!d.ok() || *d < absl::ZeroDuration()) return Bad("load-delay", v, "a duration");
         o.load_delay = *d;
         return absl::OkStatus();
       }},
      {"log-level", "trace | debug | info | warn | error | off", [](const ServerOptions& o) { return o.log_level; },
       Str(&ServerOptions::log_level)},
      {"log-requests", "one log line per completed or rejected request (true | false)",
       [](const ServerOptions& o) { return o.log_requests ? "true" : "false"; },
       Bool("log-requests", &ServerOptions::log_requests)},
      {"max-message-mb", "largest gRPC message accepted, MiB; also the largest HTTP API request body (413 above it)",
       [](const ServerOptions& o) { return absl::StrCat(o.max_message_bytes >> 20); },
       [](ServerOptions& o, const std::string& v) {
         int64_t mb = 0;
         if (!absl::SimpleAtoi(v, &mb) || mb < 1 || mb > 1024) return Bad("max-message-mb", v, "in [1, 1024]");
         o.max_message_bytes = static_cast<int>(mb << 20);
         return absl::OkStatus();
       }},
      {"tls-cert", "PEM certificate chain: TLS on the gRPC and HTTP ports (with --tls-key); re-read on SIGHUP",
       [](const ServerOptions& o) { return o.tls_cert; }, Str(&ServerOptions::tls_cert)},
      {"tls-key", "PEM private key of --tls-cert", [](const ServerOptions& o) { return o.tls_key; },
       Str(&ServerOptions::tls_key)},
      {"tls-client-ca", "PEM CA bundle: require client certificates signed by it (mTLS) on both ports",
       [](const ServerOptions& o) { return o.tls_client_ca; }, Str(&ServerOptions::tls_client_ca)},
      {"api-keys-file", "API keys, one per line: KEY or sha256:HEX, optional NAME and MAX_CONCURRENT; set: RPCs need 'authorization: Bearer KEY'",
       [](const ServerOptions& o) { return o.api_keys_file; }, Str(&ServerOptions::api_keys_file)},
      {"metrics-open", "with --api-keys-file: serve GET /metrics without a key (true | false); /health and /ready are always open",
       [](const ServerOptions& o) { return o.metrics_open ? "true" : "false"; },
       [](ServerOptions& o, const std::string& v) {
         if (v != "true" && v != "false") return Bad("metrics-open", v, "true or false");
         o.metrics_open = v == "true";
         return absl::OkStatus();
       }},
      {"http-host", "OpenAI-compatible HTTP API listen address", [](const ServerOptions& o) { return o.http_host; },
       Str(&ServerOptions::http_host)},
      {"http-port", "OpenAI-compatible HTTP API port: /v1/completions, /v1/chat/completions, /v1/models, /tokenize, "
                    "/detokenize (0: any free port, -1: off)",
       [](const ServerOptions& o) { return absl::StrCat(o.http_port); },
       Int("http-port", &ServerOptions::http_port, -1, 65535)},
      {"http-threads", "HTTP API connections served at once (one thread each; more wait)",
       [](const ServerOptions& o) { return absl::StrCat(o.http_threads); },
       Int("http-threads", &ServerOptions::http_threads, 2, 1 << 16)},
      {"served-model-name", "the model id the HTTP API lists and accepts (empty: the checkpoint directory's name, "
                            "'sbserve-demo' for the demo model)",
       [](const ServerOptions& o) { return o.served_model_name; }, Str(&ServerOptions::served_model_name)},
      {"chat-template", "Jinja chat template file for /v1/chat/completions (empty: tokenizer_config.json's chat_template)",
       [](const ServerOptions& o) { return o.chat_template; }, Str(&ServerOptions::chat_template)},
  };
  return *flags;
}

std::string EnvName(const char* flag) {
  return absl::StrCat("SBSERVE_", absl::AsciiStrToUpper(absl::StrReplaceAll(flag, {{"-", "_"}})));
}

}  // namespace

absl::StatusOr<DeviceList> ParseDevices(const std::string& value) {
  DeviceList d;
  const std::string v(absl::StripAsciiWhitespace(value));
  if (v.empty()) return d;
  if (v == "all") {
    d.all = true;
    return d;
  }
  if (absl::StartsWith(v, "cpu:")) {
    int n = 0;
    if (!absl::SimpleAtoi(v.substr(4), &n) || n < 1 || n > 64) {
      return Bad("devices", value, "cpu:N with N in [1, 64]");
    }
    d.cpu_engines = n;
    return d;
  }
  for (absl::string_view part : absl::StrSplit(v, ',')) {
    int x = 0;
    if (!absl::SimpleAtoi(part, &x) || x < 0 || x > 1024) {
      return Bad("devices", value, "'all', 'cpu:N' or a list of CUDA ordinals such as 0,1");
    }
    if (std::find(d.cuda.begin(), d.cuda.end(), x) != d.cuda.end()) {
      return Bad("devices", value, "a list without repeats");
    }
    d.cuda.push_back(x);
  }
  return d;
}

std::string ServerUsage() {
  ServerOptions defaults;
  std::string out =
      "usage: sbserve [--flag=value ...]\n"
      "Serves a stick-breaking-attention model over gRPC. Every flag also reads the environment\n"
      "variable shown (a flag on the command line wins).\n\n";
  for (const Flag& f : Flags()) {
    absl::StrAppend(&out, "  --", f.name, "  (", EnvName(f.name), ", default '", f.show(defaults), "')\n      ", f.help,
                    "\n");
  }
  return out;
}

absl::StatusOr<ServerOptions> ParseServerOptions(const std::vector<std::string>& args, bool* help) {
  ServerOptions o;
  *help = false;
  for (const Flag& f : Flags()) {
    if (const char* v = std::getenv(EnvName(f.name).c_str()); v != nullptr) {
      if (absl::Status s = f.set(o, v); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(EnvName(f.name), ": ", s.message()));
      }
    }
  }
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (a == "--help" || a == "-h") {
      *help = true;
      return ServerOptions{};
    }
    if (a.rfind("--", 0) != 0) return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
    a = a.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    const Flag* flag = nullptr;
    for (const Flag& f : Flags()) {
      if (a == f.name) flag = &f;
    }
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", a, " (see --help)"));
    if (!has_value && flag->boolean && (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0)) {
      value = "true";
      has_value = true;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat("--", a, " needs a value"));
      value = args[++i];
    }
    if (absl::Status s = flag->set(o, value); !s.ok()) return s;
  }
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!o.tls_client_ca.empty() && o.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  return o;
}

}  // namespace sbserve
