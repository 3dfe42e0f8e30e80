#include "shard/rope_frequencies.h"

#include <cmath>
#include <numbers>

namespace kvshard {

std::vector<float> RopeInverseFrequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv(half);
  const RopeScaling& rs = c.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(static_cast<double>(c.rope_theta), 2.0 * i / c.head_dim);
    if (rs.type == RopeScalingType::kLinear) {
      f /= rs.factor;
    } else if (rs.type == RopeScalingType::kLlama3) {
      // Long wavelengths are slowed by `factor`, short ones kept, and the band between blended.
      const double old_len = static_cast<double>(rs.original_max_position_embeddings);
      const double low_wavelen = old_len / rs.low_freq_factor;
      const double high_wavelen = old_len / rs.high_freq_factor;
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1 - smooth) * f / rs.factor + smooth * f;
      }
    }
    if (!c.rope_freq_factors.empty()) f /= c.rope_freq_factors[i];
    inv[i] = static_cast<float>(f);
  }
  return inv;
}

}  // namespace kvshard
