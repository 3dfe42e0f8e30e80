// f32 to a 16-bit GEMM input type on the GPU (round to nearest even, like ConvertFromF32 in
// shard/dtype.h): the attention output becomes the output projection's input.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvshard::cuda {

// out: To [n] (float, __half or __nv_bfloat16); in: f32 [n].
template <typename To>
cudaError_t convert_from_f32(To* out, const float* in, int64_t n, cudaStream_t stream);

}  // namespace kvshard::cuda
