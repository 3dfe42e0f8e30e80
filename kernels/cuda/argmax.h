// Greedy decoding on the GPU: the index of each row's largest logit (the first one on ties, as
// std::max_element in coordinator/sampler.cc).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvshard::cuda {

// out: [rows]; logits: f32 [rows, vocab]. One CTA per row.
cudaError_t argmax(int32_t* out, const float* logits, int64_t rows, int64_t vocab,
                   cudaStream_t stream);

}  // namespace kvshard::cuda
