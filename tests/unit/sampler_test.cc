#include "coordinator/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

namespace kvshard {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.5f, -1.0f, 0.0f};

TEST(Sampler, GreedyIsArgmax) {
  Sampler s({0.0f, 0, 1.0f, 0});
  EXPECT_EQ(s.Sample(kLogits.data(), kLogits.size()), 3);
}

TEST(Sampler, SameSeedSameChoicesDifferentSeedDifferentChoices) {
  auto draw = [](uint64_t seed) {
    Sampler s({1.0f, 0, 1.0f, seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Sample(kLogits.data(), kLogits.size()));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  Sampler k1({2.0f, 1, 1.0f, 5});
  Sampler p({2.0f, 0, 1e-6f, 5});
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(k1.Sample(kLogits.data(), kLogits.size()), 3);
    EXPECT_EQ(p.Sample(kLogits.data(), kLogits.size()), 3);
  }
}

TEST(Sampler, TopKTwoOnlyEverPicksTheTwoBest) {
  Sampler s({5.0f, 2, 1.0f, 9});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[s.Sample(kLogits.data(), kLogits.size())];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[3], 0);
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  Sampler s({1.0f, 0, 1.0f, 1});
  std::vector<int> count(kLogits.size());
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++count[s.Sample(kLogits.data(), kLogits.size())];
  double z = 0;
  for (float l : kLogits) z += std::exp(l);
  for (size_t i = 0; i < kLogits.size(); ++i) {
    EXPECT_NEAR(count[i] / static_cast<double>(n), std::exp(kLogits[i]) / z, 0.015) << i;
  }
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  // Probabilities at T=1: token 3 ~0.50, token 1 ~0.30, token 2 ~0.11 ...: top_p 0.7 keeps {3, 1}.
  Sampler s({1.0f, 0, 0.7f, 3});
  for (int i = 0; i < 300; ++i) {
    const int32_t t = s.Sample(kLogits.data(), kLogits.size());
    EXPECT_TRUE(t == 3 || t == 1) << t;
  }
}

TEST(Sampler, ValidationNamesTheField) {
  EXPECT_NE(ValidateSamplingParams({NAN, 0, 1.0f, 0}).message().find("temperature"),
            std::string::npos);
  EXPECT_NE(ValidateSamplingParams({-1.0f, 0, 1.0f, 0}).message().find("temperature"),
            std::string::npos);
  EXPECT_NE(ValidateSamplingParams({1.0f, 0, 0.0f, 0}).message().find("top_p"), std::string::npos);
  EXPECT_NE(ValidateSamplingParams({1.0f, 0, 1.01f, 0}).message().find("top_p"), std::string::npos);
  EXPECT_NE(ValidateSamplingParams({1.0f, -2, 1.0f, 0}).message().find("top_k"), std::string::npos);
  EXPECT_TRUE(ValidateSamplingParams({0.7f, 40, 0.9f, 0}).ok());
}

}  // namespace
}  // namespace kvshard
