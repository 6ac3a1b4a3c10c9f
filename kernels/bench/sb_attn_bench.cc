// Workbench of the stick-breaking attention kernels: times varlen prefill (paged cache), paged
// decode and the KV append with CUDA events (warm-up, median of >= 50 runs, inputs rotated over
// several copies so they do not sit in L2) and prints TF/s = 4 * H * d * sum(L^2) / 2 / time
// (DESIGN.md section 5) and decode K/V GB/s against a device-to-device copy measured in the same
// run. The softmax yardstick and the reference Triton kernel are timed by sb_attn_yardstick.py.
//
// Early exit (sb_attn_params.h): --early-exit TAU times the kernels with it and prints the share of
// key tiles (prefill) or chunk CTAs (decode) it skipped; --scale-mult M multiplies the logit
// scale 1/sqrt(d) (peaked break probabilities), --shift S draws q ~ N(-S, 1) and k ~ N(S, 1)
// (small break probabilities, long-range weights). --sweep-splits also times decode at several
// forced keys_per_split.
//
// usage: sb_attn_bench [--reps N] [--block-size BS] [--only prefill|decode] [--early-exit TAU]
//                      [--scale-mult M] [--shift S] [--sweep-splits] [--decode-row I] [--decode-kernel cc|tc|both]
//                      [--prefill-row I] [--prefill-kernel mma|wgmma|wgmma-wide|wgmma-tma|wgmma-wide-tma|both (all)]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/sb_attn.h"

namespace sbserve::kernels {
namespace {

#define BENCH_CHECK(stmt)                                                                    \
  do {                                                                                       \
    cudaError_t e_ = (stmt);                                                                 \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #stmt, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)
#define BENCH_OK(expr)                                                                       \
  do {                                                                                       \
    absl::Status s_ = (expr);                                                                \
    if (!s_.ok()) {                                                                          \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.ToString().c_str());       \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

struct Options {
  int reps = 50;
  int block_size = 16;
  std::string only;
  float early_exit = 0.f;
  float scale_mult = 1.f;
  float shift = 0.f;
  bool sweep_splits = false;
  int decode_row = -1;                 // --decode-row I: only that row of the decode table
  std::string decode_kernel = "both";  // --decode-kernel cc|tc|both
  std::string prefill_kernel = "both";  // --prefill-kernel mma|wgmma|wgmma-wide|wgmma-tma|wgmma-wide-tma|both (all; wgmma: d = 64 on sm_90a)
  int prefill_row = -1;                 // --prefill-row I: only that row of the prefill table
};

// Counters of the early exit [skipped, total], zeroed per problem.
unsigned long long* g_stats = nullptr;

std::string ExitNote(const Options& opt) {
  if (opt.early_exit <= 0.f) return "";
  unsigned long long h[2];
  BENCH_CHECK(cudaMemcpy(h, g_stats, sizeof(h), cudaMemcpyDeviceToHost));
  char buf[96];
  std::snprintf(buf, sizeof(buf), "  early exit tau %.0f: %.1f%% skipped", opt.early_exit,
                h[1] > 0 ? 100.0 * h[0] / h[1] : 0.0);
  return buf;
}

std::string DataNote(const Options& opt) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), " [scale x%g shift %g]", opt.scale_mult, opt.shift);
  return opt.scale_mult != 1.f || opt.shift != 0.f ? buf : "";
}

void* DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  BENCH_CHECK(cudaMalloc(&p, bytes));
  return p;
}

// Fills bf16 buffers with N(mean,1) values on the device side via a host pattern (never zeros).
void FillRandomBf16(void* dst, size_t elems, uint64_t seed, float mean = 0.f) {
  std::vector<uint16_t> h(std::min<size_t>(elems, size_t{1} << 22));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& x : h) {
    float f = nd(rng) + mean;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    x = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  for (size_t off = 0; off < elems; off += h.size()) {
    const size_t n = std::min(h.size(), elems - off);
    BENCH_CHECK(cudaMemcpy(static_cast<uint16_t*>(dst) + off, h.data(), n * 2, cudaMemcpyHostToDevice));
  }
}

