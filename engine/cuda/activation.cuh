// The MLP activations of the CUDA backend, shared by the activation kernels (cuda_ops.cu) and the
// small-batch GEMM's fused GLU epilogue (small_gemm.cu), so that both round the same way.
#pragma once

namespace sbserve::cuda {

// act: 0 silu, 1 gelu (erf), 2 gelu tanh, 3 relu.
__device__ inline float Act(int act, float x) {
  switch (act) {
    case 0: return x / (1.f + __expf(-x));
    case 1: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case 2: return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    default: return x > 0.f ? x : 0.f;
  }
}

}  // namespace sbserve::cuda
