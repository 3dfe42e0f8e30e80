#include "coordinator/sampler.h"

#include <algorithm>
#include <cmath>

namespace kvshard {

Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0) {
    return InvalidArgument("sampling.temperature: must be a finite number >= 0, got {}",
                           p.temperature);
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return InvalidArgument("sampling.top_p: must be in (0, 1], got {}", p.top_p);
  }
  if (p.top_k < 0) {
    return InvalidArgument("sampling.top_k: must be >= 0 (0 = no limit), got {}", p.top_k);
  }
  return Status::Ok();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(const float* logits, int64_t vocab) {
  if (params_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  candidates_.resize(vocab);
  const float mx = *std::max_element(logits, logits + vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    candidates_[i] = {std::exp((logits[i] - mx) / params_.temperature), static_cast<int32_t>(i)};
  }
  auto by_prob = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int64_t keep = vocab;
  if (params_.top_k > 0 && params_.top_k < vocab) {
    keep = params_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_prob);
  } else if (params_.top_p < 1.0f) {
    std::sort(candidates_.begin(), candidates_.end(), by_prob);
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += candidates_[i].first;
  if (params_.top_p < 1.0f) {
    if (params_.top_k > 0 && params_.top_k < vocab) {
      std::sort(candidates_.begin(), candidates_.begin() + keep, by_prob);
    }
    // The smallest prefix of the sorted candidates whose mass reaches top_p.
    double mass = 0;
    int64_t n = 0;
    while (n < keep) {
      mass += candidates_[n++].first;
      if (mass >= params_.top_p * total) break;
    }
    keep = n;
    total = mass;
  }
  std::uniform_real_distribution<double> uniform(0.0, total);
  const double r = uniform(rng_);
  double acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += candidates_[i].first;
    if (r < acc) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

}  // namespace kvshard
