// Token embedding lookup.
#pragma once

#include <cstdint>

#include "kernels/cpu/half.h"

namespace kvshard {

// out: f32 [tokens, dim]; table: [vocab, dim] (f32, or 16-bit widened to f32); ids: [tokens], each
// already validated < vocab.
void embedding(float* out, const float* table, const int32_t* ids, int64_t tokens, int64_t dim);
void embedding(float* out, const f16_t* table, const int32_t* ids, int64_t tokens, int64_t dim);
void embedding(float* out, const bf16_t* table, const int32_t* ids, int64_t tokens, int64_t dim);

}  // namespace kvshard
