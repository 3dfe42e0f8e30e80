// Next-token choice from logits: greedy, or temperature with top-k and top-p, seeded.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "common/status.h"

namespace kvshard {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = no limit
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;
};

// InvalidArgument "sampling.FIELD: why" for NaN or negative temperature, top_p outside (0, 1],
// negative top_k.
Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: f32 [vocab]. Returns the chosen token id.
  int32_t Sample(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // (probability, id), reused every call
};

}  // namespace kvshard
