#include "engine/cuda/device_sampler.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <limits>
#include <vector>

#include "engine/sampling_math.h"
#include "kernels/cuda_check.h"

namespace sbserve::cuda {
namespace {

constexpr int kThreads = 512;

// A candidate of an argmax: larger key first, then the lower id; id < 0 is no candidate.
struct Best {
  double key;
  int32_t id;
};

__device__ __forceinline__ Best Better(Best a, Best b) {
  if (a.id < 0) return b;
  if (b.id < 0) return a;
  return (a.key > b.key || (a.key == b.key && a.id < b.id)) ? a : b;
}

struct BetterOp {
  __device__ __forceinline__ Best operator()(const Best& a, const Best& b) const { return Better(a, b); }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a > b ? a : b; }
};
struct SumOp {
  __device__ __forceinline__ double operator()(double a, double b) const { return a + b; }
};

using BestReduce = cub::BlockReduce<Best, kThreads>;
using FloatReduce = cub::BlockReduce<float, kThreads>;
using DoubleReduce = cub::BlockReduce<double, kThreads>;
using DoubleScan = cub::BlockScan<double, kThreads>;

union TempStorage {
  typename BestReduce::TempStorage best;
  typename FloatReduce::TempStorage f;
  typename DoubleReduce::TempStorage d;
  typename DoubleScan::TempStorage scan;
};

// Log-sum-exp of each raw row that asks for logprobs, and its top n (ranked by logprob, then id),
// exactly as SequenceSampler::LogSoftmax and the scheduler's ranking compute them on the host.
__global__ void __launch_bounds__(kThreads) LogprobKernel(const float* logits, int64_t V, const RowSampling* rows,
                                                          float* lse_out, int top_stride, int32_t* top_ids,
                                                          float* top_lps) {
  const int r = blockIdx.x;
  const int n = rows[r].num_logprobs;
  if (n < 0) return;
  __shared__ TempStorage tmp;
  __shared__ float s_val;
  __shared__ Best s_best;
  const float* row = logits + r * V;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) mx = fmaxf(mx, row[i]);
  mx = FloatReduce(tmp.f).Reduce(mx, MaxOp());
  if (threadIdx.x == 0) s_val = mx;
  __syncthreads();
  mx = s_val;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) sum += ::exp(static_cast<double>(row[i]) - mx);
  __syncthreads();
  sum = DoubleReduce(tmp.d).Reduce(sum, SumOp());
  if (threadIdx.x == 0) s_val = __fadd_rn(mx, static_cast<float>(::log(sum)));
  __syncthreads();
  const float lse = s_val;
  if (threadIdx.x == 0) lse_out[r] = lse;
  // Top n by repeated selection: each round takes the best candidate ranked after the previous one.
  Best prev{INFINITY, -1};
  const int k = static_cast<int>(n < V ? n : V);
  for (int j = 0; j < k; ++j) {
    Best b{-INFINITY, -1};
    for (int64_t i = threadIdx.x; i < V; i += kThreads) {
      const double lp = __fsub_rn(row[i], lse);
      const bool after = prev.id < 0 || lp < prev.key || (lp == prev.key && i > prev.id);
      if (after) b = Better(b, Best{lp, static_cast<int32_t>(i)});
    }
    __syncthreads();
    b = BestReduce(tmp.best).Reduce(b, BetterOp());
    if (threadIdx.x == 0) {
      s_best = b;
      top_ids[r * top_stride + j] = b.id;
      top_lps[r * top_stride + j] = static_cast<float>(b.key);
    }
    __syncthreads();
    prev = s_best;
  }
}

