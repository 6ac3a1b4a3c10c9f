// One engine step as the packer hands it to a backend.
//
// Glossary: B = sequences in the step, N = query tokens in the step (sum of chunk lengths),
// H = query heads, Hkv = key/value heads, d = head dim, V = vocab size.
//
// Sequence b contributes the chunk tokens[cu_seqlens_q[b] .. cu_seqlens_q[b+1]). Its cache holds
// context_lens[b] keys after this step: a cached prefix of context_lens[b] - chunk_len keys plus the
// chunk itself. Chunk token t sits at position prefix + t and attends keys 0 .. prefix + t - 1
// (strictly causal: never itself). A decode step is a chunk of length 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace sbserve {

struct Batch {
  std::vector<int32_t> tokens;        // [N]
  std::vector<int32_t> positions;     // [N] absolute position of each token in its sequence
  std::vector<int32_t> cu_seqlens_q;  // [B+1] exclusive prefix sum of chunk lengths, starts at 0
  std::vector<int32_t> context_lens;  // [B] keys in the cache after this step (prefix + chunk)
  std::vector<int32_t> block_tables;  // [B, max_blocks_per_seq] row-major KV block ids, -1 unused
  int32_t max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;    // ascending rows of `tokens` whose logits are wanted

  int num_seqs() const { return cu_seqlens_q.empty() ? 0 : static_cast<int>(cu_seqlens_q.size()) - 1; }
  int num_tokens() const { return static_cast<int>(tokens.size()); }
};

// Checks a batch against the backend's vocabulary and cache before any of it is used: array sizes,
// chunk lengths, positions, block ids inside the cache, token ids, logit rows, output size.
absl::Status ValidateBatch(const Batch& batch, int64_t vocab_size, int num_blocks, int block_size,
                           size_t logits_size);

}  // namespace sbserve
