// A backend for scheduler and engine tests: it stores every token in the paged cache and
// derives each logit row from the cached tokens it reads back through the block table, so a
// packing bug (positions, block tables, context lengths, a preemption that loses state) changes
// the generated tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/request.h"

namespace sbserve {

inline constexpr int kFakeVocab = 64;
inline constexpr int kFakeEos = 0;

// Every token decodes to "<id>,", so that text is predictable.
class FakeCommaStream : public TextStream {
 public:
  std::string Add(int32_t id) override { return absl::StrCat(id, ","); }
  std::string Flush() override { return ""; }
};
class FakeCommaCodec : public TextCodec {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view, bool) const override { return std::vector<int32_t>{}; }
  std::string Decode(const std::vector<int32_t>&, bool) const override { return ""; }
  std::string TokenBytes(int32_t, bool) const override { return ""; }
  std::unique_ptr<TextStream> NewStream(bool, std::span<const int32_t>) const override {
    return std::make_unique<FakeCommaStream>();
  }
  std::vector<int32_t> eos_ids() const override { return {kFakeEos}; }
};

class FakeBackend : public Backend {
 public:
  FakeBackend() {
    cfg_.vocab_size = kFakeVocab;
    cfg_.n_positions = 512;
    cfg_.n_layer = 1;
    cfg_.eos_token_id = kFakeEos;
  }
  std::string name() const override { return "fake"; }
  const ModelConfig& config() const override { return cfg_; }
  int64_t KvBytesPerToken() const override { return 4; }
  absl::Status InitKvCache(const KvCacheShape& shape) override {
    shape_ = shape;
    cache_.assign(static_cast<size_t>(shape.num_blocks) * shape.block_size, -1);
    return absl::OkStatus();
  }
  KvCacheShape kv_cache_shape() const override { return shape_; }

  absl::Status Forward(const Batch& b, std::span<float> logits) override {
    if (step_delay > absl::ZeroDuration()) absl::SleepFor(step_delay);
    if (fail_next) {
      fail_next = false;
      return absl::InternalError("injected failure");
    }
    batches.push_back(b);
    const int bs = shape_.block_size;
    size_t row = 0;
    for (int s = 0; s < b.num_seqs(); ++s) {
      const int begin = b.cu_seqlens_q[s], end = b.cu_seqlens_q[s + 1];
      const int ctx = b.context_lens[s];
      const int prefix = ctx - (end - begin);
      const int32_t* table = b.block_tables.data() + static_cast<size_t>(s) * b.max_blocks_per_seq;
      for (int t = begin; t < end; ++t) {
        const int pos = b.positions[t];
        if (pos != prefix + (t - begin)) return absl::InternalError("bad position");
        const int blk = table[pos / bs];
        if (blk < 0) return absl::InternalError("missing block");
        if (kv_guard != nullptr && (kv_guard->ref_count(blk) != 1 || kv_guard->is_published(blk))) {
          return absl::InternalError("KV write into a block that is shared, published or not held");
        }
        cache_[static_cast<size_t>(blk) * bs + pos % bs] = b.tokens[t];
      }
      // Each logit row of this sequence (its last token's, and prompt-logprob rows before it) is a
      // hash of the cached tokens up to and including its own.
      for (; row < b.logit_rows.size() && b.logit_rows[row] >= begin && b.logit_rows[row] < end; ++row) {
        const int upto = prefix + (b.logit_rows[row] - begin) + 1;
        uint64_t h = 1469598103934665603ull;
        for (int p = 0; p < upto; ++p) {
          const int32_t tok = cache_[static_cast<size_t>(table[p / bs]) * bs + p % bs];
          if (tok < 0) return absl::InternalError("read an unwritten cache slot");
          h = (h ^ static_cast<uint64_t>(tok + 1)) * 1099511628211ull;
        }
        float* out = logits.data() + row * kFakeVocab;
        for (int v = 0; v < kFakeVocab; ++v) {
          out[v] = static_cast<float>((h >> (v % 48)) % 1000) / 100.0f;
        }
        if (upto == eos_at_context) out[kFakeEos] = 100.0f;
        if (record_rows) rows.emplace_back(out, out + kFakeVocab);
      }
    }
    if (row != b.logit_rows.size()) return absl::InternalError("logit rows outside their sequences or not ascending");
    return absl::OkStatus();
  }

  std::vector<Batch> batches;
  bool record_rows = false;
  std::vector<std::vector<float>> rows;  // every logit row handed out, in order, when record_rows
  int eos_at_context = -1;
  bool fail_next = false;
  absl::Duration step_delay = absl::ZeroDuration();  // makes steps take wall time (engine tests)
  // When set, every KV write must land in a block held by exactly one sequence and not published
  // in the prefix cache; any other write fails the step (a shared block is never written).
  const KvBlockAllocator* kv_guard = nullptr;

 private:
  ModelConfig cfg_;
  KvCacheShape shape_;
  std::vector<int32_t> cache_;
};

}  // namespace sbserve
