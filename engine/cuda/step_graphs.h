// Which captured graphs a step replays. Decode graphs are captured per (batch size, context
// bucket): the block tables of a bucket are padded to its row length, and the decode attention's
// split is chosen for its longest context, so short contexts are not split as if they were the
// model's full context (tests/bench/engine.md, step 9). Steps with prefill chunks replay piecewise
// graphs per padded token count (PiecewiseTokens).
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

// Steps with prefill chunks (not decode-only) of at most this many tokens replay piecewise graphs:
// the work between attention calls is captured per padded token count, and the attention, whose
// launch shapes follow the chunks, runs between the replays. Larger steps run kernel by kernel: there
// the GEMMs are compute-bound and their launches hide behind them.
inline constexpr int kPiecewiseMaxTokens = 256;

// The token count whose piecewise graphs a step of n tokens replays: n itself up to exact_rows (the
// small-batch GEMM kernels, which the exact row count selects), else n rounded up to a multiple of 16
// (up to 256 rows the GEMMs read the same weight bytes for padded rows). 0: no piecewise graph.
inline int PiecewiseTokens(int n, int exact_rows) {
  if (n <= 0 || n > kPiecewiseMaxTokens) return 0;
  if (n <= exact_rows) return n;
  return (n + 15) / 16 * 16;
}

}  // namespace sbserve::cuda
