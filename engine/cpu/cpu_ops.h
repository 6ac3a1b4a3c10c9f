// fp32 CPU kernels of the reference backend: the ops of the narrow backend interface.
#pragma once

#include <cstdint>
#include <string>

#include "engine/model/config.h"

namespace sbserve {

class ThreadPool;

// y[n, out] = x[n, in] · W[out, in]ᵀ (+ bias[out] when non-null).
void CpuGemm(ThreadPool* pool, const float* x, int64_t n, int64_t in, const float* w, int64_t out,
             const float* bias, float* y);

// y[n, D] = norm(x[n, D]) · weight (+ bias for layernorm).
void CpuNorm(ThreadPool* pool, NormKind kind, const float* x, int64_t n, int64_t dim, const float* weight,
             const float* bias, double eps, float* y);

// GLU: y[n, I] = act(gate) · up with in[n, 2I] = [up | gate]; plain: y[n, I] = act(in[n, I]).
void CpuActivation(ThreadPool* pool, const std::string& activation, bool glu, const float* in, int64_t n,
                   int64_t inner, float* y);

}  // namespace sbserve
