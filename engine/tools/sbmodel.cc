// sbmodel: create, inspect and run stick-breaking checkpoints without the server.
//
//   sbmodel create --preset tiny|small|small-3b|small-3b-d128|1b|3b --variant R0|R1|R2 --dtype bf16|f32|f16 --seed S DIR
//   sbmodel inspect DIR
//   sbmodel logits --model DIR --ids 5,17,3 --out FILE.npy [--decode]
//   sbmodel generate --model DIR (--ids ... | --prompt TEXT) --max-tokens N [sampling flags]
//   sbmodel bench --model DIR [--batch B] [--prompt-len L] [--gen N]
//   sbmodel tokenize / detokenize (see --help)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/kv_cache.h"
#include "engine/model/model_writer.h"
#include "engine/model/npy.h"
#include "engine/sampler.h"
#ifdef SBSERVE_HAVE_TOKENIZER
#include "engine/tokenizer/tokenizer.h"
#endif

namespace sbserve {
namespace {

constexpr char kUsage[] = R"(usage:
  sbmodel create --preset tiny|small|small-3b|small-3b-d128|1b|3b [--variant R0|R1|R2] [--dtype f32|bf16|f16] [--seed S]
                 [--kv-heads N] [--norm rmsnorm|layernorm] [--bias] [--untied] [--shards N] DIR
  sbmodel inspect DIR
  sbmodel logits --model DIR --ids 5,17,3 --out FILE.npy [--decode] [--backend auto|cpu|cuda]
  sbmodel generate --model DIR (--ids 1,2,3 | --prompt TEXT) --max-tokens N [--temperature T] [--top-k K]
                 [--top-p P] [--min-p P] [--repetition-penalty R] [--presence-penalty P]
                 [--frequency-penalty F] [--seed S] [--backend auto|cpu|cuda] [--ignore-eos]
  sbmodel bench --model DIR [--batch B] [--prompt-len L] [--gen N] [--backend auto|cpu|cuda] [--threads T]
                [--sample device|host] [--overlap] [--prefill-reps N] [--mixed-chunk L]
  sbmodel tokenize --tokenizer DIR_OR_FILE --text TEXT
  sbmodel detokenize --tokenizer DIR_OR_FILE --ids 1,2,3
  sbmodel train-tokenizer --corpus FILE --vocab N DIR   # byte-level BPE, no reserved ids
  sbmodel encode --tokenizer DIR_OR_FILE --in FILE --out FILE.bin   # ids as little-endian int32
)";

// --flag value pairs, --switches and positional arguments.
struct Args {
  std::map<std::string, std::string> flags;
  std::vector<std::string> positional;

  bool Has(const std::string& k) const { return flags.count(k) > 0; }
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  }
};

const char* kSwitches[] = {"--decode", "--bias", "--untied", "--ignore-eos", "--overlap", "--help"};

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv) {
  Args a;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& s = argv[i];
    if (s.rfind("--", 0) == 0) {
      bool is_switch = false;
      for (const char* sw : kSwitches) is_switch |= (s == sw);
      if (is_switch) {
        a.flags[s] = "1";
      } else {
        if (i + 1 >= argv.size()) return absl::InvalidArgumentError(absl::StrCat(s, " needs a value"));
        a.flags[s] = argv[++i];
      }
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

template <typename T>
absl::Status ParseNumber(const Args& a, const std::string& flag, T* out) {
  if (!a.Has(flag)) return absl::OkStatus();
  bool ok;
  if constexpr (std::is_floating_point_v<T>) {
    double v;
    ok = absl::SimpleAtod(a.Get(flag), &v);
    *out = static_cast<T>(v);
  } else {
    int64_t v;
    ok = absl::SimpleAtoi(a.Get(flag), &v);
    *out = static_cast<T>(v);
  }
  return ok ? absl::OkStatus() : absl::InvalidArgumentError(absl::StrCat(flag, ": not a number: ", a.Get(flag)));
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) return absl::InvalidArgumentError(absl::StrCat("bad token id \"", part, "\""));
    ids.push_back(v);
  }
  return ids;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const Checkpoint& ckpt, const Args& a) {
  const std::string which = a.Get("--backend", "auto");
  if (which == "cuda" || which == "auto") {
    auto b = CreateCudaBackend(ckpt);
    if (b.ok() || which == "cuda") return b;
  } else if (which != "cpu") {
    return absl::InvalidArgumentError("--backend must be auto, cpu or cuda");
  }
  CpuBackendOptions o;
  if (absl::Status st = ParseNumber(a, "--threads", &o.num_threads); !st.ok()) return st;
  return CreateCpuBackend(ckpt, o);
}

