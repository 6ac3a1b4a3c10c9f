// scheduler_host_bench: the host's share of an engine step — packing, the sampling rows, recording
// the drawn tokens, detokenization, stop checks and event emission — measured on a backend that
// "samples on its device" instantly, so that nothing else is timed. It bounds what overlapping the
// host work of one step with the device work of the next could save.
//
// usage: scheduler_host_bench [TOKENIZER_JSON]   (default: the embedded demo model's tokenizer)
// For 1 and 64 streams of 512-token prompts and 128 output tokens (greedy, ignore_eos), with and
// without a detokenizer: microseconds per step overall and per decode-only step.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/scheduler.h"
#include "engine/tokenizer/tokenizer.h"

namespace sbserve {
namespace {

class InstantDeviceBackend : public Backend {
 public:
  explicit InstantDeviceBackend(int vocab) {
    config_.vocab_size = vocab;
    config_.n_positions = 4096;
  }
  std::string name() const override { return "instant"; }
  const ModelConfig& config() const override { return config_; }
  int64_t KvBytesPerToken() const override { return 1; }
  absl::Status InitKvCache(const KvCacheShape& s) override {
    shape_ = s;
    return absl::OkStatus();
  }
  KvCacheShape kv_cache_shape() const override { return shape_; }
  absl::Status Forward(const Batch&, std::span<float>) override { return absl::UnimplementedError("device only"); }
  bool samples_on_device() const override { return true; }
  absl::Status ForwardSample(const Batch& b, const SamplingBatch&, SampledRows* out) override {
    out->tokens.resize(b.logit_rows.size());
    for (size_t i = 0; i < out->tokens.size(); ++i) {
      out->tokens[i] = (b.tokens[b.logit_rows[i]] * 7 + 13) % (config_.vocab_size - 100) + 100;
    }
    out->logprobs.assign(out->tokens.size(), 0.f);
    out->top_n = 0;
    return absl::OkStatus();
  }

 private:
  ModelConfig config_;
  KvCacheShape shape_;
};

int Run(const std::string& tokenizer_path) {
  auto tok = Tokenizer::Load(tokenizer_path);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  const int vocab = static_cast<int>((*tok)->vocab_size());
  const std::unique_ptr<TextCodec> codec = NewTokenizerCodec(*std::move(tok));
  std::printf("vocab %d (%s)\n", vocab, tokenizer_path.c_str());
  for (bool detok : {false, true}) {
    for (int streams : {1, 64}) {
      InstantDeviceBackend backend(vocab);
      KvBlockAllocator kv(40000, 16);
      SchedulerOptions o;
      o.max_batch_tokens = 2048;
      o.max_num_seqs = 256;
      o.sampling_threads = 1;
      Scheduler s(o, &backend, &kv, detok ? codec.get() : nullptr, nullptr, nullptr);
      int64_t events = 0;
      for (int r = 0; r < streams; ++r) {
        GenerateRequest q;
        q.request_id = "r" + std::to_string(r);
        for (int i = 0; i < 512; ++i) q.prompt_ids.push_back((i * 31 + r * 17) % (vocab - 100) + 100);
        q.max_tokens = 128;
        q.ignore_eos = true;
        q.sampling.temperature = 0.f;
        s.Add(std::move(q), [&events](GenerateEvent) { ++events; }, absl::Now());
      }
      using Clock = std::chrono::steady_clock;
      int steps = 0, decode_steps = 0;
      double decode_s = 0;
      const auto t0 = Clock::now();
      while (s.HasWork()) {
        const auto a = Clock::now();
        if (absl::Status st = s.Step(absl::Now()); !st.ok()) {
          std::fprintf(stderr, "%s\n", st.ToString().c_str());
          return 1;
        }
        const double dt = std::chrono::duration<double>(Clock::now() - a).count();
        if (s.last_step_tokens() == streams) {
          ++decode_steps;
          decode_s += dt;
        }
        ++steps;
      }
      const double total = std::chrono::duration<double>(Clock::now() - t0).count();
      std::printf("detokenizer %-3s streams %2d: %3d steps, %6.1f us/step; %3d decode-only steps, %6.1f us/step; %lld events\n",
                  detok ? "on" : "off", streams, steps, total / steps * 1e6, decode_steps,
                  decode_steps ? decode_s / decode_steps * 1e6 : 0.0, static_cast<long long>(events));
    }
  }
  return 0;
}

}  // namespace
}  // namespace sbserve

int main(int argc, char** argv) {
  return sbserve::Run(argc > 1 ? argv[1] : SB_DEMO_TOKENIZER);
}
