#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>

namespace kvshard {

void rope(float* x, const int32_t* positions, const float* inv_freq, int64_t tokens, int64_t heads,
          int64_t head_dim, RopePairing pairing) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      // Angle in double: positions up to 1M times frequencies near 1 lose digits in f32.
      const double angle = static_cast<double>(positions[t]) * inv_freq[i];
      const float c = static_cast<float>(std::cos(angle));
      const float s = static_cast<float>(std::sin(angle));
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x + (t * heads + h) * head_dim;
        const int64_t a = pairing == RopePairing::kHalf ? i : 2 * i;
        const int64_t b = pairing == RopePairing::kHalf ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
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