// One sequence at a time through the backend: prefill a chunk, then single-token steps.
class SequenceRunner {
 public:
  SequenceRunner(Backend& backend, int max_tokens) : backend_(backend) {
    const int bs = 16;
    blocks_ = (max_tokens + bs - 1) / bs + 1;
    alloc_ = std::make_unique<KvBlockAllocator>(blocks_, bs);
    status_ = backend_.InitKvCache({blocks_, bs});
  }
  absl::Status status() const { return status_; }

  // Appends `chunk` to the sequence; logits of every chunk row (all_rows) or of its last row.
  absl::Status Step(const std::vector<int32_t>& chunk, bool all_rows, std::vector<float>& logits) {
    if (absl::Status st = alloc_->EnsureCapacity(table_, len_ + chunk.size()); !st.ok()) return st;
    Batch b;
    b.tokens = chunk;
    for (size_t i = 0; i < chunk.size(); ++i) b.positions.push_back(static_cast<int32_t>(len_ + i));
    b.cu_seqlens_q = {0, static_cast<int32_t>(chunk.size())};
    len_ += static_cast<int64_t>(chunk.size());
    b.context_lens = {static_cast<int32_t>(len_)};
    b.max_blocks_per_seq = static_cast<int32_t>(table_.size());
    b.block_tables = table_;
    if (all_rows) {
      for (size_t i = 0; i < chunk.size(); ++i) b.logit_rows.push_back(static_cast<int32_t>(i));
    } else {
      b.logit_rows = {static_cast<int32_t>(chunk.size()) - 1};
    }
    logits.assign(b.logit_rows.size() * backend_.config().vocab_size, 0.f);
    return backend_.Forward(b, logits);
  }

 private:
  Backend& backend_;
  int blocks_;
  std::unique_ptr<KvBlockAllocator> alloc_;
  std::vector<int32_t> table_;
  int64_t len_ = 0;
  absl::Status status_;
};

int Fail(const absl::Status& st) {
  std::cerr << "sbmodel: " << st.message() << "\n";
  return 1;
}

int Create(const Args& a) {
  if (a.positional.size() != 1) return Fail(absl::InvalidArgumentError("create needs exactly one DIR"));
  CreateOptions o;
  o.preset = a.Get("--preset", "small");
  o.variant = a.Get("--variant", "R1");
  o.dtype = a.Get("--dtype", "f32");
  o.norm = a.Get("--norm", "");
  o.add_bias = a.Has("--bias");
  o.untied = a.Has("--untied");
  for (absl::Status st : {ParseNumber(a, "--seed", &o.seed), ParseNumber(a, "--kv-heads", &o.kv_heads),
                          ParseNumber(a, "--shards", &o.shards)}) {
    if (!st.ok()) return Fail(st);
  }
  if (absl::Status st = WriteRandomCheckpoint(a.positional[0], o); !st.ok()) return Fail(st);
  std::cout << "wrote " << o.preset << " " << o.variant << " " << o.dtype << " checkpoint to " << a.positional[0] << "\n";
  return 0;
}

int Inspect(const Args& a) {
  if (a.positional.size() != 1) return Fail(absl::InvalidArgumentError("inspect needs exactly one DIR"));
  auto ckpt = Checkpoint::Open(a.positional[0]);
  if (!ckpt.ok()) return Fail(ckpt.status());
  const ModelConfig& c = (*ckpt)->config();
  const char* head = c.head_type == HeadType::kMha ? "mha" : c.head_type == HeadType::kGqa ? "gqa" : "mqa";
  std::printf("checkpoint        %s\n", a.positional[0].c_str());
  std::printf("vocab_size        %lld\n", static_cast<long long>(c.vocab_size));
  std::printf("n_embd            %lld\n", static_cast<long long>(c.n_embd));
  std::printf("n_layer           %lld\n", static_cast<long long>(c.n_layer));
  std::printf("n_head            %lld (head_dim %lld)\n", static_cast<long long>(c.n_head),
              static_cast<long long>(c.head_dim));
  std::printf("kv heads          %lld (%s)\n", static_cast<long long>(c.n_kv_head), head);
  std::printf("n_inner           %lld (%s)\n", static_cast<long long>(c.n_inner), c.activation.c_str());
  std::printf("norm              %s eps %g\n", c.norm == NormKind::kRmsNorm ? "rmsnorm" : "layernorm", c.norm_eps);
  std::printf("add_bias          %s\n", c.add_bias ? "true" : "false");
  std::printf("m_emb/m_res/m_wid %g / %g / %g\n", c.m_emb, c.m_residual, c.m_width);
  std::printf("attn multiplier   %g\n", c.attention_multiplier);
  std::printf("tied embeddings   %s\n", c.tie_word_embeddings ? "true" : "false");
  std::printf("remainder         %s\n", RemainderName(c.remainder));
  std::printf("context           %lld\n", static_cast<long long>(c.n_positions));
  std::printf("weights dtype     %s\n", DTypeName((*ckpt)->weight_dtype()));
  std::printf("parameters        %lld (%.3f B)\n", static_cast<long long>((*ckpt)->num_parameters()),
              (*ckpt)->num_parameters() / 1e9);
  std::printf("weight bytes      %lld (%.2f GB)\n", static_cast<long long>((*ckpt)->weight_bytes()),
              (*ckpt)->weight_bytes() / 1e9);
  std::printf("KV bytes/token    %lld (bf16), %lld (fp32)\n", static_cast<long long>(c.kv_values_per_token() * 2),
              static_cast<long long>(c.kv_values_per_token() * 4));
  return 0;
}

