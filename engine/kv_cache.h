// Paged KV cache bookkeeping: a pool of fixed-size blocks and one block table per sequence.
// The backend owns the memory; this class only decides which block ids a sequence uses.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace sbserve {

class KvBlockAllocator {
 public:
  KvBlockAllocator(int num_blocks, int block_size);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_blocks_ - num_free(); }

  // Blocks needed to hold `tokens` tokens.
  int BlocksFor(int64_t tokens) const { return static_cast<int>((tokens + block_size_ - 1) / block_size_); }

  // Grows `table` so it covers `tokens` tokens; RESOURCE_EXHAUSTED (and `table` unchanged) when
  // the pool has too few free blocks.
  absl::Status EnsureCapacity(std::vector<int32_t>& table, int64_t tokens);
  // Returns every block of `table` to the pool and clears it.
  void Free(std::vector<int32_t>& table);

 private:
  int num_blocks_;
  int block_size_;
  std::vector<int32_t> free_;  // LIFO stack of free block ids
};

}  // namespace sbserve
