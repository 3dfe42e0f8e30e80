// Rotary position embedding on the GPU (the twin of kernels/cpu/rope.h), in place.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/rope.h"

namespace kvshard::cuda {

// x: f32 [tokens, heads, head_dim]; positions: [tokens]; inv_freq: f32 [head_dim / 2] (already
// scaled by the model's rope_scaling). Angles in double, as on the CPU: positions up to 1M times
// frequencies near 1 lose digits in f32.
cudaError_t rope(float* x, const int32_t* positions, const float* inv_freq, int64_t tokens,
                 int64_t heads, int64_t head_dim, RopePairing pairing, cudaStream_t stream);

// The CPU's attention_sink_positions on device arrays (shift, sink_last, positions: int32
// [tokens]).
cudaError_t attention_sink_positions(int32_t* shift, int32_t* sink_last, const int32_t* positions,
                                     int64_t tokens, int64_t sinks, int64_t window,
                                     cudaStream_t stream);

}  // namespace kvshard::cuda
