// What the multi-rank equivalence tests share: where the test models are, and how far two runs'
// logits are apart.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

namespace kvshard {

inline std::string TestModelDir(const std::string& name) {
  const char* dir = std::getenv("KVSHARD_TEST_MODELS");
  return std::string(dir ? dir : "test_models") + "/" + name;
}

// max |a - b| / max |a| over every logit of every step (step counts and sizes must agree).
inline double RelativeDiff(const std::vector<std::vector<float>>& a,
                           const std::vector<std::vector<float>>& b) {
  double diff = 0, scale = 0;
  EXPECT_EQ(a.size(), b.size());
  for (size_t s = 0; s < std::min(a.size(), b.size()); ++s) {
    EXPECT_EQ(a[s].size(), b[s].size());
    for (size_t i = 0; i < std::min(a[s].size(), b[s].size()); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(a[s][i] - b[s][i])));
      scale = std::max(scale, static_cast<double>(std::fabs(a[s][i])));
    }
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace kvshard
