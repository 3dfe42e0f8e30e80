#include "kernels/cpu/embedding.h"

#include <cstring>

namespace kvshard {

void embedding(float* out, const float* table, const int32_t* ids, int64_t tokens, int64_t dim) {
  for (int64_t t = 0; t < tokens; ++t) {
    std::memcpy(out + t * dim, table + static_cast<int64_t>(ids[t]) * dim, dim * sizeof(float));
  }
}

namespace {

template <typename T>
void embedding_16(float* out, const T* table, const int32_t* ids, int64_t tokens, int64_t dim) {
  for (int64_t t = 0; t < tokens; ++t) {
    const T* row = table + static_cast<int64_t>(ids[t]) * dim;
    for (int64_t i = 0; i < dim; ++i) out[t * dim + i] = to_f32(row[i]);
  }
}

}  // namespace

void embedding(float* out, const f16_t* table, const int32_t* ids, int64_t tokens, int64_t dim) {
  embedding_16(out, table, ids, tokens, dim);
}

void embedding(float* out, const bf16_t* table, const int32_t* ids, int64_t tokens, int64_t dim) {
  embedding_16(out, table, ids, tokens, dim);
}

}  // namespace kvshard