// Biases, penalties and bans on the sparse adjusted tokens; the raw values are kept for the drawn token's
// logprob.
__global__ void AdjustKernel(float* logits, int64_t V, const RowSampling* rows, const LogitAdjust* adjust,
                             const int32_t* adjust_rows, int n, float* saved) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const LogitAdjust a = adjust[e];
  if (a.token < 0 || a.token >= V) return;
  const int r = adjust_rows[e];
  const RowSampling& rs = rows[r];
  float* p = logits + r * V + a.token;
  const float raw = *p;
  saved[e] = raw;
  *p = a.banned ? -INFINITY
                : sampling::Penalize(raw, a.bias, a.seen != 0, a.output_count, rs.repetition_penalty, rs.frequency_penalty,
                                     rs.presence_penalty);
}

// (z, id) pairs of the filtered rows, for the segmented sort.
__global__ void TemperKernel(const float* logits, int64_t V, const RowSampling* rows, const int32_t* filtered,
                             float* keys, int32_t* ids) {
  const int f = blockIdx.y;
  const int r = filtered[f];
  const float inv_t = rows[r].inv_temperature;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < V;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[f * V + i] = sampling::Tempered(logits[r * V + i], inv_t);
    ids[f * V + i] = static_cast<int32_t>(i);
  }
}

// One block per row: greedy argmax, or the Gumbel-max over all tokens, or over the kept prefix of
// the sorted (z, id) pairs of a filtered row.
__global__ void __launch_bounds__(kThreads) DrawKernel(const float* logits, int64_t V, const RowSampling* rows,
                                                       const int32_t* filter_index, const float* sorted_z,
                                                       const int32_t* sorted_ids, const LogitAdjust* adjust,
                                                       const float* saved, const float* lse, int32_t* out_tokens,
                                                       float* out_logprobs) {
  const int r = blockIdx.x;
  const RowSampling rs = rows[r];
  const float* row = logits + r * V;
  if (rs.forced_token >= 0) {
    // A prompt token's row: no draw, the token's logprob only (the host checked it is < V).
    if (threadIdx.x != 0) return;
    out_tokens[r] = rs.forced_token;
    if (rs.num_logprobs >= 0) out_logprobs[r] = __fsub_rn(row[rs.forced_token], lse[r]);
    return;
  }
  __shared__ TempStorage tmp;
  __shared__ int s_first;
  __shared__ double s_total;
  Best best{-INFINITY, -1};
  const int f = filter_index[r];
  if (rs.temperature == 0.f) {
    for (int64_t i = threadIdx.x; i < V; i += kThreads) best = Better(best, Best{row[i], static_cast<int32_t>(i)});
  } else if (f < 0) {
    for (int64_t i = threadIdx.x; i < V; i += kThreads) {
      const int32_t id = static_cast<int32_t>(i);
      const double key = static_cast<double>(sampling::Tempered(row[i], rs.inv_temperature)) +
                         sampling::Gumbel(rs.seed, rs.position, id);
      best = Better(best, Best{key, id});
    }
  } else {
    const float* z = sorted_z + f * V;
    const int32_t* ids = sorted_ids + f * V;
    int n = rs.top_k > 0 && rs.top_k < V ? rs.top_k : static_cast<int>(V);
    const float z_max = z[0];
    if (rs.top_p < 1.f) {
      double part = 0;
      for (int j = threadIdx.x; j < n; j += kThreads) part += sampling::Weight(z[j], z_max);
      part = DoubleReduce(tmp.d).Reduce(part, SumOp());
      if (threadIdx.x == 0) {
        s_total = part;
        s_first = n;
      }
      __syncthreads();
      const double target = static_cast<double>(rs.top_p) * s_total;
      // The first j whose inclusive prefix weight reaches the target, tile by tile.
      double carry = 0;
      for (int base = 0; base < n; base += kThreads) {
        const int j = base + threadIdx.x;
        const double w = j < n ? sampling::Weight(z[j], z_max) : 0.0;
        double incl, tile_sum;
        DoubleScan(tmp.scan).InclusiveSum(w, incl, tile_sum);
        if (j < n && carry + incl >= target) atomicMin(&s_first, j);
        __syncthreads();
        if (s_first < n) break;
        carry += tile_sum;
      }
      n = max(1, min(n, s_first + 1));
      __syncthreads();
    }
    if (rs.min_p > 0.f) {
      // Weights fall along the sorted order and the top one is exp(0) = 1: the kept tokens are the
      // prefix before the first weight below min_p.
      if (threadIdx.x == 0) s_first = n;
      __syncthreads();
      for (int j = threadIdx.x; j < n; j += kThreads) {
        if (sampling::Weight(z[j], z_max) < static_cast<double>(rs.min_p)) atomicMin(&s_first, j);
      }
      __syncthreads();
      n = max(1, s_first);
    }
    for (int j = threadIdx.x; j < n; j += kThreads) {
      const double key = static_cast<double>(z[j]) + sampling::Gumbel(rs.seed, rs.position, ids[j]);
      best = Better(best, Best{key, ids[j]});
    }
  }
  __syncthreads();
  best = BestReduce(tmp.best).Reduce(best, BetterOp());
  if (threadIdx.x != 0) return;
  const int32_t token = best.id < 0 ? 0 : best.id;
  out_tokens[r] = token;
  if (rs.num_logprobs >= 0) {
    float raw = row[token];
    for (int e = rs.adjust_begin; e < rs.adjust_end; ++e) {
      if (adjust[e].token == token) raw = saved[e];
    }
    out_logprobs[r] = __fsub_rn(raw, lse[r]);
  }
}

