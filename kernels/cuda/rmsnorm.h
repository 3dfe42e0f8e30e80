// RMSNorm on the GPU (the twin of kernels/cpu/rmsnorm.h), and the fused residual add + RMSNorm
// that follows every all-reduce: x += delta; out = rmsnorm(x) * weight.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvshard::cuda {

// out: To [tokens, dim] with To = float, __half or __nv_bfloat16 (the next GEMM's input type);
// x: f32 [tokens, dim]; weight: f32 [dim]. out may alias x when To is float.
template <typename To>
cudaError_t rmsnorm(To* out, const float* x, const float* weight, int64_t tokens, int64_t dim,
                    float eps, cudaStream_t stream);

// residual: f32 [tokens, dim], updated in place to residual + delta; delta: f32 [tokens, dim];
// out: To [tokens, dim] = rmsnorm(updated residual) * weight. out must not alias residual.
template <typename To>
cudaError_t add_rmsnorm(float* residual, const float* delta, To* out, const float* weight,
                        int64_t tokens, int64_t dim, float eps, cudaStream_t stream);

}  // namespace kvshard::cuda
