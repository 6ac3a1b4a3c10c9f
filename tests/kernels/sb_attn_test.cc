// GPU tests of the stick-breaking attention kernels: KV append, varlen prefill (chunked, with
// prefixes) and paged split-K decode, against a float64 brute force of DESIGN.md section 1 and,
// when the engine is built, its fp32 CPU reference. Outputs are poisoned (NaN) before each run;
// every case runs twice and must match bitwise.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kernels/sb_attn.h"
#include "tests/kernels/sb_attn_reference.h"
#ifdef SB_HAVE_ENGINE_REF
#include "engine/cpu/sb_attention_ref.h"
#endif

namespace sbserve::kernels {
namespace {

using testing::Bf16ToFloat;
using testing::MakeProblem;
using testing::Problem;
using testing::ProblemSpec;

constexpr double kOTol = 5e-3;    // relative L2 of o per sequence (DESIGN.md section 1)
constexpr double kRemTol = 2e-3;  // relative L2 of rem per sequence
// rem decays like 2^-(sum of softplus): deep in a long context it sits far below fp32's range and
// every kernel (and the fp32 reference) returns 0. Norms below this floor per element count as
// the floor, so such sequences are judged by absolute error.
constexpr double kNormFloor = 1e-6;

bool HaveDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define REQUIRE_GPU()                                                              \
  do {                                                                             \
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device found: GPU test skipped";   \
  } while (0)

#define CUDA_OK(stmt)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (stmt);                                                                   \
    ASSERT_EQ(e_, cudaSuccess) << #stmt << ": " << cudaGetErrorString(e_);                     \
  } while (0)

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0 && cudaMalloc(&p_, n * sizeof(T)) != cudaSuccess) p_ = nullptr;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  cudaError_t Upload(const std::vector<T>& h) { return cudaMemcpy(p_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice); }
  cudaError_t Download(std::vector<T>& h) const {
    h.resize(n_);
    return cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
  }
  cudaError_t Poison() { return cudaMemset(p_, 0xff, n_ * sizeof(T)); }  // NaN in bf16 and fp32

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

struct DeviceProblem {
  DeviceBuffer<uint16_t> q, k_new, v_new, k_cache, v_cache, o;
  DeviceBuffer<int32_t> cu, ctx, tables, q_rows;
  DeviceBuffer<float> rem, bias;
  DeviceBuffer<unsigned char> workspace;
};

struct Outputs {
  std::vector<uint16_t> o;
  std::vector<float> rem;
};

enum class Path { kPrefill, kDecode };

// Decode split kernel and forced keys per split (0: the default) of RunOnDevice's decode runs.
SbDecodeKernel g_decode_kernel = SbDecodeKernel::kAuto;
int g_decode_keys_per_split = 0;
// Whether RunOnDevice's decode runs pass done_counters (the split grid combines its chunks itself,
// SBSERVE_DECODE_COMBINE_IN_SPLIT=1 in the engine) or run the combine kernel (the engine's default).
bool g_decode_combine_in_split = false;

// Both decode split kernels; decode cases run with each on the same problem (making a large
// problem costs more than running it).
constexpr SbDecodeKernel kDecodeKernels[] = {SbDecodeKernel::kCudaCore, SbDecodeKernel::kTensorCore};
const char* KernelName(SbDecodeKernel k) { return k == SbDecodeKernel::kCudaCore ? "cc" : "tc"; }

// Sets a kernel choice for one scope, then puts back kAuto.
template <typename Kernel>
struct ScopedKernel {
  ScopedKernel(Kernel* slot, Kernel k) : slot_(slot) { *slot_ = k; }
  ~ScopedKernel() { *slot_ = Kernel::kAuto; }
  Kernel* slot_;
};

// Prefill kernel of RunOnDevice's prefill runs: the mma.sync kernel, and the Hopper wgmma kernel
// where the device and build run it (head_dim 64 on sm_90a).
SbPrefillKernel g_prefill_kernel = SbPrefillKernel::kAuto;

// Runs fn(name) once per kernel of the path that can run pb (with the kernel's tag appended to
// `what`): both decode split kernels, and each prefill kernel the device has.
template <typename Fn>
void ForEachKernelOf(const Problem& pb, Path path, const char* what, Fn fn) {
  if (path == Path::kPrefill) {
    for (SbPrefillKernel k : {SbPrefillKernel::kMma, SbPrefillKernel::kWgmma, SbPrefillKernel::kWgmmaWide,
                              SbPrefillKernel::kWgmmaTma, SbPrefillKernel::kWgmmaWideTma}) {
      if (k != SbPrefillKernel::kMma && !SbAttnPrefillHasWgmma(pb.spec.head_dim)) continue;
      const std::string name = std::string(what) + " [" + SbPrefillKernelName(k) + "]";
      ScopedKernel scoped(&g_prefill_kernel, k);
      fn(name.c_str());
      if (::testing::Test::HasFatalFailure()) return;
    }
    return;
  }
  for (SbDecodeKernel k : kDecodeKernels) {
    const std::string name = std::string(what) + " [" + KernelName(k) + "]";
    ScopedKernel scoped(&g_decode_kernel, k);
    fn(name.c_str());
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// Early-exit threshold tau (0: off) and, when stats is set, the kernels' counters of skipped and
// total key tiles (prefill) or chunk CTAs (decode), summed over both runs.
struct EarlyExit {
  float tau = 0.f;
  unsigned long long* stats = nullptr;  // host [2]
};

// Uploads, appends the chunk's K/V, runs the kernel twice with poisoned outputs and checks the
// cache and the bitwise repeatability; returns the first run's outputs.
// fused_rows: q, k and v of each token sit in one padded row [q | k | v | pad] (the layout of the
// CUDA backend's c_attn output), read in place through q_row_stride / kv_row_stride.
// fused_append (decode): no SbKvAppend; the decode call appends the new K/V itself (k_new), and
// the cache is checked after its runs instead.
void RunOnDevice(const Problem& pb, Path path, bool reverse_rows, Outputs* out, const EarlyExit& ee = {},
                 bool fused_rows = false, bool fused_append = false) {
  const int d = pb.spec.head_dim, H = pb.spec.num_heads, Hkv = pb.spec.num_kv_heads;
  DeviceProblem dp;
  dp.q = DeviceBuffer<uint16_t>(pb.q.size());
  dp.k_new = DeviceBuffer<uint16_t>(pb.k_new.size());
  dp.v_new = DeviceBuffer<uint16_t>(pb.v_new.size());
  dp.k_cache = DeviceBuffer<uint16_t>(pb.k_cache.size());
  dp.v_cache = DeviceBuffer<uint16_t>(pb.v_cache.size());
  dp.o = DeviceBuffer<uint16_t>(pb.q.size());
  dp.cu = DeviceBuffer<int32_t>(pb.cu_seqlens.size());
  dp.ctx = DeviceBuffer<int32_t>(pb.context_lens.size());
  dp.tables = DeviceBuffer<int32_t>(pb.block_tables.size());
  dp.rem = DeviceBuffer<float>(static_cast<size_t>(pb.total_q) * H);
  dp.bias = DeviceBuffer<float>(pb.head_bias.size());
  ASSERT_NE(dp.k_cache.get(), nullptr);
  CUDA_OK(dp.q.Upload(pb.q));
  CUDA_OK(dp.k_new.Upload(pb.k_new));
  CUDA_OK(dp.v_new.Upload(pb.v_new));
  CUDA_OK(dp.k_cache.Upload(pb.k_cache));
  CUDA_OK(dp.v_cache.Upload(pb.v_cache));
  CUDA_OK(dp.cu.Upload(pb.cu_seqlens));
  CUDA_OK(dp.ctx.Upload(pb.context_lens));
  CUDA_OK(dp.tables.Upload(pb.block_tables));
  CUDA_OK(dp.bias.Upload(pb.head_bias));

  SbKvCache cache;
  cache.k = dp.k_cache.get();
  cache.v = dp.v_cache.get();
  cache.block_tables = dp.tables.get();
  cache.num_blocks = pb.num_blocks;
  cache.block_size = pb.spec.block_size;
  cache.max_blocks = pb.max_blocks;

  const int64_t fused_row = static_cast<int64_t>(H + 2 * Hkv) * d + 24;  // padding: strides are not H * d
  DeviceBuffer<uint16_t> fused;
  if (fused_rows) {
    std::vector<uint16_t> h(static_cast<size_t>(pb.total_q * fused_row), 0xffff);  // NaN padding
    for (int t = 0; t < pb.total_q; ++t) {
      std::copy_n(&pb.q[static_cast<size_t>(t) * H * d], H * d, &h[t * fused_row]);
      std::copy_n(&pb.k_new[static_cast<size_t>(t) * Hkv * d], Hkv * d, &h[t * fused_row + H * d]);
      std::copy_n(&pb.v_new[static_cast<size_t>(t) * Hkv * d], Hkv * d, &h[t * fused_row + (H + Hkv) * d]);
    }
    fused = DeviceBuffer<uint16_t>(h.size());
    CUDA_OK(fused.Upload(h));
    CUDA_OK(dp.k_new.Poison());  // the contiguous copies must not be read
    CUDA_OK(dp.v_new.Poison());
    CUDA_OK(dp.q.Poison());
  }
  SbKvAppendParams ap;
  ap.k = fused_rows ? fused.get() + H * d : dp.k_new.get();
  ap.v = fused_rows ? fused.get() + (H + Hkv) * d : dp.v_new.get();
  ap.kv_row_stride = fused_rows ? fused_row : 0;
  ap.cu_seqlens_q = dp.cu.get();
  ap.context_lens = dp.ctx.get();
  ap.cache = cache;
  ap.batch = pb.batch;
  ap.total_q = pb.total_q;
  ap.num_kv_heads = Hkv;
  ap.head_dim = d;
  const bool append_in_decode = fused_append && path == Path::kDecode;
  ASSERT_FALSE(append_in_decode && reverse_rows) << "the fused append reads k_new in the rows of q";
  auto check_cache = [&](const char* when) {
    std::vector<uint16_t> kc, vc;
    CUDA_OK(dp.k_cache.Download(kc));
    CUDA_OK(dp.v_cache.Download(vc));
    ASSERT_TRUE(kc == pb.k_full) << "K cache " << when << " differs from the expected cache";
    ASSERT_TRUE(vc == pb.v_full) << "V cache " << when << " differs from the expected cache";
  };
  absl::Status st;
  if (!append_in_decode) {
    st = SbKvAppend(ap, nullptr);
    ASSERT_TRUE(st.ok()) << st;
    CUDA_OK(cudaDeviceSynchronize());
    ASSERT_NO_FATAL_FAILURE(check_cache("after append"));
  }

  std::vector<int32_t> q_rows;
  if (path == Path::kDecode && reverse_rows) {
    // Sequence b's query sits in row q_rows[b] of q, o and rem.
    std::vector<uint16_t> q_perm(pb.q.size());
    for (int b = 0; b < pb.batch; ++b) {
      q_rows.push_back(pb.batch - 1 - b);
      std::copy_n(&pb.q[static_cast<size_t>(b) * H * d], H * d, &q_perm[static_cast<size_t>(q_rows[b]) * H * d]);
    }
    CUDA_OK(dp.q.Upload(q_perm));
    dp.q_rows = DeviceBuffer<int32_t>(q_rows.size());
    CUDA_OK(dp.q_rows.Upload(q_rows));
  }

  DeviceBuffer<unsigned long long> stats(2);
  CUDA_OK(stats.Upload({0, 0}));
  const size_t n_counters = static_cast<size_t>(pb.batch) * H;
  DeviceBuffer<unsigned> counters;
  if (path == Path::kDecode && g_decode_combine_in_split) {
    counters = DeviceBuffer<unsigned>(n_counters);
    CUDA_OK(counters.Upload(std::vector<unsigned>(n_counters, 0u)));
  }
  Outputs runs[2];
  for (int run = 0; run < 2; ++run) {
    CUDA_OK(dp.o.Poison());
    CUDA_OK(dp.rem.Poison());
    if (path == Path::kPrefill) {
      SbAttnPrefillParams p;
      p.q = fused_rows ? fused.get() : dp.q.get();
      p.q_row_stride = fused_rows ? fused_row : 0;
      p.cu_seqlens_q = dp.cu.get();
      p.context_lens = dp.ctx.get();
      p.cache = cache;
      p.head_bias = dp.bias.get();
      p.o = dp.o.get();
      p.rem = dp.rem.get();
      p.batch = pb.batch;
      p.total_q = pb.total_q;
      p.max_seqlen_q = pb.max_q;
      p.num_heads = H;
      p.num_kv_heads = Hkv;
      p.head_dim = d;
      p.scale = pb.scale;
      p.remainder = pb.spec.remainder;
      p.early_exit_log_threshold = ee.tau;
      p.early_exit_stats = ee.stats != nullptr ? stats.get() : nullptr;
      p.kernel = g_prefill_kernel;
      st = SbAttnPrefill(p, nullptr);
    } else {
      SbAttnDecodeParams p;
      p.q = fused_rows ? fused.get() : dp.q.get();
      p.q_row_stride = fused_rows ? fused_row : 0;
      p.q_rows = q_rows.empty() ? nullptr : dp.q_rows.get();
      p.context_lens = dp.ctx.get();
      p.cache = cache;
      p.head_bias = dp.bias.get();
      p.o = dp.o.get();
      p.rem = dp.rem.get();
      p.batch = pb.batch;
      p.max_context = pb.max_ctx;
      p.num_heads = H;
      p.num_kv_heads = Hkv;
      p.head_dim = d;
      p.scale = pb.scale;
      p.remainder = pb.spec.remainder;
      p.early_exit_log_threshold = ee.tau;
      p.early_exit_stats = ee.stats != nullptr ? stats.get() : nullptr;
      p.kernel = g_decode_kernel;
      p.keys_per_split = g_decode_keys_per_split;
      p.done_counters = counters.get();
      if (append_in_decode) {
        p.k_new = ap.k;
        p.v_new = ap.v;
        p.kv_row_stride = ap.kv_row_stride;
      }
      const size_t ws = SbAttnDecodeWorkspaceBytes(p);
      if (dp.workspace.size() < ws) dp.workspace = DeviceBuffer<unsigned char>(ws);
      CUDA_OK(dp.workspace.Poison());
      p.workspace = dp.workspace.get();
      st = SbAttnDecode(p, nullptr);
    }
    ASSERT_TRUE(st.ok()) << st;
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(dp.o.Download(runs[run].o));
    CUDA_OK(dp.rem.Download(runs[run].rem));
  }
  if (append_in_decode) ASSERT_NO_FATAL_FAILURE(check_cache("after the decode's own append"));
  if (counters.get() != nullptr) {
    std::vector<unsigned> left;
    CUDA_OK(counters.Download(left));
    ASSERT_TRUE(std::all_of(left.begin(), left.end(), [](unsigned c) { return c == 0u; }))
        << "the decode left done_counters non-zero";
  }
  if (ee.stats != nullptr) {
    std::vector<unsigned long long> h;
    CUDA_OK(stats.Download(h));
    ee.stats[0] = h[0], ee.stats[1] = h[1];
  }
  ASSERT_EQ(0, std::memcmp(runs[0].o.data(), runs[1].o.data(), runs[0].o.size() * 2))
      << "o differs between two identical runs (race?)";
  ASSERT_EQ(0, std::memcmp(runs[0].rem.data(), runs[1].rem.data(), runs[0].rem.size() * 4))
      << "rem differs between two identical runs (race?)";
  if (!q_rows.empty()) {
    // Undo the row permutation so callers see outputs in sequence order.
    Outputs perm = runs[0];
    for (int b = 0; b < pb.batch; ++b) {
      std::copy_n(&runs[0].o[static_cast<size_t>(q_rows[b]) * H * d], H * d, &perm.o[static_cast<size_t>(b) * H * d]);
      std::copy_n(&runs[0].rem[static_cast<size_t>(q_rows[b]) * H], H, &perm.rem[static_cast<size_t>(b) * H]);
    }
    runs[0] = perm;
  }
  *out = std::move(runs[0]);
}

// Rows of sequence b to check against float64: all of them unless that is too slow.
std::vector<int> RowsToCheck(const Problem& pb, int b) {
  const int q0 = pb.cu_seqlens[b], q_len = pb.cu_seqlens[b + 1] - q0;
  std::vector<int> rows;
  const double work = static_cast<double>(q_len) * pb.context_lens[b];
  const int stride = work <= 4e6 ? 1 : 37;
  for (int t = 0; t < q_len; ++t)
    if (t < 64 || t >= q_len - 64 || t % stride == 0) rows.push_back(q0 + t);
  return rows;
}

struct SeqError {
  double o = 0, rem = 0;
};

double RelL2(double err2, double ref2, size_t n) {
  const double floor2 = kNormFloor * kNormFloor * static_cast<double>(n);
  return std::sqrt(err2 / std::max(ref2, floor2));
}

// Checks outputs against the float64 brute force, per sequence; also no NaN/Inf anywhere.
void CheckAgainstFloat64(const Problem& pb, const Outputs& out, const char* what) {
  const int d = pb.spec.head_dim, H = pb.spec.num_heads;
  for (size_t i = 0; i < out.o.size(); ++i) {
    const float f = Bf16ToFloat(out.o[i]);
    ASSERT_TRUE(std::isfinite(f)) << what << ": o[" << i << "] = " << f << " (unwritten or NaN)";
  }
  for (size_t i = 0; i < out.rem.size(); ++i)
    ASSERT_TRUE(std::isfinite(out.rem[i])) << what << ": rem[" << i << "] = " << out.rem[i];

  std::vector<SeqError> errs(pb.batch);
  std::vector<std::vector<int>> rows(pb.batch);
  struct Job { int b, row; };
  std::vector<Job> jobs;
  for (int b = 0; b < pb.batch; ++b) {
    rows[b] = RowsToCheck(pb, b);
    for (int r : rows[b]) jobs.push_back({b, r});
  }
  // Per-job squared sums, reduced per sequence afterwards.
  std::vector<double> e_o(jobs.size()), r_o(jobs.size()), e_r(jobs.size()), r_r(jobs.size());
  testing::ParallelFor(jobs.size(), [&](size_t j) {
    std::vector<double> o(d);
    double eo = 0, ro = 0, er = 0, rr = 0;
    for (int h = 0; h < H; ++h) {
      double rem;
      testing::ReferenceRow(pb, jobs[j].b, jobs[j].row, h, o.data(), &rem);
      const size_t base = (static_cast<size_t>(jobs[j].row) * H + h) * d;
      for (int c = 0; c < d; ++c) {
        const double diff = Bf16ToFloat(out.o[base + c]) - o[c];
        eo += diff * diff;
        ro += o[c] * o[c];
      }
      const double dr = out.rem[static_cast<size_t>(jobs[j].row) * H + h] - rem;
      er += dr * dr;
      rr += rem * rem;
    }
    e_o[j] = eo, r_o[j] = ro, e_r[j] = er, r_r[j] = rr;
  });
  std::vector<double> so(pb.batch), sro(pb.batch), sr(pb.batch), srr(pb.batch);
  for (size_t j = 0; j < jobs.size(); ++j) {
    so[jobs[j].b] += e_o[j], sro[jobs[j].b] += r_o[j], sr[jobs[j].b] += e_r[j], srr[jobs[j].b] += r_r[j];
  }
  double worst_o = 0, worst_rem = 0;
  for (int b = 0; b < pb.batch; ++b) {
    const size_t n = rows[b].size() * H;
    const double eo = RelL2(so[b], sro[b], n * d);
    const double er = RelL2(sr[b], srr[b], n);
    worst_o = std::max(worst_o, eo);
    worst_rem = std::max(worst_rem, er);
    EXPECT_LE(eo, kOTol) << what << ": sequence " << b << " (q_len " << pb.cu_seqlens[b + 1] - pb.cu_seqlens[b]
                         << ", context " << pb.context_lens[b] << ") o rel L2 vs float64";
    EXPECT_LE(er, kRemTol) << what << ": sequence " << b << " (q_len " << pb.cu_seqlens[b + 1] - pb.cu_seqlens[b]
                           << ", context " << pb.context_lens[b] << ") rem rel L2 vs float64";
  }
  std::printf("  %-44s float64: worst o %.2e  rem %.2e over %d sequences\n", what, worst_o, worst_rem, pb.batch);
}

#ifdef SB_HAVE_ENGINE_REF
// Against the engine's fp32 CPU reference. Small problems run whole; large ones on a sample of
// query rows per sequence (first, last and evenly spaced), each as a one-row chunk at its own
// position over the same paged cache, so no case goes without the cross-check.
void CheckAgainstFp32(const Problem& pb, const Outputs& out, const char* what) {
  double work = 0;
  for (int b = 0; b < pb.batch; ++b)
    work += static_cast<double>(pb.cu_seqlens[b + 1] - pb.cu_seqlens[b]) * pb.context_lens[b];
  const bool whole = work * pb.spec.num_heads <= 4e7;
  const int d = pb.spec.head_dim, H = pb.spec.num_heads, mb = pb.max_blocks;
  // The rows to check (packed indices), grouped as sub-sequences: whole chunks, or single rows.
  std::vector<int32_t> rows, sub_cu = {0}, sub_ctx, sub_tables;
  std::vector<int> sub_seq;  // original sequence of each sub-sequence
  for (int b = 0; b < pb.batch; ++b) {
    const int r0 = pb.cu_seqlens[b], L = pb.cu_seqlens[b + 1] - r0, first_pos = pb.context_lens[b] - L;
    std::vector<int> picks;
    if (whole) {
      for (int i = 0; i < L; ++i) picks.push_back(i);
    } else {
      constexpr int kRows = 12;
      for (int k = 0; k < kRows; ++k) picks.push_back(static_cast<int>(static_cast<int64_t>(L - 1) * k / (kRows - 1)));
      std::sort(picks.begin(), picks.end());
      picks.erase(std::unique(picks.begin(), picks.end()), picks.end());
    }
    auto add_sub = [&](int n_rows, int ctx) {
      sub_cu.push_back(sub_cu.back() + n_rows);
      sub_ctx.push_back(ctx);
      sub_tables.insert(sub_tables.end(), pb.block_tables.begin() + static_cast<size_t>(b) * mb,
                        pb.block_tables.begin() + static_cast<size_t>(b + 1) * mb);
      sub_seq.push_back(b);
    };
    if (whole) {
      for (int i : picks) rows.push_back(r0 + i);
      add_sub(L, pb.context_lens[b]);
    } else {
      for (int i : picks) {
        rows.push_back(r0 + i);
        add_sub(1, first_pos + i + 1);
      }
    }
  }
  const size_t nr = rows.size();
  std::vector<float> q(nr * H * d), kc(pb.k_full.size()), vc(pb.v_full.size());
  for (size_t r = 0; r < nr; ++r)
    for (int j = 0; j < H * d; ++j) q[r * H * d + j] = Bf16ToFloat(pb.q[static_cast<size_t>(rows[r]) * H * d + j]);
  for (size_t i = 0; i < kc.size(); ++i) kc[i] = Bf16ToFloat(pb.k_full[i]), vc[i] = Bf16ToFloat(pb.v_full[i]);
  std::vector<float> o(q.size()), rem(nr * H);
  SbAttnRefParams rp;
  rp.q = q.data();
  rp.k_cache = kc.data();
  rp.v_cache = vc.data();
  rp.cu_seqlens_q = sub_cu.data();
  rp.context_lens = sub_ctx.data();
  rp.block_tables = sub_tables.data();
  rp.head_bias = pb.head_bias.data();
  rp.o = o.data();
  rp.rem = rem.data();
  rp.batch = static_cast<int>(sub_ctx.size());
  rp.num_heads = H;
  rp.num_kv_heads = pb.spec.num_kv_heads;
  rp.head_dim = d;
  rp.block_size = pb.spec.block_size;
  rp.max_blocks = mb;
  rp.scale = pb.scale;
  rp.remainder = pb.spec.remainder == SbRemainder::kNone       ? Remainder::kR0
                 : pb.spec.remainder == SbRemainder::kOwnValue ? Remainder::kR1
                                                                : Remainder::kR2;
  SbAttentionRef(rp, nullptr);
  // Errors per original sequence over its checked rows.
  std::vector<double> eo(pb.batch), ro(pb.batch), er(pb.batch), rr(pb.batch);
  std::vector<size_t> n(pb.batch);
  for (size_t s = 0; s + 1 < sub_cu.size(); ++s) {
    const int b = sub_seq[s];
    for (int r = sub_cu[s]; r < sub_cu[s + 1]; ++r) {
      const size_t orig = static_cast<size_t>(rows[r]);
      for (int h = 0; h < H; ++h) {
        for (int c = 0; c < d; ++c) {
          const size_t i = (orig * H + h) * d + c, j = (static_cast<size_t>(r) * H + h) * d + c;
          const double diff = Bf16ToFloat(out.o[i]) - o[j];
          eo[b] += diff * diff, ro[b] += static_cast<double>(o[j]) * o[j];
        }
        const double dr = static_cast<double>(out.rem[orig * H + h]) - rem[static_cast<size_t>(r) * H + h];
        er[b] += dr * dr, rr[b] += static_cast<double>(rem[static_cast<size_t>(r) * H + h]) * rem[static_cast<size_t>(r) * H + h];
        ++n[b];
      }
    }
  }
  double worst_o = 0, worst_rem = 0;
  for (int b = 0; b < pb.batch; ++b) {
    worst_o = std::max(worst_o, RelL2(eo[b], ro[b], n[b] * d));
    worst_rem = std::max(worst_rem, RelL2(er[b], rr[b], n[b]));
  }
  EXPECT_LE(worst_o, kOTol) << what << ": o vs the fp32 CPU reference";
  EXPECT_LE(worst_rem, kRemTol) << what << ": rem vs the fp32 CPU reference";
  std::printf("  %-44s fp32 ref (%s, %zu rows): worst o %.2e  rem %.2e\n", what, whole ? "whole" : "sampled rows", nr,
              worst_o, worst_rem);
}
#else
void CheckAgainstFp32(const Problem&, const Outputs&, const char*) {}
#endif

// Decode runs once with each split kernel.
void RunAndCheck(const ProblemSpec& spec, Path path, const char* what, bool reverse_rows = false) {
  const Problem pb = MakeProblem(spec);
  ForEachKernelOf(pb, path, what, [&](const char* name) {
    Outputs out;
    ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, path, reverse_rows, &out));
    ASSERT_NO_FATAL_FAILURE(CheckAgainstFloat64(pb, out, name));
    CheckAgainstFp32(pb, out, name);
  });
}

struct Shape {
  int d, H, Hkv, bs;
};
const Shape kShapes[] = {{64, 4, 4, 16}, {64, 8, 2, 64}, {128, 6, 1, 16}, {128, 4, 4, 64}};

std::string Name(const char* base, const Shape& s) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "%s d%d H%d Hkv%d bs%d", base, s.d, s.H, s.Hkv, s.bs);
  return buf;
}

