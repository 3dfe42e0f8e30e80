// Greedy and top-k/top-p sampling on the GPU. Greedy must equal std::max_element (first maximum).
// Sampling is checked draw by draw against a host reference with coordinator/sampler.cc's
// semantics (sort by probability then id, top-k, shortest top-p prefix, first running mass above
// u * kept) fed with the kernel's own probabilities and the same u = SampleUniform(seed); and in
// distribution over many seeds.
#include "kernels/cuda/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "kernels/cuda/argmax.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvshard::cuda {
namespace {

using testing::DeviceArray;
using testing::kEmulated;
using testing::RandomNormal;

TEST(CudaArgmax, FirstMaximumLikeMaxElement) {
  KVS_REQUIRE_GPU();
  for (int64_t vocab : {1, 7, 1000, 128256}) {
    const int64_t rows = 5;
    std::vector<float> logits = RandomNormal(rows * vocab, static_cast<uint32_t>(vocab));
    if (vocab > 10) {
      logits[1 * vocab + 3] = logits[1 * vocab + vocab - 1] = 100.0f;  // a tie: the first wins
      std::fill(logits.begin() + 2 * vocab, logits.begin() + 3 * vocab, -1.0f);
      std::fill(logits.begin() + 3 * vocab, logits.begin() + 4 * vocab, -INFINITY);
      logits[4 * vocab + vocab - 1] = 1e30f;
    }
    DeviceArray<float> d_logits(logits);
    DeviceArray<int32_t> d_out(rows);
    KVS_TEST_CUDA(argmax(d_out.get(), d_logits.get(), rows, vocab, nullptr));
    const std::vector<int32_t> got = d_out.ToHost();
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = logits.data() + r * vocab;
      EXPECT_EQ(got[r], std::max_element(row, row + vocab) - row)
          << "vocab " << vocab << " row " << r;
    }
  }
}

// The CPU sampler's choice for given probabilities (the kernel's) and u, with the top-p target
// and the draw scaled by `target_scale` and `r_scale` (to probe rounding at the boundaries).
int32_t Reference(const float* probs, int64_t vocab, const SamplingRow& p, double target_scale,
                  double r_scale) {
  std::vector<std::pair<float, int32_t>> c(vocab);
  for (int64_t i = 0; i < vocab; ++i) c[i] = {probs[i], static_cast<int32_t>(i)};
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  int64_t keep = p.top_k > 0 && p.top_k < vocab ? p.top_k : vocab;
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += c[i].first;
  if (p.top_p < 1.0f) {
    double mass = 0;
    int64_t n = 0;
    while (n < keep) {
      mass += c[n++].first;
      if (mass >= p.top_p * total * target_scale) break;
    }
    keep = n;
    total = mass;
  }
  const double r = SampleUniform(p.seed) * total * r_scale;
  double acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += c[i].first;
    if (r < acc) return c[i].second;
  }
  return c[keep - 1].second;
}