int Logits(const Args& a) {
  auto ckpt = Checkpoint::Open(a.Get("--model"));
  if (!ckpt.ok()) return Fail(ckpt.status());
  auto ids = ParseIds(a.Get("--ids"));
  if (!ids.ok()) return Fail(ids.status());
  if (ids->empty()) return Fail(absl::InvalidArgumentError("--ids is empty"));
  if (!a.Has("--out")) return Fail(absl::InvalidArgumentError("--out FILE.npy is required"));
  auto backend = MakeBackend(**ckpt, a);
  if (!backend.ok()) return Fail(backend.status());
  const int64_t V = (*ckpt)->config().vocab_size;
  SequenceRunner run(**backend, static_cast<int>(ids->size()));
  if (!run.status().ok()) return Fail(run.status());
  std::vector<float> all, step;
  if (a.Has("--decode")) {
    for (size_t i = 0; i < ids->size(); ++i) {
      if (absl::Status st = run.Step({(*ids)[i]}, true, step); !st.ok()) return Fail(st);
      all.insert(all.end(), step.begin(), step.end());
    }
  } else {
    if (absl::Status st = run.Step(*ids, true, all); !st.ok()) return Fail(st);
  }
  if (absl::Status st = WriteNpyF32(a.Get("--out"), {static_cast<int64_t>(ids->size()), V}, all.data()); !st.ok()) {
    return Fail(st);
  }
  return 0;
}

absl::StatusOr<SamplingParams> ParseSampling(const Args& a) {
  SamplingParams s;
  s.temperature = 0.f;  // greedy unless asked
  for (absl::Status st :
       {ParseNumber(a, "--temperature", &s.temperature), ParseNumber(a, "--top-k", &s.top_k),
        ParseNumber(a, "--top-p", &s.top_p), ParseNumber(a, "--min-p", &s.min_p),
        ParseNumber(a, "--repetition-penalty", &s.repetition_penalty),
        ParseNumber(a, "--presence-penalty", &s.presence_penalty),
        ParseNumber(a, "--frequency-penalty", &s.frequency_penalty), ParseNumber(a, "--seed", &s.seed)}) {
    if (!st.ok()) return st;
  }
  s.has_seed = a.Has("--seed");
  if (absl::Status st = s.Validate(); !st.ok()) return st;
  return s;
}

#ifdef SBSERVE_HAVE_TOKENIZER
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int TrainTokenizer(const Args& a) {
  if (a.positional.size() != 1 || !a.Has("--corpus")) {
    return Fail(absl::InvalidArgumentError("train-tokenizer --corpus FILE --vocab N DIR"));
  }
  int32_t vocab = 2048;
  if (absl::Status st = ParseNumber(a, "--vocab", &vocab); !st.ok()) return Fail(st);
  auto text = ReadFile(a.Get("--corpus"));
  if (!text.ok()) return Fail(text.status());
  if (absl::Status st = WriteBpeTokenizer(a.positional[0], vocab, *text, /*allow_reserved=*/false); !st.ok()) {
    return Fail(st);
  }
  std::cout << "tokenizer with " << vocab << " ids written to " << a.positional[0] << "\n";
  return 0;
}