template <typename F>
double MedianMs(int reps, F&& fn) {
  cudaEvent_t a, b;
  BENCH_CHECK(cudaEventCreate(&a));
  BENCH_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 5; ++i) fn(i);
  BENCH_CHECK(cudaDeviceSynchronize());
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    BENCH_CHECK(cudaEventRecord(a));
    fn(i);
    BENCH_CHECK(cudaEventRecord(b));
    BENCH_CHECK(cudaEventSynchronize(b));
    BENCH_CHECK(cudaEventElapsedTime(&ms[i], a, b));
  }
  BENCH_CHECK(cudaEventDestroy(a));
  BENCH_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

// One copy of a problem's inputs in a paged cache (blocks laid out in a shuffled order).
struct PagedSet {
  void* q = nullptr;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int32_t* tables = nullptr;
  int32_t* cu = nullptr;
  int32_t* ctx = nullptr;
};

struct Problem {
  int H, Hkv, d, bs;
  std::vector<int> q_lens, ctx_lens;
  int total_q = 0, max_q = 0, max_ctx = 0, max_blocks = 0, num_blocks = 0;
  std::vector<int32_t> cu, tables;
};

Problem MakeProblem(int H, int Hkv, int d, int bs, const std::vector<int>& q_lens, const std::vector<int>& ctx_lens,
                    uint64_t seed) {
  Problem p{H, Hkv, d, bs, q_lens, ctx_lens};
  p.cu.push_back(0);
  for (size_t b = 0; b < q_lens.size(); ++b) {
    p.cu.push_back(p.cu.back() + q_lens[b]);
    p.max_q = std::max(p.max_q, q_lens[b]);
    p.max_ctx = std::max(p.max_ctx, ctx_lens[b]);
    p.num_blocks += (ctx_lens[b] + bs - 1) / bs;
  }
  p.total_q = p.cu.back();
  p.max_blocks = (p.max_ctx + bs - 1) / bs;
  std::vector<int32_t> ids(p.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  p.tables.assign(q_lens.size() * p.max_blocks, 0);
  size_t next = 0;
  for (size_t b = 0; b < q_lens.size(); ++b)
    for (int i = 0; i < (ctx_lens[b] + bs - 1) / bs; ++i) p.tables[b * p.max_blocks + i] = ids[next++];
  return p;
}

PagedSet UploadSet(const Problem& p, uint64_t seed, float shift) {
  PagedSet s;
  const size_t q_elems = static_cast<size_t>(p.total_q) * p.H * p.d;
  const size_t c_elems = static_cast<size_t>(p.num_blocks) * p.bs * p.Hkv * p.d;
  s.q = DeviceAlloc(q_elems * 2);
  s.k_cache = DeviceAlloc(c_elems * 2);
  s.v_cache = DeviceAlloc(c_elems * 2);
  FillRandomBf16(s.q, q_elems, seed, -shift);
  FillRandomBf16(s.k_cache, c_elems, seed + 1, shift);
  FillRandomBf16(s.v_cache, c_elems, seed + 2);
  s.tables = static_cast<int32_t*>(DeviceAlloc(p.tables.size() * 4));
  s.cu = static_cast<int32_t*>(DeviceAlloc(p.cu.size() * 4));
  s.ctx = static_cast<int32_t*>(DeviceAlloc(p.ctx_lens.size() * 4));
  BENCH_CHECK(cudaMemcpy(s.tables, p.tables.data(), p.tables.size() * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(s.cu, p.cu.data(), p.cu.size() * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(s.ctx, p.ctx_lens.data(), p.ctx_lens.size() * 4, cudaMemcpyHostToDevice));
  return s;
}

void FreeSet(PagedSet& s) {
  for (void* ptr : {s.q, s.k_cache, s.v_cache, static_cast<void*>(s.tables), static_cast<void*>(s.cu),
                    static_cast<void*>(s.ctx)})
    BENCH_CHECK(cudaFree(ptr));
}

int SetsFor(size_t bytes_per_set) {
  // Enough copies that one pass over them is well beyond the 50 MB L2, at most 4.
  return static_cast<int>(std::clamp<size_t>((200u << 20) / std::max<size_t>(bytes_per_set, 1) + 1, 1, 4));
}

SbKvCache CacheOf(const Problem& p, const PagedSet& s) {
  SbKvCache c;
  c.k = s.k_cache;
  c.v = s.v_cache;
  c.block_tables = s.tables;
  c.num_blocks = p.num_blocks;
  c.block_size = p.bs;
  c.max_blocks = p.max_blocks;
  return c;
}

void BenchPrefill(const Options& opt, const char* label, int H, int d, const std::vector<int>& lens,
                  SbPrefillKernel kernel) {
  const Problem pb = MakeProblem(H, H, d, opt.block_size, lens, lens, 42);
  const size_t set_bytes = static_cast<size_t>(pb.total_q) * H * d * 2 * 3;
  const int nsets = SetsFor(set_bytes);
  std::vector<PagedSet> sets;
  for (int i = 0; i < nsets; ++i) sets.push_back(UploadSet(pb, 100 + 10 * i, opt.shift));
  void* o = DeviceAlloc(static_cast<size_t>(pb.total_q) * H * d * 2);
  float* rem = static_cast<float*>(DeviceAlloc(static_cast<size_t>(pb.total_q) * H * 4));
  BENCH_CHECK(cudaMemset(g_stats, 0, 16));
  const double ms = MedianMs(opt.reps, [&](int i) {
    const PagedSet& s = sets[i % nsets];
    SbAttnPrefillParams p;
    p.q = s.q;
    p.cu_seqlens_q = s.cu;
    p.context_lens = s.ctx;
    p.cache = CacheOf(pb, s);
    p.o = o;
    p.rem = rem;
    p.batch = static_cast<int>(lens.size());
    p.total_q = pb.total_q;
    p.max_seqlen_q = pb.max_q;
    p.num_heads = H;
    p.num_kv_heads = H;
    p.head_dim = d;
    p.scale = opt.scale_mult / std::sqrt(static_cast<float>(d));
    p.early_exit_log_threshold = opt.early_exit;
    p.early_exit_stats = g_stats;
    p.kernel = kernel;
    BENCH_OK(SbAttnPrefill(p, nullptr));
  });
  double sum_l2 = 0;
  for (int l : lens) sum_l2 += static_cast<double>(l) * l;
  const double tflops = 4.0 * H * d * sum_l2 / 2 / (ms * 1e-3) / 1e12;
  std::printf("prefill %-10s %3d x %-3d  %-16s bs=%-3d  %8.3f ms  %6.1f TF/s%s%s\n",
              SbPrefillKernelName(kernel), H, d, label, opt.block_size, ms, tflops,
              DataNote(opt).c_str(), ExitNote(opt).c_str());
  BENCH_CHECK(cudaFree(o));
  BENCH_CHECK(cudaFree(rem));
  for (auto& s : sets) FreeSet(s);
}

double CopyGBs(const Options& opt) {
  const size_t bytes = size_t{1} << 30;
  void* a = DeviceAlloc(bytes);
  void* b = DeviceAlloc(bytes);
  BENCH_CHECK(cudaMemset(a, 1, bytes));
  const double ms = MedianMs(opt.reps, [&](int) { BENCH_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); });
  BENCH_CHECK(cudaFree(a));
  BENCH_CHECK(cudaFree(b));
  const double gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;  // bytes read + bytes written
  std::printf("device copy 1 GiB: %.3f ms = %.0f GB/s (read + write)\n", ms, gbs);
  return gbs;
}

void BenchDecode(const Options& opt, double copy_gbs, int batch, int ctx, int H, int Hkv, int d, int kps = 0,
                 SbDecodeKernel kernel = SbDecodeKernel::kAuto) {
  const Problem pb = MakeProblem(H, Hkv, d, opt.block_size, std::vector<int>(batch, 1), std::vector<int>(batch, ctx), 7);
  const size_t kv_bytes = static_cast<size_t>(batch) * (ctx - 1) * Hkv * d * 2 * 2;  // K and V read
  const int nsets = SetsFor(kv_bytes);
  std::vector<PagedSet> sets;
  for (int i = 0; i < nsets; ++i) sets.push_back(UploadSet(pb, 500 + 10 * i, opt.shift));
  void* o = DeviceAlloc(static_cast<size_t>(batch) * H * d * 2);
  float* rem = static_cast<float*>(DeviceAlloc(static_cast<size_t>(batch) * H * 4));
  SbAttnDecodeParams base;
  base.batch = batch;
  base.max_context = ctx;
  base.num_heads = H;
  base.num_kv_heads = Hkv;
  base.head_dim = d;
  base.scale = opt.scale_mult / std::sqrt(static_cast<float>(d));
  base.early_exit_log_threshold = opt.early_exit;
  base.early_exit_stats = g_stats;
  base.keys_per_split = kps;
  base.kernel = kernel;
  base.o = o;
  base.rem = rem;
  void* ws = DeviceAlloc(std::max<size_t>(SbAttnDecodeWorkspaceBytes(base), 16));
  BENCH_CHECK(cudaMemset(g_stats, 0, 16));
  const double ms = MedianMs(opt.reps, [&](int i) {
    const PagedSet& s = sets[i % nsets];
    SbAttnDecodeParams p = base;
    p.q = s.q;
    p.context_lens = s.ctx;
    p.cache = CacheOf(pb, s);
    p.workspace = ws;
    BENCH_OK(SbAttnDecode(p, nullptr));
  });
  const double gbs = kv_bytes / (ms * 1e-3) / 1e9;
  char split_note[32] = "auto";
  if (kps > 0) std::snprintf(split_note, sizeof(split_note), "%d", kps);
  std::printf(
      "decode %s %3d x %-3d  Hkv=%-3d B=%-3d ctx=%-6d bs=%-3d keys/split %-5s %8.3f ms  %6.0f GB/s K/V  = %3.0f%% of "
      "copy%s%s\n",
      SbAttnDecodeUsesTensorCores(base) ? "tc" : "cc", H, d, Hkv, batch, ctx, opt.block_size, split_note, ms, gbs,
      100.0 * gbs / copy_gbs, DataNote(opt).c_str(), ExitNote(opt).c_str());
  BENCH_CHECK(cudaFree(o));
  BENCH_CHECK(cudaFree(rem));
  BENCH_CHECK(cudaFree(ws));
  for (auto& s : sets) FreeSet(s);
}

}  // namespace
}  // namespace sbserve::kernels