ProblemSpec Spec(const Shape& s, std::vector<int> q_lens, std::vector<int> prefix = {}, uint64_t seed = 1) {
  ProblemSpec spec;
  spec.head_dim = s.d;
  spec.num_heads = s.H;
  spec.num_kv_heads = s.Hkv;
  spec.block_size = s.bs;
  spec.q_lens = std::move(q_lens);
  spec.prefix_lens = std::move(prefix);
  spec.seed = seed;
  return spec;
}

// q, k and v read in place from fused rows give bitwise the outputs of contiguous copies, and the
// cache holds the same K/V (RunOnDevice checks it), for prefill with prefixes and decode.
TEST(SbAttnFusedRows, PrefillAndDecodeMatchContiguousInputsBitwise) {
  REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    for (Path path : {Path::kPrefill, Path::kDecode}) {
      const ProblemSpec spec = path == Path::kPrefill ? Spec(s, {1, 37, 130}, {0, 16, 70}, 3) : Spec(s, {1, 1, 1}, {5, 64, 300}, 4);
      SCOPED_TRACE(Name(path == Path::kPrefill ? "prefill" : "decode", s));
      const Problem pb = MakeProblem(spec);
      Outputs plain, in_place;
      ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, path, false, &plain));
      ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, path, false, &in_place, {}, /*fused_rows=*/true));
      ASSERT_EQ(plain.o, in_place.o);
      ASSERT_EQ(0, std::memcmp(plain.rem.data(), in_place.rem.data(), plain.rem.size() * 4));
      ASSERT_NO_FATAL_FAILURE(CheckAgainstFloat64(pb, in_place, "fused rows"));
    }
  }
}