int EncodeFile(const Args& a) {
  auto tok = Tokenizer::Load(a.Get("--tokenizer"));
  if (!tok.ok()) return Fail(tok.status());
  auto text = ReadFile(a.Get("--in"));
  if (!text.ok()) return Fail(text.status());
  auto ids = (*tok)->Encode(*text, /*add_special_tokens=*/false);
  if (!ids.ok()) return Fail(ids.status());
  std::ofstream out(a.Get("--out"), std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(ids->data()), static_cast<std::streamsize>(ids->size() * 4));
  if (!out) return Fail(absl::InternalError(absl::StrCat(a.Get("--out"), ": write failed")));
  std::cout << ids->size() << " tokens from " << text->size() << " bytes\n";
  return 0;
}
#endif

int Generate(const Args& a) {
  auto ckpt = Checkpoint::Open(a.Get("--model"));
  if (!ckpt.ok()) return Fail(ckpt.status());
  auto sampling = ParseSampling(a);
  if (!sampling.ok()) return Fail(sampling.status());
  int max_tokens = 16;
  if (absl::Status st = ParseNumber(a, "--max-tokens", &max_tokens); !st.ok()) return Fail(st);
  std::vector<int32_t> prompt;
#ifdef SBSERVE_HAVE_TOKENIZER
  std::unique_ptr<Tokenizer> tok;
  if (a.Has("--prompt")) {
    auto t = Tokenizer::Load(a.Get("--model"));
    if (!t.ok()) return Fail(t.status());
    tok = std::move(*t);
    auto enc = tok->Encode(a.Get("--prompt"));
    if (!enc.ok()) return Fail(enc.status());
    prompt = *enc;
  }
#else
  if (a.Has("--prompt")) return Fail(absl::UnimplementedError("this build has no tokenizer; use --ids"));
#endif
  if (a.Has("--ids")) {
    auto ids = ParseIds(a.Get("--ids"));
    if (!ids.ok()) return Fail(ids.status());
    prompt = *ids;
  }
  if (prompt.empty()) return Fail(absl::InvalidArgumentError("give --ids or --prompt (non-empty)"));
  const ModelConfig& c = (*ckpt)->config();
  if (static_cast<int64_t>(prompt.size()) + max_tokens > c.n_positions) {
    return Fail(absl::OutOfRangeError(absl::StrCat("prompt (", prompt.size(), ") + max tokens (", max_tokens,
                                                   ") exceeds the context of ", c.n_positions)));
  }
  auto backend = MakeBackend(**ckpt, a);
  if (!backend.ok()) return Fail(backend.status());
  SequenceRunner run(**backend, static_cast<int>(prompt.size()) + max_tokens);
  if (!run.status().ok()) return Fail(run.status());
  SequenceSampler sampler(*sampling, prompt);
  std::vector<int32_t> out;
  std::vector<float> logits;
  std::vector<int32_t> chunk = prompt;
  const bool ignore_eos = a.Has("--ignore-eos");
  for (int i = 0; i < max_tokens; ++i) {
    if (absl::Status st = run.Step(chunk, false, logits); !st.ok()) return Fail(st);
    const int32_t next = sampler.Sample(logits);
    out.push_back(next);
    if (!ignore_eos && next == c.eos_token_id) break;
    chunk = {next};
  }
#ifdef SBSERVE_HAVE_TOKENIZER
  if (tok) {
    auto text = tok->Decode(out);
    if (!text.ok()) return Fail(text.status());
    std::cout << *text << "\n";
    return 0;
  }
#endif
  std::cout << absl::StrJoin(out, ",") << "\n";
  return 0;
}