int main(int argc, char** argv) {
  using namespace sbserve::kernels;
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) opt.reps = std::max(50, std::atoi(argv[++i]));
    else if (a == "--block-size" && i + 1 < argc) opt.block_size = std::atoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc) opt.only = argv[++i];
    else if (a == "--early-exit" && i + 1 < argc) opt.early_exit = std::atof(argv[++i]);
    else if (a == "--scale-mult" && i + 1 < argc) opt.scale_mult = std::atof(argv[++i]);
    else if (a == "--shift" && i + 1 < argc) opt.shift = std::atof(argv[++i]);
    else if (a == "--sweep-splits") opt.sweep_splits = true;
    else if (a == "--decode-row" && i + 1 < argc) opt.decode_row = std::atoi(argv[++i]);
    else if (a == "--decode-kernel" && i + 1 < argc && (std::string(argv[i + 1]) == "cc" ||
                                                        std::string(argv[i + 1]) == "tc" ||
                                                        std::string(argv[i + 1]) == "both"))
      opt.decode_kernel = argv[++i];
    else if (a == "--prefill-row" && i + 1 < argc) opt.prefill_row = std::atoi(argv[++i]);
    else if (a == "--prefill-kernel" && i + 1 < argc && (std::string(argv[i + 1]) == "mma" ||
                                                         std::string(argv[i + 1]) == "wgmma" ||
                                                         std::string(argv[i + 1]) == "wgmma-wide" ||
                                                         std::string(argv[i + 1]) == "wgmma-tma" ||
                                                         std::string(argv[i + 1]) == "wgmma-wide-tma" ||
                                                         std::string(argv[i + 1]) == "both"))
      opt.prefill_kernel = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: %s [--reps N>=50] [--block-size BS] [--only prefill|decode] [--early-exit TAU] "
                   "[--scale-mult M] [--shift S] [--sweep-splits] [--decode-row 0..5] [--decode-kernel cc|tc|both] "
                   "[--prefill-row 0..10] [--prefill-kernel mma|wgmma|wgmma-wide|wgmma-tma|wgmma-wide-tma|both]\n",
                   argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB; median of %d runs after warm-up\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20, opt.reps);
  g_stats = static_cast<unsigned long long*>(DeviceAlloc(16));
  // Mixed lengths between 64 and 5000 summing to 16384 (the same list as sb_attn_yardstick.py).
  const std::vector<int> mixed = {5000, 64, 3000, 1200, 4000, 700, 2000, 420};
  if (opt.only.empty() || opt.only == "prefill") {
    // Each row with the mma kernel and, where it runs (d = 64 on sm_90a), the wgmma kernel.
    struct Row {
      const char* label;
      int H, d;
      std::vector<int> lens;
    };
    const Row rows[] = {{"8 x 2048", 36, 64, std::vector<int>(8, 2048)},   {"4 x 4096", 36, 64, std::vector<int>(4, 4096)},
                        {"1 x 16384", 36, 64, {16384}},                     {"32 x 512", 36, 64, std::vector<int>(32, 512)},
                        {"mixed 64..5000", 36, 64, mixed},                  {"8 x 2048", 32, 128, std::vector<int>(8, 2048)},
                        {"4 x 4096", 32, 128, std::vector<int>(4, 4096)},  {"1 x 16384", 32, 128, {16384}},
                        {"32 x 512", 32, 128, std::vector<int>(32, 512)}, {"mixed 64..5000", 32, 128, mixed},
                        {"2 x 8192", 36, 64, std::vector<int>(2, 8192)}};
    for (int i = 0; i < static_cast<int>(std::size(rows)); ++i) {
      if (opt.prefill_row >= 0 && opt.prefill_row != i) continue;
      const Row& r = rows[i];
      for (SbPrefillKernel k : {SbPrefillKernel::kMma, SbPrefillKernel::kWgmma, SbPrefillKernel::kWgmmaWide,
                              SbPrefillKernel::kWgmmaTma, SbPrefillKernel::kWgmmaWideTma}) {
        if (opt.prefill_kernel != "both" && opt.prefill_kernel != SbPrefillKernelName(k)) continue;
        if (k != SbPrefillKernel::kMma && !SbAttnPrefillHasWgmma(r.d)) continue;
        BenchPrefill(opt, r.label, r.H, r.d, r.lens, k);
      }
    }
  }
  if (opt.only.empty() || opt.only == "decode") {
    const double copy = CopyGBs(opt);
    // Each row with both split kernels, CUDA-core (cc) then tensor-core (tc).
    struct Row {
      int batch, ctx, H, Hkv, d;
    };
    const Row rows[] = {{64, 4096, 36, 36, 64}, {1, 32768, 36, 36, 64}, {64, 4096, 32, 8, 128},
                        {1, 32768, 32, 8, 128}, {8, 8192, 36, 36, 64},  {8, 8192, 32, 8, 128}};
    for (int i = 0; i < static_cast<int>(std::size(rows)); ++i) {
      if (opt.decode_row >= 0 && opt.decode_row != i) continue;
      const Row& r = rows[i];
      for (SbDecodeKernel k : {SbDecodeKernel::kCudaCore, SbDecodeKernel::kTensorCore}) {
        if (opt.decode_kernel != "both" && opt.decode_kernel != (k == SbDecodeKernel::kCudaCore ? "cc" : "tc")) continue;
        BenchDecode(opt, copy, r.batch, r.ctx, r.H, r.Hkv, r.d, 0, k);
      }
    }
    if (opt.sweep_splits) {
      for (int kps : {576, 768, 1024, 1344, 2048}) BenchDecode(opt, copy, 1, 32768, 36, 36, 64, kps);
      for (int kps : {128, 256, 384, 512, 704, 1024, 1408}) BenchDecode(opt, copy, 1, 32768, 32, 8, 128, kps);
      for (int kps : {1024, 2752}) BenchDecode(opt, copy, 8, 8192, 36, 36, 64, kps);
      for (int kps : {256, 576, 1024, 1408, 2048}) BenchDecode(opt, copy, 8, 8192, 32, 8, 128, kps);
      for (int kps : {832, 1024}) BenchDecode(opt, copy, 64, 4096, 32, 8, 128, kps);
    }
  }
  return 0;
}
