#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvshard {
namespace {

// Elements below which rope runs on the calling thread.
constexpr int64_t kParallelElements = int64_t{1} << 15;

}  // namespace

void rope(float* x, const int32_t* positions, const float* inv_freq, int64_t tokens, int64_t heads,
          int64_t head_dim, RopePairing pairing) {
  const int64_t half = head_dim / 2;
  // Tokens are independent: a prefill's rotations run on the team (each element's arithmetic is
  // the same wherever it runs), each token's cosines and sines computed once for all its heads.
#pragma omp parallel if (tokens * heads * head_dim >= kParallelElements)
  {
    static thread_local std::vector<float> cs;
    cs.resize(2 * half);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        // Angle in double: positions up to 1M times frequencies near 1 lose digits in f32.
        const double angle = static_cast<double>(positions[t]) * inv_freq[i];
        cs[i] = static_cast<float>(std::cos(angle));
        cs[half + i] = static_cast<float>(std::sin(angle));
      }
      const float* c = cs.data();
      const float* s = cs.data() + half;
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x + (t * heads + h) * head_dim;
        if (pairing == RopePairing::kHalf) {
          for (int64_t i = 0; i < half; ++i) {
            const float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * c[i] - x1 * s[i];
            v[i + half] = x0 * s[i] + x1 * c[i];
          }
        } else {
          for (int64_t i = 0; i < half; ++i) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c[i] - x1 * s[i];
            v[2 * i + 1] = x0 * s[i] + x1 * c[i];
          }
        }
      }
    }
  }
}

void attention_sink_positions(int32_t* shift, int32_t* sink_last, const int32_t* positions,
                              int64_t tokens, int64_t sinks, int64_t window) {
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t p = positions[t];
    shift[t] = static_cast<int32_t>(-std::max<int64_t>(0, p - window + 1 - sinks));
    sink_last[t] = static_cast<int32_t>(std::min<int64_t>(p, sinks - 1));
  }
}

}  // namespace kvshard