// The decode split kernels append the step's K/V themselves (SbAttnDecodeParams::k_new): the cache
// ends as after SbKvAppend (RunOnDevice checks it) and the outputs are bitwise those of the
// separate append, with contiguous and fused rows, MHA and GQA (groups split over CTAs), contexts
// from 1, a forced small chunk, and the early exit (whose skipped chunk CTAs must still append).
TEST(SbAttnDecode, FusedAppendMatchesSeparateAppend) {
  REQUIRE_GPU();
  const std::vector<int> ctx = {1, 2, 65, 300, 2049};
  std::vector<int> prefix;
  for (int c : ctx) prefix.push_back(c - 1);
  for (const Shape& s : {Shape{64, 4, 4, 16}, Shape{64, 16, 1, 32}, Shape{128, 8, 2, 16}, Shape{128, 16, 2, 64}}) {
    const Problem pb = MakeProblem(Spec(s, std::vector<int>(ctx.size(), 1), prefix, 9));
    for (int kps : {0, 64}) {
      g_decode_keys_per_split = kps;
      for (float tau : {0.f, 2.f}) {
        for (bool fused_rows : {false, true}) {
          const std::string what = Name("decode fused append", s) + (kps ? " chunk 64" : "") +
                                   (tau > 0 ? " early exit" : "") + (fused_rows ? " fused rows" : "");
          ForEachKernelOf(pb, Path::kDecode, what.c_str(), [&](const char* name) {
            SCOPED_TRACE(name);
            EarlyExit ee;
            ee.tau = tau;
            Outputs separate, fused;
            ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, Path::kDecode, false, &separate, ee, fused_rows));
            ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, Path::kDecode, false, &fused, ee, fused_rows, true));
            ASSERT_EQ(separate.o, fused.o);
            ASSERT_EQ(0, std::memcmp(separate.rem.data(), fused.rem.data(), separate.rem.size() * 4));
            if (tau == 0.f) ASSERT_NO_FATAL_FAILURE(CheckAgainstFloat64(pb, fused, name));
          });
        }
      }
    }
    g_decode_keys_per_split = 0;
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The split grid's own combine (SbAttnDecodeParams::done_counters, SBSERVE_DECODE_COMBINE_IN_SPLIT=1) gives
// bitwise the combine kernel's o and rem, and leaves the counters zero (RunOnDevice checks it):
// MHA and GQA (several CTAs per KV head), d 64 and 128, one chunk per sequence and hundreds (a
// forced 64-key chunk), contexts from 1, rows in reverse order, the decode's own K/V append (R1
// reads v_new then) and each remainder. With the early exit the counters are ignored.
TEST(SbAttnDecode, CombineInSplitMatchesCombineKernel) {
  REQUIRE_GPU();
  const std::vector<int> ctx = {1, 2, 65, 300, 2049, 9000};
  std::vector<int> prefix;
  for (int c : ctx) prefix.push_back(c - 1);
  struct Case {
    Shape s;
    SbRemainder r;
  };
  for (const Case& c : {Case{{64, 4, 4, 16}, SbRemainder::kOwnValue}, Case{{64, 16, 1, 32}, SbRemainder::kHeadBias},
                        Case{{128, 8, 2, 16}, SbRemainder::kOwnValue}, Case{{128, 16, 2, 64}, SbRemainder::kNone}}) {
    ProblemSpec spec = Spec(c.s, std::vector<int>(ctx.size(), 1), prefix, 21);
    spec.remainder = c.r;
    spec.shift = 0.5f;
    const Problem pb = MakeProblem(spec);
    for (int kps : {0, 64, 1024}) {
      g_decode_keys_per_split = kps;
      for (int mode = 0; mode < 4; ++mode) {  // 0 plain, 1 reversed rows, 2 own append, 3 early exit
        const bool reverse = mode == 1, own_append = mode == 2;
        EarlyExit ee;
        ee.tau = mode == 3 ? 2.f : 0.f;
        const std::string what = Name("decode combine in split", c.s) + " kps " + std::to_string(kps) + " mode " +
                                 std::to_string(mode);
        ForEachKernelOf(pb, Path::kDecode, what.c_str(), [&](const char* name) {
          SCOPED_TRACE(name);
          Outputs kernel, in_split;
          g_decode_combine_in_split = false;
          ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, Path::kDecode, reverse, &kernel, ee, false, own_append));
          g_decode_combine_in_split = true;
          ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, Path::kDecode, reverse, &in_split, ee, false, own_append));
          g_decode_combine_in_split = false;
          ASSERT_EQ(kernel.o, in_split.o);
          ASSERT_EQ(0, std::memcmp(kernel.rem.data(), in_split.rem.data(), kernel.rem.size() * 4));
          if (ee.tau == 0.f) ASSERT_NO_FATAL_FAILURE(CheckAgainstFloat64(pb, in_split, name));
        });
        g_decode_combine_in_split = false;
        if (::testing::Test::HasFatalFailure()) break;
      }
      if (::testing::Test::HasFatalFailure()) break;
    }
    g_decode_keys_per_split = 0;
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(SbAttnPrefill, SmallCase) {
  REQUIRE_GPU();
  RunAndCheck(Spec({64, 2, 1, 16}, {1, 2, 70}, {0, 3, 20}), Path::kPrefill, "prefill small");
}

