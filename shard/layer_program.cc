#include "shard/layer_program.h"

#include <algorithm>

namespace kvshard {

void UnpackLogits(const float* rank_major, const TpLayout& layout, int64_t rows,
                  const std::vector<int32_t>& result_rows, int64_t vocab, float* out) {
  int64_t off = 0, col0 = 0;
  for (int r = 0; r < layout.tp; ++r) {
    const int64_t n = layout.vocab_counts[r];
    for (size_t i = 0; i < result_rows.size(); ++i) {
      std::copy_n(rank_major + off + result_rows[i] * n, n, out + i * vocab + col0);
    }
    off += rows * n;
    col0 += n;
  }
}

}  // namespace kvshard
