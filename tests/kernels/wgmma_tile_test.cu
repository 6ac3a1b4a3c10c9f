// The Hopper prefill's tile contract, one 64-row tile at a time: S = Q K^T with K stored in the
// permuted row order (SbKeyRow) gives each lane the S columns the weight step expects, and
// O = P V with P in the m16n8k16 A-fragment layout and V in the same row order gives P V. Checked
// against fp32 products on the host, for d = 64 and d = 128 (two column blocks). Skips without a
// compute-capability 9.0 device or an sm_90a build.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/sb_attn.h"
#include "kernels/sb_attn_prefill_sm90_kernel.cuh"

namespace sbserve::kernels {
namespace {

template <int kD>
__global__ void WgmmaTileKernel(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* p,
                                const __nv_bfloat16* v, float* s_out, float* o_out) {
  using namespace device;
  extern __shared__ unsigned char raw[];
  unsigned char* smem = raw + ((1024 - (static_cast<uint32_t>(__cvta_generic_to_shared(raw)) & 1023)) & 1023);
  constexpr int kTile = 64 * kD * 2;
  unsigned char* q_s = smem;
  unsigned char* k_s = smem + kTile;
  unsigned char* v_s = smem + 2 * kTile;
  const int tid = threadIdx.x;
  for (int i = tid; i < 64 * kD / 8; i += 128) {
    const int row = i / (kD / 8), c = i % (kD / 8);
    *reinterpret_cast<uint4*>(q_s + SbTileOffset(row, c, 64)) = reinterpret_cast<const uint4*>(q)[i];
    *reinterpret_cast<uint4*>(k_s + SbTileOffset(SbKeyRow(row), c, 64)) = reinterpret_cast<const uint4*>(k)[i];
    *reinterpret_cast<uint4*>(v_s + SbTileOffset(SbKeyRow(row), c, 64)) = reinterpret_cast<const uint4*>(v)[i];
  }
  FenceProxyAsyncShared();
  __syncthreads();
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;

  float s[8][4];
  WgmmaFence();
#pragma unroll
  for (int kc = 0; kc < kD / 16; ++kc)
    WgmmaM64N64K16(s, SbKMajorDesc(SmemAddr(q_s), kc, 64), SbKMajorDesc(SmemAddr(k_s), kc, 64), kc > 0);
  WgmmaCommit();
  WgmmaWait<0>();
  FenceRegs(s);
  for (int j = 0; j < 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * warp + g + 8 * (e / 2);
      s_out[row * 64 + SbKeyOfRow(8 * j + 2 * tq + (e % 2))] = s[j][e];
    }

  // P's k index is the S column: A fragment register r of k16 step kk holds row g + 8 (r % 2),
  // columns 16 kk + 8 (r / 2) + 2 tq + {0, 1}.
  uint32_t a[4][4];
  for (int kk = 0; kk < 4; ++kk)
    for (int r = 0; r < 4; ++r) {
      const int row = 16 * warp + g + 8 * (r % 2);
      const int c = 16 * kk + 8 * (r / 2) + 2 * tq;
      __nv_bfloat162 pair;
      pair.x = p[row * 64 + SbKeyOfRow(c)];
      pair.y = p[row * 64 + SbKeyOfRow(c + 1)];
      a[kk][r] = *reinterpret_cast<uint32_t*>(&pair);
    }
  float o[kD / 64][8][4];
  for (int cb = 0; cb < kD / 64; ++cb)
    for (int j = 0; j < 8; ++j)
      for (int e = 0; e < 4; ++e) o[cb][j][e] = 0.f;
  for (int cb = 0; cb < kD / 64; ++cb) FenceRegs(o[cb]);
  FenceRegs(a);
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int cb = 0; cb < kD / 64; ++cb) WgmmaM64N64K16RegA(o[cb], a[kk], SbVDesc(SmemAddr(v_s), kk, cb, 64));
  WgmmaCommit();
  WgmmaWait<0>();
  for (int cb = 0; cb < kD / 64; ++cb) {
    FenceRegs(o[cb]);
    for (int j = 0; j < 8; ++j)
      for (int e = 0; e < 4; ++e) {
        const int row = 16 * warp + g + 8 * (e / 2);
        o_out[row * kD + 64 * cb + 8 * j + 2 * tq + (e % 2)] = o[cb][j][e];
      }
  }
}

float Bf16ToFloat(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<uint16_t> RandomBf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> out(n);
  for (auto& x : out) {
    const __nv_bfloat16 b = __float2bfloat16(nd(rng));
    std::memcpy(&x, &b, 2);
  }
  return out;
}

template <int kD>
void RunTile() {
  if (!SbAttnPrefillHasWgmma(64)) GTEST_SKIP() << "no sm_90 device or no sm_90a build: the wgmma prefill does not run here";
  const auto q = RandomBf16(64 * kD, 1), k = RandomBf16(64 * kD, 2), p = RandomBf16(64 * 64, 3),
             v = RandomBf16(64 * kD, 4);
  void *dq, *dk, *dp, *dv;
  float *ds, *dout;
  ASSERT_EQ(cudaMalloc(&dq, q.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dk, k.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dp, p.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dv, v.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&ds, 64 * 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, 64 * kD * 4), cudaSuccess);
  cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dk, k.data(), k.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dp, p.data(), p.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice);
  const int smem = 1024 + 3 * 64 * kD * 2;
  ASSERT_EQ(cudaFuncSetAttribute(WgmmaTileKernel<kD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), cudaSuccess);
  WgmmaTileKernel<kD><<<1, 128, smem>>>(static_cast<const __nv_bfloat16*>(dq), static_cast<const __nv_bfloat16*>(dk),
                                        static_cast<const __nv_bfloat16*>(dp), static_cast<const __nv_bfloat16*>(dv), ds,
                                        dout);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> s(64 * 64), o(64 * kD);
  cudaMemcpy(s.data(), ds, s.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(o.data(), dout, o.size() * 4, cudaMemcpyDeviceToHost);
  for (void* ptr : {dq, dk, dp, dv, static_cast<void*>(ds), static_cast<void*>(dout)}) cudaFree(ptr);

  // fp32 sums of bf16 products: only the summation order differs (|error| << 1e-3 of the scale).
  int bad = 0;
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 64; ++j) {
      double ref = 0;
      for (int x = 0; x < kD; ++x) ref += double(Bf16ToFloat(q[i * kD + x])) * Bf16ToFloat(k[j * kD + x]);
      if (std::fabs(s[i * 64 + j] - ref) > 1e-3 * std::sqrt(double(kD)) && bad++ < 5)
        ADD_FAILURE() << "S[" << i << "][" << j << "] = " << s[i * 64 + j] << ", want " << ref;
    }
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < kD; ++j) {
      double ref = 0;
      for (int x = 0; x < 64; ++x) ref += double(Bf16ToFloat(p[i * 64 + x])) * Bf16ToFloat(v[x * kD + j]);
      if (std::fabs(o[i * kD + j] - ref) > 1e-3 * 8 && bad++ < 10)
        ADD_FAILURE() << "O[" << i << "][" << j << "] = " << o[i * kD + j] << ", want " << ref;
    }
  EXPECT_EQ(bad, 0);
}

TEST(SbAttnWgmmaTile, Dim64) { RunTile<64>(); }
TEST(SbAttnWgmmaTile, Dim128) { RunTile<128>(); }

}  // namespace
}  // namespace sbserve::kernels