TEST(SbAttnDecode, SmallCase) {
  REQUIRE_GPU();
  RunAndCheck(Spec({64, 2, 1, 16}, {1, 1, 1}, {0, 5, 150}), Path::kDecode, "decode small");
}

TEST(SbAttnPrefill, Lengths) {
  REQUIRE_GPU();
  for (const Shape& s : kShapes)
    RunAndCheck(Spec(s, {1, 2, 63, 64, 65, 127, 1000, 4096}), Path::kPrefill, Name("prefill lengths", s).c_str());
}

TEST(SbAttnPrefill, Long16384) {
  REQUIRE_GPU();
  RunAndCheck(Spec({64, 2, 1, 64}, {16384}), Path::kPrefill, "prefill 16384 d64");
  RunAndCheck(Spec({128, 2, 2, 16}, {16384}), Path::kPrefill, "prefill 16384 d128");
  ProblemSpec low = Spec({64, 2, 2, 16}, {16384});
  low.shift = 1.f;
  RunAndCheck(low, Path::kPrefill, "prefill 16384 d64 small-beta");
}

TEST(SbAttnPrefill, RaggedBatches) {
  REQUIRE_GPU();
  std::mt19937 rng(7);
  for (int batch : {1, 5, 64}) {
    for (const Shape& s : kShapes) {
      std::vector<int> lens(batch);
      for (int& l : lens) l = 1 + static_cast<int>(rng() % (batch == 64 ? 300 : 1500));
      RunAndCheck(Spec(s, lens, {}, rng()), Path::kPrefill, Name(("ragged B=" + std::to_string(batch)).c_str(), s).c_str());
    }
  }
}