TEST(CudaSampling, MatchesCpuSemanticsDrawByDraw) {
  KVS_REQUIRE_GPU();
  struct Config {
    float temperature;
    int32_t top_k;  // -1: more than the vocabulary (no limit)
    float top_p;
  };
  const Config configs[] = {{1.0f, 0, 1.0f},  {0.7f, 50, 1.0f}, {1.3f, 0, 0.9f}, {1.0f, 20, 0.5f},
                            {0.5f, 0, 0.95f}, {2.0f, -1, 1.0f}, {1.0f, 1, 1.0f}, {0.8f, 0, 0.01f}};
  for (int64_t vocab : {2, 10, 1000, 32000}) {
    // Emulated, a row is 1024 threads in lockstep through ~200 block-wide reductions: fewer rows.
    const int64_t rows = kEmulated ? 4 : 64;
    std::vector<float> logits = RandomNormal(rows * vocab, static_cast<uint32_t>(vocab), 3.0f);
    // Equal logits in the first row: ties must break by id, as on the CPU.
    for (int64_t i = 0; i < vocab; i += 2) logits[i] = 1.0f;
    for (const Config& cfg : configs) {
      std::vector<SamplingRow> params(rows);
      for (int64_t r = 0; r < rows; ++r) {
        params[r].temperature = cfg.temperature;
        params[r].top_k = cfg.top_k < 0 ? static_cast<int32_t>(vocab + 5) : cfg.top_k;
        params[r].top_p = cfg.top_p;
        params[r].seed = 1000003ull * r + static_cast<uint64_t>(vocab);
      }
      DeviceArray<float> d_logits(logits), d_probs(rows * vocab);
      DeviceArray<SamplingRow> d_params(params);
      DeviceArray<int32_t> d_out(rows);
      KVS_TEST_CUDA(
          sample(d_out.get(), d_logits.get(), d_params.get(), rows, vocab, d_probs.get(), nullptr));
      const std::vector<int32_t> got = d_out.ToHost();
      const std::vector<float> probs = d_probs.ToHost();
      for (int64_t r = 0; r < rows; ++r) {
        const float* pr = probs.data() + r * vocab;
        // What the CPU semantics choose; where a sum lands within rounding of a boundary, either
        // neighbour is right.
        std::set<int32_t> ok;
        for (double ts : {1.0, 1 - 1e-9, 1 + 1e-9}) {
          for (double rs : {1.0, 1 - 1e-9, 1 + 1e-9})
            ok.insert(Reference(pr, vocab, params[r], ts, rs));
        }
        EXPECT_TRUE(ok.count(got[r]))
            << "vocab " << vocab << " row " << r << " temperature " << cfg.temperature << " top_k "
            << params[r].top_k << " top_p " << cfg.top_p << ": got " << got[r] << ", expected "
            << *ok.begin();
      }
      // The same seeds give the same tokens.
      KVS_TEST_CUDA(
          sample(d_out.get(), d_logits.get(), d_params.get(), rows, vocab, d_probs.get(), nullptr));
      EXPECT_EQ(d_out.ToHost(), got);
    }
  }
}

TEST(CudaSampling, GreedyAndTopOneAreArgmax) {
  KVS_REQUIRE_GPU();
  const int64_t rows = 8, vocab = 5000;
  const std::vector<float> logits = RandomNormal(rows * vocab, 77);
  std::vector<SamplingRow> params(rows);
  for (int64_t r = 0; r < rows; ++r) {
    params[r].seed = r;
    if (r % 2) {
      params[r].temperature = 1.5f;
      params[r].top_k = 1;
    }
  }
  DeviceArray<float> d_logits(logits), d_probs(rows * vocab);
  DeviceArray<SamplingRow> d_params(params);
  DeviceArray<int32_t> d_out(rows);
  KVS_TEST_CUDA(
      sample(d_out.get(), d_logits.get(), d_params.get(), rows, vocab, d_probs.get(), nullptr));
  const std::vector<int32_t> got = d_out.ToHost();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits.data() + r * vocab;
    EXPECT_EQ(got[r], std::max_element(row, row + vocab) - row) << "row " << r;
  }
}

TEST(CudaSampling, FrequenciesFollowTheDistribution) {
  KVS_REQUIRE_GPU();
  if (kEmulated) {
    GTEST_SKIP() << "8000 rows of 1024 threads take minutes on the CPU emulator; the "
                    "draw-by-draw test covers the same code";
  }
  const int64_t rows = 8000, vocab = 4;
  const double p[4] = {0.1, 0.2, 0.3, 0.4};
  std::vector<float> logits(rows * vocab);
  std::vector<SamplingRow> params(rows);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < vocab; ++i) logits[r * vocab + i] = static_cast<float>(std::log(p[i]));
    params[r].temperature = 1.0f;
    params[r].seed = 0x5eed0000ull + r;
  }
  DeviceArray<float> d_logits(logits), d_probs(rows * vocab);
  DeviceArray<SamplingRow> d_params(params);
  DeviceArray<int32_t> d_out(rows);
  KVS_TEST_CUDA(
      sample(d_out.get(), d_logits.get(), d_params.get(), rows, vocab, d_probs.get(), nullptr));
  std::vector<int> counts(vocab, 0);
  for (int32_t t : d_out.ToHost()) {
    ASSERT_GE(t, 0);
    ASSERT_LT(t, vocab);
    ++counts[t];
  }
  for (int64_t i = 0; i < vocab; ++i) {
    EXPECT_NEAR(counts[i] / static_cast<double>(rows), p[i], 0.025) << "token " << i;
  }
}

}  // namespace
}  // namespace kvshard::cuda
