// The arithmetic of one draw, shared word for word by the CPU sampler (engine/sampler.cc) and the
// device sampler (engine/cuda/device_sampler.cu), so that both pick the same token from the same
// logits.
//
// A draw is a Gumbel-max over the kept tokens: token = argmax_i (z_i + g_i), z_i = logit_i / T,
// g_i = -log(-log u_i), which selects i with probability softmax(z)_i restricted to the kept set.
// u_i is a counter-based hash of (seed, position, token): no state is carried from draw to draw,
// so a draw depends on the request's seed and the position it fills, never on the batch, on
// which thread or kernel computes it, or on a preemption that recomputes the sequence.
//
// Float steps use explicitly rounded operations on the device (no fused multiply-add), so they
// round as the host's do; the keys and weights are in double, where the host's libm and CUDA's
// (both within one ulp) can only disagree on a tie within ~1e-16, i.e. in practice never.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SB_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define SB_HD inline
#endif

namespace sbserve::sampling {

// The splitmix64 / murmur3 finaliser: a bijection of 64-bit words with full avalanche.
SB_HD uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Uniform in (0, 1), 53 bits, from (seed, position, token). Chained so that each coordinate goes
// through a full mix before the next is added.
SB_HD double Uniform(uint64_t seed, int64_t position, int32_t token) {
  uint64_t h = Mix64(seed + 0x9e3779b97f4a7c15ULL);
  h = Mix64(h ^ (static_cast<uint64_t>(position) * 0xd1b54a32d192ed03ULL));
  h = Mix64(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(token)) + 0x8cb92ba72f3d8dd7ULL));
  return (static_cast<double>(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);  // 2^-53
}

SB_HD double Gumbel(uint64_t seed, int64_t position, int32_t token) {
#if defined(__CUDA_ARCH__)
  return -::log(-::log(Uniform(seed, position, token)));
#else
  return -std::log(-std::log(Uniform(seed, position, token)));
#endif
}

// The tempered logit, in float: logit * (1/T), with -0 made +0 so that sorting by bits (device)
// and by value (host) order it alike.
SB_HD float Tempered(float logit, float inv_temperature) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(logit, inv_temperature), 0.0f);
#else
  return logit * inv_temperature + 0.0f;
#endif
}

// exp(z - z_max) in double: the unnormalised weight that top-p and min-p compare.
SB_HD double Weight(float z, float z_max) {
#if defined(__CUDA_ARCH__)
  return ::exp(static_cast<double>(z) - static_cast<double>(z_max));
#else
  return std::exp(static_cast<double>(z) - static_cast<double>(z_max));
#endif
}

// Adjustments of one logit: the request's logit bias (OpenAI, vLLM: added first), then repetition
// (HF: divide a positive logit, multiply a negative one) for a token seen in the prompt or output,
// then frequency and presence (OpenAI) for an output token seen `count` times.
SB_HD float Penalize(float logit, float bias, bool seen, int32_t count, float repetition, float frequency,
                     float presence) {
#if defined(__CUDA_ARCH__)
  if (bias != 0.f) logit = __fadd_rn(logit, bias);
  if (seen && repetition != 1.0f) logit = logit > 0.f ? __fdiv_rn(logit, repetition) : __fmul_rn(logit, repetition);
  if (count > 0) logit = __fsub_rn(logit, __fadd_rn(__fmul_rn(frequency, static_cast<float>(count)), presence));
#else
  if (bias != 0.f) logit += bias;
  if (seen && repetition != 1.0f) logit = logit > 0.f ? logit / repetition : logit * repetition;
  if (count > 0) logit -= frequency * static_cast<float>(count) + presence;
#endif
  return logit;
}

// Order of the filters' ranking: larger z first, the lower token id first among equals.
SB_HD bool RanksBefore(float za, int32_t a, float zb, int32_t b) { return za > zb || (za == zb && a < b); }

}  // namespace sbserve::sampling