TEST(SbAttnPrefill, ChunkedWithPrefixes) {
  REQUIRE_GPU();
  const std::vector<int> chunks = {1, 5, 64, 130, 200, 77, 500, 1};
  const std::vector<int> prefixes = {0, 1, 17, 64, 100, 1000, 3000, 4095};
  for (const Shape& s : kShapes) RunAndCheck(Spec(s, chunks, prefixes), Path::kPrefill, Name("chunked", s).c_str());
  ProblemSpec low = Spec({64, 6, 1, 16}, chunks, prefixes);
  low.shift = 1.f;
  RunAndCheck(low, Path::kPrefill, "chunked small-beta d64 G6");
}

TEST(SbAttnPrefill, RemainderVariants) {
  REQUIRE_GPU();
  for (SbRemainder r : {SbRemainder::kOwnValue, SbRemainder::kHeadBias}) {
    for (const Shape& s : {Shape{64, 4, 1, 16}, Shape{128, 4, 2, 64}}) {
      ProblemSpec spec = Spec(s, {1, 40, 300}, {0, 60, 10});
      spec.remainder = r;
      spec.shift = 0.7f;
      RunAndCheck(spec, Path::kPrefill, Name(r == SbRemainder::kOwnValue ? "R1" : "R2", s).c_str());
    }
  }
}

