#include "shard/rope_frequencies.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

namespace kvshard {
namespace {

ModelConfig Llama(int64_t head_dim, float theta) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.rope_theta = theta;
  return c;
}

TEST(RopeFrequencies, PlainThetaPowers) {
  const auto inv = RopeInverseFrequencies(Llama(8, 10000.0f));
  ASSERT_EQ(inv.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(inv[i], std::pow(10000.0, -2.0 * i / 8));
}

TEST(RopeFrequencies, LinearScalingDividesEveryFrequency) {
  ModelConfig c = Llama(16, 10000.0f);
  c.rope_scaling.type = RopeScalingType::kLinear;
  c.rope_scaling.factor = 4.0f;
  const auto plain = RopeInverseFrequencies(Llama(16, 10000.0f));
  const auto scaled = RopeInverseFrequencies(c);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_FLOAT_EQ(scaled[i], plain[i] / 4.0f);
}

TEST(RopeFrequencies, Llama3KeepsShortWavelengthsSlowsLongOnesBlendsBetween) {
  // Llama 3.1's settings: theta 500000, factor 8, low 1, high 4, original context 8192.
  ModelConfig c = Llama(128, 500000.0f);
  c.rope_scaling = {RopeScalingType::kLlama3, 8.0f, 1.0f, 4.0f, 8192};
  const auto plain = RopeInverseFrequencies(Llama(128, 500000.0f));
  const auto scaled = RopeInverseFrequencies(c);
  int kept = 0, slowed = 0, blended = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    const double wavelen = 2 * std::numbers::pi / plain[i];
    if (wavelen < 8192.0 / 4) {
      EXPECT_FLOAT_EQ(scaled[i], plain[i]) << i;
      ++kept;
    } else if (wavelen > 8192.0 / 1) {
      EXPECT_FLOAT_EQ(scaled[i], plain[i] / 8) << i;
      ++slowed;
    } else {
      EXPECT_LT(scaled[i], plain[i]) << i;
      EXPECT_GT(scaled[i], plain[i] / 8) << i;
      ++blended;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(slowed, 0);
  EXPECT_GT(blended, 0);
}

}  // namespace
}  // namespace kvshard
