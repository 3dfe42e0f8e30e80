// SwiGLU's gate on the GPU (the twin of kernels/cpu/activation.h): out = silu(gate) * up.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvshard::cuda {

// out: To [n] (float, __half or __nv_bfloat16: the down projection's input type); gate, up: f32
// [n]. out may alias gate when To is float.
template <typename To>
cudaError_t silu_mul(To* out, const float* gate, const float* up, int64_t n, cudaStream_t stream);

}  // namespace kvshard::cuda