TEST(SbAttnPrefill, ScaleOneOverD) {
  REQUIRE_GPU();
  ProblemSpec spec = Spec({64, 4, 4, 16}, {1000, 333});
  spec.scale = 1.f / 64.f;
  RunAndCheck(spec, Path::kPrefill, "prefill scale 1/64");
}

TEST(SbAttnDecode, Contexts) {
  REQUIRE_GPU();
  const std::vector<int> ctx = {1, 2, 17, 64, 65, 1000, 4096, 32768};
  for (const Shape& s : kShapes) {
    std::vector<int> prefix;
    for (int c : ctx) prefix.push_back(c - 1);
    RunAndCheck(Spec(s, std::vector<int>(ctx.size(), 1), prefix), Path::kDecode, Name("decode contexts", s).c_str());
  }
  ProblemSpec low = Spec({64, 6, 1, 16}, std::vector<int>(ctx.size(), 1));
  for (int c : ctx) low.prefix_lens.push_back(c - 1);
  low.shift = 1.f;
  RunAndCheck(low, Path::kDecode, "decode small-beta d64 G6");
}

TEST(SbAttnDecode, Batch64RandomContexts) {
  REQUIRE_GPU();
  std::mt19937 rng(11);
  for (const Shape& s : {Shape{64, 36, 36, 16}, Shape{64, 12, 2, 64}, Shape{128, 8, 2, 16}}) {
    std::vector<int> prefix(64);
    for (int& p : prefix) p = static_cast<int>(rng() % 5000);
    RunAndCheck(Spec(s, std::vector<int>(64, 1), prefix, rng()), Path::kDecode, Name("decode B=64", s).c_str(),
                /*reverse_rows=*/true);
  }
}

TEST(SbAttnDecode, RemainderVariants) {
  REQUIRE_GPU();
  for (SbRemainder r : {SbRemainder::kOwnValue, SbRemainder::kHeadBias}) {
    ProblemSpec spec = Spec({64, 6, 2, 16}, {1, 1, 1, 1}, {0, 3, 100, 2000});
    spec.remainder = r;
    spec.shift = 0.7f;
    RunAndCheck(spec, Path::kDecode, r == SbRemainder::kOwnValue ? "decode R1" : "decode R2");
  }
}

// Group sizes 8 and 16 (two CTAs of 8 heads per KV head) and 2; block size 1 with a forced
// 2048-key chunk (the tensor-core kernel then reads the block table from global memory instead of
// shared memory) and with the smallest chunk (64 keys: one 16-key tile per warp).
TEST(SbAttnDecode, GroupsBlockSizesAndForcedChunks) {
  REQUIRE_GPU();
  const std::vector<int> ctx = {1, 17, 300, 2049, 5000};
  std::vector<int> prefix;
  for (int c : ctx) prefix.push_back(c - 1);
  for (const Shape& s : {Shape{128, 16, 2, 16}, Shape{64, 16, 1, 32}, Shape{128, 4, 2, 16}})
    RunAndCheck(Spec(s, std::vector<int>(ctx.size(), 1), prefix), Path::kDecode, Name("decode groups", s).c_str());
  for (int kps : {2048, 64}) {
    g_decode_keys_per_split = kps;
    RunAndCheck(Spec({128, 8, 2, 1}, std::vector<int>(ctx.size(), 1), prefix), Path::kDecode,
                kps == 2048 ? "decode bs1 chunk 2048" : "decode bs1 chunk 64");
    g_decode_keys_per_split = 0;
  }
}

// ---- early exit (sb_attn_params.h): the same kernel with and without it, and float64 ----

// Checks the proven bound between the early-exit outputs `ee` and the full outputs `full` of the
// same kernel, per (row, head): an exited pair (ee rem = 0) has full rem < e^-tau and every o
// component within e^-tau * M (M = max |v|, |head_bias| of the problem) plus the bf16 rounding of
// both outputs; any other pair must equal the full result (within bf16 rounding; counted when not
// bitwise). Returns the fraction of pairs whose output the exit changed.
double CheckEarlyExitBound(const Problem& pb, const Outputs& full, const Outputs& ee, float tau, const char* what) {
  const int d = pb.spec.head_dim, H = pb.spec.num_heads;
  double m = 0;
  for (uint16_t x : pb.v_full)
    if (std::isfinite(Bf16ToFloat(x))) m = std::max(m, static_cast<double>(std::fabs(Bf16ToFloat(x))));
  if (pb.spec.remainder == SbRemainder::kHeadBias)
    for (float x : pb.head_bias) m = std::max(m, static_cast<double>(std::fabs(x)));
  const double bound = std::exp(-static_cast<double>(tau)) * (1 + 1e-3);
  size_t exited = 0, not_bitwise = 0, pairs = 0;
  double worst = 0;  // largest |o_ee - o_full| / (e^-tau * M + rounding) over exited pairs
  for (int row = 0; row < pb.total_q; ++row)
    for (int h = 0; h < H; ++h, ++pairs) {
      const size_t ri = static_cast<size_t>(row) * H + h;
      const size_t oi = ri * d;
      if (std::memcmp(&full.rem[ri], &ee.rem[ri], 4) == 0 && std::memcmp(&full.o[oi], &ee.o[oi], 2 * d) == 0)
        continue;
      const bool exit = ee.rem[ri] == 0.f;
      if (exit) {
        ++exited;
        EXPECT_LT(full.rem[ri], bound) << what << ": row " << row << " head " << h << " exited with rem above e^-tau";
      } else {
        ++not_bitwise;
        EXPECT_NEAR(ee.rem[ri], full.rem[ri], 1e-5 * full.rem[ri]) << what << ": row " << row << " head " << h;
      }
      for (int c = 0; c < d; ++c) {
        const double a = Bf16ToFloat(full.o[oi + c]), b = Bf16ToFloat(ee.o[oi + c]);
        const double rounding = std::ldexp(std::max(std::fabs(a), std::fabs(b)), -7) + 1e-6;
        const double allowed = (exit ? bound * m : 0.0) + rounding;
        if (exit) worst = std::max(worst, std::fabs(a - b) / allowed);
        if (std::fabs(a - b) > allowed) {
          ADD_FAILURE() << what << ": row " << row << " head " << h << " col " << c << ": early exit " << b
                        << " vs full " << a << ", allowed " << allowed << (exit ? " (exited)" : " (not exited)");
          return 0;
        }
      }
    }
  const double rate = pairs > 0 ? static_cast<double>(exited) / pairs : 0;
  std::printf(
      "  %-44s tau %.0f: %.1f%% of (row, head) changed by the exit, worst |diff| / allowed %.2f, %zu others not "
      "bitwise\n",
              what, tau, 100 * rate, worst, not_bitwise);
  return rate;
}

