// Which captured decode graph a step replays. Decode graphs are captured per (batch size, context
// bucket): the block tables of a bucket are padded to its row length, and the decode attention's
// split is chosen for its longest context, so short contexts are not split as if they were the
// model's full context (tests/bench/engine.md, step 9).
#pragma once

#include <algorithm>

namespace sbserve::cuda {

// The smallest bucket: power-of-two multiples of this many tokens (rounded up to whole blocks).
inline constexpr int kGraphMinContext = 512;

// The block-table row length of the bucket that holds a step whose longest context takes used_mb
// blocks of block_size tokens: a power-of-two multiple of the smallest bucket's blocks, capped by
// full_mb (the model's full context, the largest bucket).
inline int GraphContextBlocks(int used_mb, int block_size, int full_mb) {
  int mb = std::max(1, (kGraphMinContext + block_size - 1) / block_size);
  while (mb < used_mb) mb *= 2;
  return std::min(mb, full_mb);
}

}  // namespace sbserve::cuda
