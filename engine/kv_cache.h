// Paged KV cache bookkeeping: a pool of fixed-size blocks, one block table per sequence, and the
// automatic prefix cache. The backend owns the memory; this class only decides which block ids a
// sequence uses.
//
// Prefix caching. A full block whose K/V a successful step has written may be published under a
// hash chained over its token ids and the previous block's hash. A later sequence whose tokens
// start with the same full blocks takes references to those blocks instead of computing them
// (stick-breaking attention has no positional encoding and a token's K/V depends only on its
// prefix, so the reuse is exact). A block is shared only when full: sequences write only at
// positions at or past their cached prefix, so a shared (or published) block is never written.
// Blocks no sequence holds but whose content is published stay cached, in LRU order, and are
// evicted only when a fresh block is needed and no never-used block is left.
//
// A hash match is never trusted alone: every published block keeps its token ids and the identity
// (block id and registration generation) of the published block before it, and a lookup takes a
// block only when both match. By induction from the first block, a hit therefore holds exactly
// the tokens asked for, whatever the hash's collision odds; the hash only finds the candidate.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"

namespace sbserve {

// A sequence's progress through the chain of published blocks: how many of its leading full
// blocks are known to the cache, and the published block holding the last of them.
struct PrefixChain {
  int blocks = 0;           // leading full blocks matched or published so far
  uint64_t hash = 0;        // chained hash of those blocks (0 for none)
  int32_t parent = -1;      // published block with the content of block `blocks - 1`; -1 for none
  uint32_t parent_gen = 0;  // its registration generation
  bool broken = false;      // the parent's registration was dropped: publish nothing more
};

class KvBlockAllocator {
 public:
  KvBlockAllocator(int num_blocks, int block_size);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  // Blocks no sequence holds: never used or freed, plus cached-free ones (evictable on demand).
  int num_free() const { return static_cast<int>(free_.size() + lru_.size()); }
  // Blocks held by at least one sequence.
  int num_used() const { return num_blocks_ - num_free(); }
  // Blocks no sequence holds whose content is still published (the LRU list).
  int num_cached_free() const { return static_cast<int>(lru_.size()); }
  // Published blocks, held or not.
  int num_published() const { return static_cast<int>(by_hash_.size()); }
  int ref_count(int32_t block) const { return blocks_[static_cast<size_t>(block)].refs; }
  bool is_published(int32_t block) const { return blocks_[static_cast<size_t>(block)].published; }

  // Blocks needed to hold `tokens` tokens.
  int BlocksFor(int64_t tokens) const { return static_cast<int>((tokens + block_size_ - 1) / block_size_); }

  // Grows `table` so it covers `tokens` tokens with fresh blocks (never-used first, then the
  // least recently used cached-free ones, whose publication ends); RESOURCE_EXHAUSTED (and
  // `table` unchanged) when the pool has too few free blocks.
  absl::Status EnsureCapacity(std::vector<int32_t>& table, int64_t tokens);
  // Drops the table's reference to each of its blocks and clears it. A block whose last reference
  // goes stays cached when published (the table's tail first in line for eviction), else is free.
  void Free(std::vector<int32_t>& table);

  // The chained hash of a full block of `tokens` after the blocks hashing to `parent`.
  static uint64_t ChainHash(uint64_t parent, std::span<const int32_t> tokens);
  using HashFn = uint64_t (*)(uint64_t parent, std::span<const int32_t> tokens);
  // Tests replace the hash with a colliding one to show that collisions never give a wrong hit.
  void set_hash_for_testing(HashFn fn) { hash_ = fn; }

  // Appends to the empty `table` the published blocks holding the longest run of full blocks of
  // `tokens` that fits in `max_tokens` tokens, takes a reference to each, sets `chain` to match,
  // and returns the tokens they hold (a multiple of block_size).
  int AcquirePrefix(std::span<const int32_t> tokens, int64_t max_tokens, std::vector<int32_t>& table,
                    PrefixChain& chain);
  // Publishes the full blocks table[chain.blocks .. full_blocks) of a sequence whose K/V for
  // tokens[0 .. full_blocks * block_size) are written (each block's tokens are taken from
  // `tokens`). A block whose content is already published under an equal chain stays private
  // (the chain continues through the published one).
  void Publish(std::span<const int32_t> tokens, const std::vector<int32_t>& table, int full_blocks,
               PrefixChain& chain);

 private:
  struct Block {
    int32_t refs = 0;
    bool published = false;
    uint32_t gen = 0;  // bumped whenever a publication of this block ends
    uint64_t hash = 0;
    int32_t parent = -1;
    uint32_t parent_gen = 0;
    std::vector<int32_t> tokens;  // the block's token ids while published
    std::list<int32_t>::iterator lru_pos;
  };

  // The published block holding `tokens` right after `chain`'s last block, or -1.
  int32_t Find(uint64_t hash, std::span<const int32_t> tokens, const PrefixChain& chain) const;
  void Unpublish(int32_t id);  // ends a block's publication; an unheld one moves to free_

  int num_blocks_;
  int block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;  // LIFO stack of never-used or unpublished free block ids
  std::list<int32_t> lru_;     // unheld published blocks, least recently used first
  std::unordered_map<uint64_t, int32_t> by_hash_;
  HashFn hash_ = &ChainHash;
};

}  // namespace sbserve