size_t Align(size_t x) { return (x + 15) & ~size_t{15}; }

}  // namespace

DeviceSampler::~DeviceSampler() {
  if (done_ != nullptr) cudaEventDestroy(done_);
  if (pinned_) cudaFreeHost(pinned_);
}

absl::Status DeviceSampler::Stage(size_t bytes) {
  if (bytes <= pinned_bytes_) return absl::OkStatus();
  if (pinned_) cudaFreeHost(pinned_);
  pinned_ = nullptr;
  pinned_bytes_ = 0;
  const size_t cap = std::max<size_t>(bytes * 2, 1 << 16);
  SB_CUDA_RETURN_IF_ERROR(cudaMallocHost(&pinned_, cap));
  pinned_bytes_ = cap;
  return absl::OkStatus();
}

absl::Status DeviceSampler::Sample(float* logits, int64_t vocab, const SamplingBatch& batch, SampledRows* out,
                                   cudaStream_t stream) {
  if (absl::Status st = Enqueue(logits, vocab, batch, stream); !st.ok()) return st;
  return Collect(out);
}

absl::Status DeviceSampler::Collect(SampledRows* out) {
  if (!pending_.outstanding) return absl::FailedPreconditionError("device sampler: nothing enqueued");
  pending_.outstanding = false;
  const int R = pending_.rows, top_n = pending_.top_n;
  out->Reset(R, top_n);
  if (R == 0) return absl::OkStatus();
  SB_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(done_));
  const char* ho = static_cast<const char*>(pinned_) + pending_.host_out;
  std::memcpy(out->tokens.data(), ho, R * sizeof(int32_t));
  std::memcpy(out->logprobs.data(), ho + pending_.out_lp, R * sizeof(float));
  if (top_n > 0) {
    std::memcpy(out->top_ids.data(), ho + pending_.out_top_ids, static_cast<size_t>(R) * top_n * sizeof(int32_t));
    std::memcpy(out->top_logprobs.data(), ho + pending_.out_top_lps, static_cast<size_t>(R) * top_n * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status DeviceSampler::Enqueue(float* logits, int64_t vocab, const SamplingBatch& batch, cudaStream_t stream) {
  if (pending_.outstanding) return absl::FailedPreconditionError("device sampler: the previous draws are not collected");
  const int R = static_cast<int>(batch.rows.size());
  const int A = static_cast<int>(batch.adjust.size());
  const int top_n = std::max(0, batch.max_logprobs());
  const bool any_logprobs = batch.max_logprobs() >= 0;
  pending_ = Pending{};
  pending_.top_n = top_n;
  if (R == 0) {
    pending_.outstanding = true;
    return absl::OkStatus();
  }
  if (vocab <= 0 || vocab > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("device sampler: vocabulary size out of range");
  }

  // Host-side layout of the inputs: rows, adjustments, the row of each adjustment, each row's
  // filtered-row index (-1: not filtered), the filtered rows, and the sort's segment offsets.
  std::vector<int32_t> adjust_rows(A), filter_index(R, -1), filtered;
  for (int r = 0; r < R; ++r) {
    const RowSampling& rs = batch.rows[r];
    if (rs.adjust_begin < 0 || rs.adjust_end < rs.adjust_begin || rs.adjust_end > A) {
      return absl::InvalidArgumentError("device sampler: a row's adjustment range is out of bounds");
    }
    if (rs.forced_token >= vocab) return absl::InvalidArgumentError("device sampler: a forced token is out of range");
    for (int e = rs.adjust_begin; e < rs.adjust_end; ++e) adjust_rows[e] = r;
    if (rs.filtered()) {
      filter_index[r] = static_cast<int>(filtered.size());
      filtered.push_back(r);
    }
  }
  const int F = static_cast<int>(filtered.size());
  std::vector<int32_t> offsets(F + 1);
  for (int f = 0; f <= F; ++f) offsets[f] = static_cast<int32_t>(f * vocab);
  if (static_cast<int64_t>(F) * vocab > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("device sampler: too many filtered rows for one sort");
  }

  const size_t off_rows = 0;
  const size_t off_adjust = Align(off_rows + R * sizeof(RowSampling));
  const size_t off_adjust_rows = Align(off_adjust + A * sizeof(LogitAdjust));
  const size_t off_filter_index = Align(off_adjust_rows + A * sizeof(int32_t));
  const size_t off_filtered = Align(off_filter_index + R * sizeof(int32_t));
  const size_t off_offsets = Align(off_filtered + F * sizeof(int32_t));
  const size_t in_bytes = Align(off_offsets + (F + 1) * sizeof(int32_t));
  // Outputs: tokens, drawn logprobs, top ids, top logprobs.
  constexpr size_t out_tokens = 0;
  const size_t out_lp = Align(out_tokens + R * sizeof(int32_t));
  const size_t out_top_ids = Align(out_lp + R * sizeof(float));
  const size_t out_top_lps = Align(out_top_ids + static_cast<size_t>(R) * top_n * sizeof(int32_t));
  const size_t out_bytes = Align(out_top_lps + static_cast<size_t>(R) * top_n * sizeof(float));

  if (absl::Status st = Stage(in_bytes + out_bytes); !st.ok()) return st;
  char* h = static_cast<char*>(pinned_);
  std::memcpy(h + off_rows, batch.rows.data(), R * sizeof(RowSampling));
  if (A > 0) {
    std::memcpy(h + off_adjust, batch.adjust.data(), A * sizeof(LogitAdjust));
    std::memcpy(h + off_adjust_rows, adjust_rows.data(), A * sizeof(int32_t));
  }
  std::memcpy(h + off_filter_index, filter_index.data(), R * sizeof(int32_t));
  if (F > 0) std::memcpy(h + off_filtered, filtered.data(), F * sizeof(int32_t));
  std::memcpy(h + off_offsets, offsets.data(), (F + 1) * sizeof(int32_t));

  for (auto [buf, bytes] : {std::pair<DeviceBuffer*, size_t>{&rows_, in_bytes}, {&out_, out_bytes},
                            {&saved_, std::max(A, 1) * sizeof(float)}, {&lse_, R * sizeof(float)}}) {
    if (absl::Status st = buf->Reserve(bytes); !st.ok()) return st;
  }
  char* d = rows_.get<char>();
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d, h, in_bytes, cudaMemcpyHostToDevice, stream));
  const auto* d_rows = reinterpret_cast<const RowSampling*>(d + off_rows);
  const auto* d_adjust = reinterpret_cast<const LogitAdjust*>(d + off_adjust);
  const auto* d_adjust_rows = reinterpret_cast<const int32_t*>(d + off_adjust_rows);
  const auto* d_filter_index = reinterpret_cast<const int32_t*>(d + off_filter_index);
  const auto* d_filtered = reinterpret_cast<const int32_t*>(d + off_filtered);
  const auto* d_offsets = reinterpret_cast<const int32_t*>(d + off_offsets);
  char* o = out_.get<char>();
  auto* d_tokens = reinterpret_cast<int32_t*>(o + out_tokens);
  auto* d_lp = reinterpret_cast<float*>(o + out_lp);
  auto* d_top_ids = reinterpret_cast<int32_t*>(o + out_top_ids);
  auto* d_top_lps = reinterpret_cast<float*>(o + out_top_lps);

  // Logprobs are of the raw rows, so they run before the adjustments.
  if (any_logprobs) {
    LogprobKernel<<<R, kThreads, 0, stream>>>(logits, vocab, d_rows, lse_.get<float>(), top_n, d_top_ids, d_top_lps);
    SB_CUDA_CHECK_LAUNCH();
  }
  if (A > 0) {
    AdjustKernel<<<(A + 255) / 256, 256, 0, stream>>>(logits, vocab, d_rows, d_adjust, d_adjust_rows, A,
                                                       saved_.get<float>());
    SB_CUDA_CHECK_LAUNCH();
  }
  if (F > 0) {
    const size_t n = static_cast<size_t>(F) * vocab;
    for (DeviceBuffer* b : {&keys_in_, &keys_out_, &ids_in_, &ids_out_}) {
      if (absl::Status st = b->Reserve(n * 4); !st.ok()) return st;
    }
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>((vocab + 255) / 256, 64)), F);
    TemperKernel<<<grid, 256, 0, stream>>>(logits, vocab, d_rows, d_filtered, keys_in_.get<float>(),
                                           ids_in_.get<int32_t>());
    SB_CUDA_CHECK_LAUNCH();
    size_t temp_bytes = 0;
    SB_CUDA_RETURN_IF_ERROR(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, temp_bytes, keys_in_.get<float>(), keys_out_.get<float>(), ids_in_.get<int32_t>(),
        ids_out_.get<int32_t>(), static_cast<int>(n), F, d_offsets, d_offsets + 1, 0, 32, stream));
    if (absl::Status st = sort_temp_.Reserve(temp_bytes); !st.ok()) return st;
    temp_bytes = sort_temp_.bytes();
    SB_CUDA_RETURN_IF_ERROR(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        sort_temp_.get(), temp_bytes, keys_in_.get<float>(), keys_out_.get<float>(), ids_in_.get<int32_t>(),
        ids_out_.get<int32_t>(), static_cast<int>(n), F, d_offsets, d_offsets + 1, 0, 32, stream));
  }
  DrawKernel<<<R, kThreads, 0, stream>>>(logits, vocab, d_rows, d_filter_index, keys_out_.get<float>(),
                                         ids_out_.get<int32_t>(), d_adjust, saved_.get<float>(), lse_.get<float>(),
                                         d_tokens, d_lp);
  SB_CUDA_CHECK_LAUNCH();
  char* ho = h + in_bytes;
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ho, o, out_bytes, cudaMemcpyDeviceToHost, stream));
  if (done_ == nullptr) SB_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  SB_CUDA_RETURN_IF_ERROR(cudaEventRecord(done_, stream));
  static_assert(out_tokens == 0, "device_tokens() is the start of out_");
  pending_.outstanding = true;
  pending_.rows = R;
  pending_.host_out = in_bytes;
  pending_.out_lp = out_lp;
  pending_.out_top_ids = out_top_ids;
  pending_.out_top_lps = out_top_lps;
  return absl::OkStatus();
}

}  // namespace sbserve::cuda