int Bench(const Args& a) {
  auto ckpt = Checkpoint::Open(a.Get("--model"));
  if (!ckpt.ok()) return Fail(ckpt.status());
  int batch = 4, prompt_len = 128, gen = 32, prefill_reps = 1, mixed_chunk = 0;
  for (absl::Status st : {ParseNumber(a, "--batch", &batch), ParseNumber(a, "--prompt-len", &prompt_len),
                          ParseNumber(a, "--gen", &gen), ParseNumber(a, "--prefill-reps", &prefill_reps),
                          ParseNumber(a, "--mixed-chunk", &mixed_chunk)}) {
    if (!st.ok()) return Fail(st);
  }
  if (prefill_reps < 1) return Fail(absl::InvalidArgumentError("--prefill-reps must be at least 1"));
  if (mixed_chunk < 0) return Fail(absl::InvalidArgumentError("--mixed-chunk must be at least 0"));
  const std::string sample = a.Get("--sample", "device");
  if (sample != "device" && sample != "host") {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--sample: device or host, not \"", sample, "\"")));
  }
  auto backend = MakeBackend(**ckpt, a);
  if (!backend.ok()) return Fail(backend.status());
  Backend& be = **backend;
  const int64_t V = be.config().vocab_size;
  const int bs = 16;
  const int per_seq = (prompt_len + gen + bs - 1) / bs;
  const int chunk_blocks = (mixed_chunk + bs - 1) / bs;  // --mixed-chunk's extra sequence
  if (absl::Status st = be.InitKvCache({batch * per_seq + chunk_blocks, bs}); !st.ok()) return Fail(st);
  KvBlockAllocator alloc(batch * per_seq + chunk_blocks, bs);
  std::vector<std::vector<int32_t>> tables(batch);
  uint64_t s = 12345;
  auto next_id = [&] { s = s * 6364136223846793005ull + 1442695040888963407ull; return static_cast<int32_t>((s >> 33) % V); };
  // Appends one sequence's chunk of len tokens ending at context ctx to b, its block-table row padded
  // to b.max_blocks_per_seq; the chunk's last row is a logit row.
  auto add_seq = [&](Batch& b, const std::vector<int32_t>& table, int len, int ctx) {
    for (int t = 0; t < len; ++t) {
      b.tokens.push_back(next_id());
      b.positions.push_back(ctx - len + t);
    }
    b.cu_seqlens_q.push_back(static_cast<int32_t>(b.tokens.size()));
    b.context_lens.push_back(ctx);
    b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
    std::vector<int32_t> row = table;
    row.resize(b.max_blocks_per_seq, -1);
    b.block_tables.insert(b.block_tables.end(), row.begin(), row.end());
  };
  auto make_batch = [&](int len, int ctx) {
    Batch b;
    b.cu_seqlens_q.push_back(0);
    b.max_blocks_per_seq = per_seq;
    for (int q = 0; q < batch; ++q) {
      (void)alloc.EnsureCapacity(tables[q], ctx);
      add_seq(b, tables[q], len, ctx);
    }
    return b;
  };
  // Logit rows of the largest step: the batch, plus --mixed-chunk's sequence.
  std::vector<float> logits(static_cast<size_t>(batch + (mixed_chunk > 0 ? 1 : 0)) * V);
  // Each step ends as it does in the server: a greedy draw on the device when the backend samples
  // there (only ids come back), else the logits copied to the host (--sample host forces that).
  const bool on_device = be.samples_on_device() && sample == "device";
  const bool overlap = a.Has("--overlap");
  if (overlap && (!on_device || !be.overlaps_steps())) {
    return Fail(absl::FailedPreconditionError("--overlap needs a backend that overlaps steps (CUDA, device sampling)"));
  }
  using Clock = std::chrono::steady_clock;
  SamplingBatch greedy;
  SampledRows sampled;
  auto step = [&](const Batch& b) {
    const size_t rows = b.logit_rows.size();
    greedy.rows.resize(rows);
    return on_device ? be.ForwardSample(b, greedy, &sampled)
                     : be.Forward(b, std::span<float>(logits).first(rows * static_cast<size_t>(V)));
  };
  // The median wall time of `reps` steps, each on a batch from make() built before its clock starts.
  auto median_step_s = [&](int reps, const auto& make) -> absl::StatusOr<double> {
    std::vector<double> times;
    for (int rep = 0; rep < reps; ++rep) {
      const Batch b = make();
      auto t0 = Clock::now();
      if (absl::Status st = step(b); !st.ok()) return st;
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::nth_element(times.begin(), times.begin() + reps / 2, times.end());
    return times[reps / 2];
  };
  // Warm-up: one prefill and one decode step of the same shapes (allocations, library handles,
  // module loading), then the measured runs overwrite the same cache slots.
  if (absl::Status st = step(make_batch(prompt_len, prompt_len)); !st.ok()) return Fail(st);
  if (absl::Status st = step(make_batch(1, prompt_len + 1)); !st.ok()) return Fail(st);
  // The prefill step prefill_reps times (the same cache slots each time); the median is reported.
  const absl::StatusOr<double> prefill_s = median_step_s(prefill_reps, [&] { return make_batch(prompt_len, prompt_len); });
  if (!prefill_s.ok()) return Fail(prefill_s.status());
  auto t1 = Clock::now();
  for (int i = 1; i <= gen; ++i) {
    if (absl::Status st = step(make_batch(1, prompt_len + i)); !st.ok()) return Fail(st);
  }
  double decode_s = std::chrono::duration<double>(Clock::now() - t1).count();
  if (overlap) {
    // The same decode steps overlapped as the engine runs them (--overlap-steps): step i is
    // launched, its tokens fed from step i - 1's draws on the device, before step i - 1 is collected.
    std::vector<Backend::TokenFeed> feed(static_cast<size_t>(batch));
    for (int q = 0; q < batch; ++q) feed[q] = {q, q};  // decode batch: token q is logit row q
    auto t2 = Clock::now();
    for (int i = 1; i <= gen; ++i) {
      const Batch b = make_batch(1, prompt_len + i);
      std::span<const Backend::TokenFeed> f;  // the first step has no step before it
      if (i > 1) f = feed;
      if (absl::Status st = be.LaunchStep(b, greedy, f); !st.ok()) return Fail(st);
      if (i > 1) {
        if (absl::Status st = be.CollectStep(&sampled); !st.ok()) return Fail(st);
      }
    }
    if (absl::Status st = be.CollectStep(&sampled); !st.ok()) return Fail(st);
    const double overlapped_s = std::chrono::duration<double>(Clock::now() - t2).count();
    std::printf("decode, steps in order: %.2f ms/step\n", decode_s * 1e3 / gen);
    decode_s = overlapped_s;
  }
  std::printf("backend %s  batch %d  prompt %d  gen %d  sampling %s%s\n", be.name().c_str(), batch, prompt_len, gen,
              on_device ? "device (greedy)" : "host (logits copied)", overlap ? "  steps overlapped" : "");
  std::printf("prefill: %.2f ms, %.1f tokens/s%s\n", *prefill_s * 1e3, batch * prompt_len / *prefill_s,
              prefill_reps > 1 ? absl::StrCat(" (median of ", prefill_reps, ")").c_str() : "");
  std::printf("decode:  %.2f ms/step, %.1f tokens/s\n", decode_s * 1e3 / gen, batch * gen / decode_s);
  if (mixed_chunk > 0) {
    // A step as serving runs them while a prompt arrives: the batch's decodes (at the last decode
    // position again) and one more sequence's mixed_chunk-token chunk, once to warm up and then
    // prefill_reps times (the same cache slots each time); the median is reported.
    std::vector<int32_t> chunk_table;
    if (absl::Status st = alloc.EnsureCapacity(chunk_table, mixed_chunk); !st.ok()) return Fail(st);
    auto make_mixed = [&] {
      Batch b;
      b.cu_seqlens_q.push_back(0);
      b.max_blocks_per_seq = std::max(per_seq, chunk_blocks);
      for (int q = 0; q < batch; ++q) add_seq(b, tables[q], 1, prompt_len + gen);
      add_seq(b, chunk_table, mixed_chunk, mixed_chunk);
      return b;
    };
    if (absl::Status st = step(make_mixed()); !st.ok()) return Fail(st);
    const absl::StatusOr<double> mixed_s = median_step_s(prefill_reps, make_mixed);
    if (!mixed_s.ok()) return Fail(mixed_s.status());
    std::printf("mixed:   %d decodes + a %d-token chunk: %.2f ms/step (median of %d)\n", batch, mixed_chunk,
                *mixed_s * 1e3, prefill_reps);
  }
  return 0;
}

}  // namespace
}  // namespace sbserve

int main(int argc, char** argv) {
  using namespace sbserve;
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> rest(argv + 2, argv + argc);
  if (cmd == "--help" || cmd == "help" || cmd == "-h") {
    std::cout << kUsage;
    return 0;
  }
#ifdef SBSERVE_HAVE_TOKENIZER
  if (cmd == "tokenize") return TokenizeCommand(rest);
  if (cmd == "detokenize") return DetokenizeCommand(rest);
#endif
  auto args = ParseArgs(rest);
  if (!args.ok()) return Fail(args.status());
  if (cmd == "create") return Create(*args);
  if (cmd == "inspect") return Inspect(*args);
  if (cmd == "logits") return Logits(*args);
  if (cmd == "generate") return Generate(*args);
  if (cmd == "bench") return Bench(*args);
#ifdef SBSERVE_HAVE_TOKENIZER
  if (cmd == "train-tokenizer") return TrainTokenizer(*args);
  if (cmd == "encode") return EncodeFile(*args);
#endif
  std::cerr << "sbmodel: unknown command \"" << cmd << "\"\n" << kUsage;
  return 2;
}
