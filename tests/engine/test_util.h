// Helpers shared by the engine tests: random data, batch building, error norms.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "engine/batch.h"
#include "engine/kv_cache.h"
#include "engine/model/checkpoint.h"
#include "engine/model/model_writer.h"

namespace sbserve::testing {

// A random checkpoint of `options`, without a tokenizer, written to <temp>/sbserve_<name><pid> and
// opened.
inline absl::StatusOr<std::unique_ptr<Checkpoint>> OpenRandomCheckpoint(const std::string& name,
                                                                        CreateOptions options) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("sbserve_" + name + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(dir);
  options.tokenizer = false;
  if (absl::Status st = WriteRandomCheckpoint(dir, options); !st.ok()) return st;
  return Checkpoint::Open(dir);
}

// OpenRandomCheckpoint once per process and `name`, kept open for the tests that share it. A
// checkpoint that cannot be written or opened ends the process with the reason.
inline const Checkpoint& SharedRandomCheckpoint(const std::string& name, const CreateOptions& options) {
  static std::mutex mu;
  static auto* opened = new std::map<std::string, std::unique_ptr<Checkpoint>>();
  std::lock_guard<std::mutex> lock(mu);
  std::unique_ptr<Checkpoint>& slot = (*opened)[name];
  if (slot == nullptr) {
    auto c = OpenRandomCheckpoint(name, options);
    if (!c.ok()) {
      std::fprintf(stderr, "random checkpoint %s: %s\n", name.c_str(), c.status().ToString().c_str());
      std::abort();
    }
    slot = *std::move(c);
  }
  return *slot;
}

inline std::vector<float> RandomVector(std::mt19937_64& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ||a - b|| / ||b|| over n elements. The denominator is floored at 1e-6·sqrt(n): remainders of
// long contexts (e.g. 0.5^700) underflow float32, and relative error is meaningless below that.
inline double RelL2(const float* a, const double* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-12 * static_cast<double>(n)));
}
inline double RelL2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// A chunk of one sequence in a packed batch.
struct ChunkSpec {
  std::vector<int32_t> tokens;
  int32_t prefix = 0;  // tokens already cached before this chunk
  std::vector<int32_t>* table = nullptr;  // the sequence's block table (grown as needed)
  bool all_logits = false;
};

// Packs chunks into one Batch, allocating KV blocks.
inline Batch PackBatch(std::vector<ChunkSpec>& chunks, KvBlockAllocator& alloc) {
  Batch b;
  b.cu_seqlens_q.push_back(0);
  int32_t max_blocks = 0;
  for (ChunkSpec& c : chunks) {
    const int32_t ctx = c.prefix + static_cast<int32_t>(c.tokens.size());
    if (!alloc.EnsureCapacity(*c.table, ctx).ok()) return Batch{};
    max_blocks = std::max<int32_t>(max_blocks, static_cast<int32_t>(c.table->size()));
  }
  b.max_blocks_per_seq = max_blocks;
  for (ChunkSpec& c : chunks) {
    for (size_t t = 0; t < c.tokens.size(); ++t) {
      if (c.all_logits || t + 1 == c.tokens.size()) b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()));
      b.tokens.push_back(c.tokens[t]);
      b.positions.push_back(c.prefix + static_cast<int32_t>(t));
    }
    b.cu_seqlens_q.push_back(static_cast<int32_t>(b.tokens.size()));
    b.context_lens.push_back(c.prefix + static_cast<int32_t>(c.tokens.size()));
    std::vector<int32_t> row = *c.table;
    row.resize(static_cast<size_t>(max_blocks), -1);
    b.block_tables.insert(b.block_tables.end(), row.begin(), row.end());
  }
  return b;
}

}  // namespace sbserve::testing