struct EarlyExitCase {
  ProblemSpec spec;
  Path path;
  float tau;
  bool check_bars;      // also the float64 bars (tau large enough for them)
  bool expect_trigger;  // the data make every tile cross tau (prefill only: decode depends on timing)
};

void RunEarlyExitOn(const Problem& pb, const EarlyExitCase& c, const char* what) {
  const bool reverse = c.path == Path::kDecode;
  Outputs full, ee;
  ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, c.path, reverse, &full));
  unsigned long long stats[2] = {0, 0};
  ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, c.path, reverse, &ee, EarlyExit{c.tau, stats}));
  ASSERT_GT(stats[1], 0u);
  std::printf("  %-44s tau %.0f: %llu of %llu %s skipped (both runs)\n", what, c.tau, stats[0], stats[1],
              c.path == Path::kPrefill ? "key tiles" : "chunk CTAs");
  const double rate = CheckEarlyExitBound(pb, full, ee, c.tau, what);
  if (c.expect_trigger) {
    EXPECT_GT(stats[0], 0u) << what;
    EXPECT_GT(rate, 0.0) << what;
  }
  if (c.check_bars) ASSERT_NO_FATAL_FAILURE(CheckAgainstFloat64(pb, ee, what));
  // A threshold whose e^-tau underflows never triggers: bitwise the full result.
  Outputs never;
  ASSERT_NO_FATAL_FAILURE(RunOnDevice(pb, c.path, reverse, &never, EarlyExit{100.f, nullptr}));
  EXPECT_EQ(0, std::memcmp(never.o.data(), full.o.data(), full.o.size() * 2)) << what << ": tau 100 changed o";
  EXPECT_EQ(0, std::memcmp(never.rem.data(), full.rem.data(), full.rem.size() * 4)) << what << ": tau 100 changed rem";
}

// Decode runs once with each split kernel.
void RunEarlyExitCase(const EarlyExitCase& c, const char* what) {
  const Problem pb = MakeProblem(c.spec);
  ForEachKernelOf(pb, c.path, what, [&](const char* name) { RunEarlyExitOn(pb, c, name); });
}

TEST(SbAttnEarlyExit, SmallCase) {
  REQUIRE_GPU();
  RunEarlyExitCase({Spec({64, 2, 1, 16}, {1, 2, 70, 200}, {0, 3, 20, 0}), Path::kPrefill, 3.f, false, true},
                   "ee prefill small");
  RunEarlyExitCase({Spec({64, 2, 1, 16}, {1, 1, 1, 1}, {0, 5, 150, 700}), Path::kDecode, 3.f, false, false},
                   "ee decode small");
}

TEST(SbAttnEarlyExit, PrefillWithinBound) {
  REQUIRE_GPU();
  for (const Shape& s : {Shape{64, 4, 2, 16}, Shape{128, 4, 4, 64}}) {
    for (float tau : {3.f, 10.f}) {
      // N(0,1) q and k at 1/sqrt(d): softplus averages ~0.8 per key, every tile crosses tau.
      EarlyExitCase c{Spec(s, {1, 2, 63, 64, 65, 127, 1000, 4096}), Path::kPrefill, tau, tau >= 10.f, true};
      RunEarlyExitCase(c, Name("ee prefill lengths", s).c_str());
      EarlyExitCase ch{Spec(s, {1, 5, 64, 130, 200, 77, 500, 1}, {0, 1, 17, 64, 100, 1000, 3000, 4095}),
                       Path::kPrefill, tau, tau >= 10.f, true};
      ch.spec.remainder = SbRemainder::kOwnValue;
      RunEarlyExitCase(ch, Name("ee chunked R1", s).c_str());
    }
  }
  // Small break probabilities: acc grows slowly, the exit triggers late or never.
  ProblemSpec low = Spec({64, 4, 1, 16}, {4096, 1000});
  low.shift = 0.5f;
  low.remainder = SbRemainder::kHeadBias;
  RunEarlyExitCase({low, Path::kPrefill, 6.f, true, false}, "ee prefill small-beta R2");
}

TEST(SbAttnEarlyExit, DecodeWithinBound) {
  REQUIRE_GPU();
  std::mt19937 rng(5);
  for (const Shape& s : {Shape{64, 36, 36, 16}, Shape{128, 32, 8, 16}}) {
    std::vector<int> prefix(64);
    for (int& p : prefix) p = static_cast<int>(rng() % 8000);
    for (float tau : {3.f, 10.f}) {
      EarlyExitCase c{Spec(s, std::vector<int>(64, 1), prefix, rng()), Path::kDecode, tau, tau >= 10.f, false};
      c.spec.remainder = SbRemainder::kOwnValue;
      RunEarlyExitCase(c, Name("ee decode B=64", s).c_str());
    }
  }
  const std::vector<int> ctx = {1, 2, 65, 1000, 4096, 32768};
  ProblemSpec one = Spec({128, 8, 2, 16}, std::vector<int>(ctx.size(), 1));
  for (int c : ctx) one.prefix_lens.push_back(c - 1);
  RunEarlyExitCase({one, Path::kDecode, 8.f, true, false}, "ee decode contexts");
}

