// Token embedding lookup.
#pragma once

#include <cstdint>

namespace kvshard {

// out: f32 [tokens, dim]; table: f32 [vocab, dim]; ids: [tokens], each already validated < vocab.
void embedding(float* out, const float* table, const int32_t* ids, int64_t tokens, int64_t dim);

}  // namespace kvshard
