#include "kernels/cpu/kv_eviction.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "plan/kv_eviction.h"

namespace kvshard {

void snapkv_pick(const float* score, int64_t prefix, int64_t window, int64_t keep, int32_t* kept) {
  const int64_t top = keep - window;
  constexpr int64_t r = kSnapKvPool / 2;
  std::vector<double> pooled(prefix);
  for (int64_t p = 0; p < prefix; ++p) {
    double s = 0;
    for (int64_t d = std::max<int64_t>(0, p - r); d <= std::min(prefix - 1, p + r); ++d) {
      s += score[d];
    }
    pooled[p] = s / kSnapKvPool;
  }
  std::vector<int32_t> order(prefix);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + top, order.end(), [&](int32_t a, int32_t b) {
    return pooled[a] != pooled[b] ? pooled[a] > pooled[b] : a < b;
  });
  std::copy(order.begin(), order.begin() + top, kept);
  std::sort(kept, kept + top);
  for (int64_t i = 0; i < window; ++i) kept[top + i] = static_cast<int32_t>(prefix + i);
}

void snapkv_select(const float* logits, int64_t q_heads, int64_t kv_heads, int64_t window,
                   int64_t length, int64_t keep, int32_t* kept) {
  const int64_t g = q_heads / kv_heads, prefix = length - window;
  std::vector<double> score(prefix);
  std::vector<float> f(prefix);
  for (int64_t h = 0; h < kv_heads; ++h) {
    std::fill(score.begin(), score.end(), 0.0);
    for (int64_t qh = h * g; qh < (h + 1) * g; ++qh) {
      for (int64_t i = 0; i < window; ++i) {
        const float* row = logits + (qh * window + i) * length;
        const int64_t seen = prefix + i + 1;  // positions 0..prefix + i
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t p = 0; p < seen; ++p) mx = std::max(mx, row[p]);
        double sum = 0;
        for (int64_t p = 0; p < seen; ++p) sum += std::exp(static_cast<double>(row[p] - mx));
        for (int64_t p = 0; p < prefix; ++p) {
          score[p] += std::exp(static_cast<double>(row[p] - mx)) / sum;
        }
      }
    }
    for (int64_t p = 0; p < prefix; ++p) f[p] = static_cast<float>(score[p]);
    snapkv_pick(f.data(), prefix, window, keep, kept + h * keep);
  }
}

}  // namespace kvshard