TEST(SbAttnEarlyExit, RejectsBadThreshold) {
  SbAttnPrefillParams p;
  int dummy = 0;
  p.cache.k = p.cache.v = &dummy;
  p.cache.block_tables = &dummy;
  p.cache.block_size = 16;
  p.num_heads = p.num_kv_heads = 4;
  p.head_dim = 64;
  p.scale = 0.1f;
  p.batch = p.total_q = p.max_seqlen_q = 1;
  p.q = p.o = &dummy;
  p.cu_seqlens_q = p.context_lens = &dummy;
  p.early_exit_log_threshold = -1.f;
  EXPECT_EQ(SbAttnPrefill(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.early_exit_log_threshold = NAN;
  EXPECT_EQ(SbAttnPrefill(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

// The split kernel a decode call runs: tensor cores when query heads share a KV head, unless the
// caller names one (SBSERVE_DECODE_KERNEL, when set, decides kAuto: skip then).
TEST(SbAttnApi, DecodeKernelChoice) {
  if (std::getenv("SBSERVE_DECODE_KERNEL") != nullptr) GTEST_SKIP() << "SBSERVE_DECODE_KERNEL is set";
  SbAttnDecodeParams p;
  p.num_heads = 36;
  p.num_kv_heads = 36;
  EXPECT_FALSE(SbAttnDecodeUsesTensorCores(p));
  p.kernel = SbDecodeKernel::kTensorCore;
  EXPECT_TRUE(SbAttnDecodeUsesTensorCores(p));
  p.num_heads = 32;
  p.num_kv_heads = 8;
  p.kernel = SbDecodeKernel::kAuto;
  EXPECT_TRUE(SbAttnDecodeUsesTensorCores(p));
  p.kernel = SbDecodeKernel::kCudaCore;
  EXPECT_FALSE(SbAttnDecodeUsesTensorCores(p));
  p.num_kv_heads = 1;
  p.kernel = SbDecodeKernel::kAuto;
  EXPECT_TRUE(SbAttnDecodeUsesTensorCores(p));
}

// The wgmma prefills run only for head_dim 64, and only where the device and build have them; the
// mma kernel is always there and the default; the wide wgmma kernel has no early exit.
TEST(SbAttnApi, PrefillKernelChoice) {
  if (std::getenv("SBSERVE_PREFILL_KERNEL") != nullptr) GTEST_SKIP() << "SBSERVE_PREFILL_KERNEL is set";
  const bool have = SbAttnPrefillHasWgmma(64);
  const SbPrefillKernel mma = SbPrefillKernel::kMma, wide = SbPrefillKernel::kWgmmaWide;
  SbAttnPrefillParams p;
  p.head_dim = 64;
  p.max_seqlen_q = 4096;
  p.kernel = SbPrefillKernel::kMma;
  EXPECT_FALSE(SbAttnPrefillUsesWgmma(p));
  p.kernel = SbPrefillKernel::kAuto;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), mma);
  // The default turns to the wide kernel from kWidePrefillMinSeqlen query rows on, where it runs.
  p.max_seqlen_q = kWidePrefillMinSeqlen - 1;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), mma);
  p.max_seqlen_q = kWidePrefillMinSeqlen;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wide : mma);
  p.max_seqlen_q = 16384;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wide : mma);
  p.early_exit_log_threshold = 3.f;  // the wide kernel has no early exit: the default stays mma
  EXPECT_EQ(SbAttnPrefillKernelFor(p), mma);
  p.kernel = SbPrefillKernel::kWgmmaWide;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? SbPrefillKernel::kWgmma : mma);
  p.early_exit_log_threshold = 0.f;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wide : mma);
  p.kernel = SbPrefillKernel::kWgmma;
  EXPECT_EQ(SbAttnPrefillUsesWgmma(p), have);
  // The TMA kernels: no early exit (the 1-warpgroup kernel runs) and no blocks of one slot (the
  // same kernel with cp.async loads runs).
  const SbPrefillKernel wgmma = SbPrefillKernel::kWgmma, tma = SbPrefillKernel::kWgmmaTma,
                        wide_tma = SbPrefillKernel::kWgmmaWideTma;
  p.cache.block_size = 16;
  p.cache.num_blocks = 64;
  p.kernel = tma;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? tma : mma);
  p.kernel = wide_tma;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wide_tma : mma);
  p.early_exit_log_threshold = 3.f;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wgmma : mma);
  p.kernel = tma;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wgmma : mma);
  p.early_exit_log_threshold = 0.f;
  p.cache.block_size = 1;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wgmma : mma);
  p.kernel = wide_tma;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wide : mma);
  p.cache.block_size = 16;
  p.cache.num_blocks = 0;  // the tensor maps need the cache's extent
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wide : mma);
  p.cache.num_blocks = (1 << 27) + 1;  // more than 2^31 slots: beyond the maps' 32-bit coordinates
  EXPECT_EQ(SbAttnPrefillKernelFor(p), have ? wide : mma);
  p.kernel = wgmma;
  p.head_dim = 128;
  EXPECT_FALSE(SbAttnPrefillHasWgmma(128));
  EXPECT_FALSE(SbAttnPrefillUsesWgmma(p));
  p.kernel = SbPrefillKernel::kAuto;
  EXPECT_EQ(SbAttnPrefillKernelFor(p), mma);
  std::printf("wgmma prefill on this device and build: %s\n", SbAttnPrefillHasWgmma(64) ? "yes" : "no");
}

// The test problems: the same spec gives the same values (the cached prefixes are drawn in
// parallel, per sequence and 256 positions), the prefix keys and values are N(shift, 1) and
// N(0, 1), and cache slots that no sequence owns hold NaN.
TEST(SbAttnProblem, DeterministicNormalAndPoisoned) {
  ProblemSpec spec = Spec({64, 4, 2, 16}, {1, 3, 1}, {700, 20, 1500}, 9);
  spec.shift = 0.5f;
  const Problem a = MakeProblem(spec);
  const Problem b = MakeProblem(spec);
  ASSERT_EQ(a.k_cache, b.k_cache);
  ASSERT_EQ(a.v_cache, b.v_cache);
  ASSERT_EQ(a.q, b.q);
  const int row = spec.num_kv_heads * spec.head_dim;
  double sk = 0, skk = 0, sv = 0, svv = 0;
  size_t n = 0;
  for (int s = 0; s < a.batch; ++s)
    for (int pos = 0; pos < spec.prefix_lens[s]; ++pos)
      for (int i = 0; i < row; ++i) {
        const double k = Bf16ToFloat(a.k_cache[a.SlotOf(s, pos) * row + i]);
        const double v = Bf16ToFloat(a.v_cache[a.SlotOf(s, pos) * row + i]);
        sk += k, skk += k * k, sv += v, svv += v * v, ++n;
      }
  const double mk = sk / n, mv = sv / n;
  EXPECT_NEAR(mk, 0.5, 0.01);
  EXPECT_NEAR(skk / n - mk * mk, 1.0, 0.02);
  EXPECT_NEAR(mv, 0.0, 0.01);
  EXPECT_NEAR(svv / n - mv * mv, 1.0, 0.02);
  // Units of 256 positions are independent draws, not copies of one another.
  EXPECT_NE(0, std::memcmp(&a.k_cache[a.SlotOf(0, 0) * row], &a.k_cache[a.SlotOf(0, 256) * row], row * 2));
  EXPECT_NE(0, std::memcmp(&a.k_cache[a.SlotOf(0, 0) * row], &a.k_cache[a.SlotOf(2, 0) * row], row * 2));
  size_t owned = 0, nan = 0;
  for (size_t i = 0; i < a.k_cache.size(); ++i) nan += std::isnan(Bf16ToFloat(a.k_cache[i])) ? 1 : 0;
  for (int s = 0; s < a.batch; ++s) owned += static_cast<size_t>(spec.prefix_lens[s]) * row;
  EXPECT_EQ(nan, a.k_cache.size() - owned);
}

TEST(SbAttnApi, RejectsUnsupportedShapes) {
  SbAttnPrefillParams p;
  int dummy = 0;
  p.cache.k = p.cache.v = &dummy;
  p.cache.block_tables = &dummy;
  p.cache.block_size = 16;
  p.num_heads = 4;
  p.num_kv_heads = 4;
  p.head_dim = 96;
  p.scale = 0.1f;
  p.batch = 1;
  absl::Status st = SbAttnPrefill(p, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("64, 128"), std::string::npos) << st;
  p.head_dim = 64;
  p.num_kv_heads = 3;
  EXPECT_EQ(SbAttnPrefill(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.num_kv_heads = 4;
  p.cache.block_size = 24;
  EXPECT_EQ(SbAttnPrefill(p, nullptr).code(), absl::StatusCode::kInvalidArgument);

  // The decode's fused append: k_new and v_new together, and a valid row stride.
  SbAttnDecodeParams d;
  d.cache = p.cache;
  d.cache.block_size = 16;
  d.num_heads = 4;
  d.num_kv_heads = 2;
  d.head_dim = 64;
  d.scale = 0.1f;
  d.batch = 1;
  d.max_context = 8;
  d.q = d.o = d.workspace = &dummy;
  d.context_lens = &dummy;
  d.k_new = &dummy;
  st = SbAttnDecode(d, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("k_new and v_new"), std::string::npos) << st;
  d.v_new = &dummy;
  d.kv_row_stride = 64;  // below Hkv * d = 128
  st = SbAttnDecode(d, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("kv_row_stride"), std::string::npos) << st;
  d.kv_row_stride = 132;  // not a multiple of 8
  EXPECT_EQ(SbAttnDecode(d, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sbserve::kernels
