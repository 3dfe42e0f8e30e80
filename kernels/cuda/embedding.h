// Token embedding lookup on the GPU (the twin of kernels/cpu/embedding.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvshard::cuda {

// out: f32 [tokens, dim]; table: T [vocab, dim] with T = float, __half or __nv_bfloat16; ids:
// [tokens], each already validated < vocab (ValidateStepPlan). All device pointers.
template <typename T>
cudaError_t embedding(float* out, const T* table, const int32_t* ids, int64_t tokens, int64_t dim,
                      cudaStream_t stream);

}  // namespace kvshard::cuda
