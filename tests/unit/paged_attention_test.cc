// The paged kernel against a contiguous double-precision reference, across block boundaries,
// grouped-query ratios and every cache dtype.
#include "kernels/cpu/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "kernels/cpu/half.h"

namespace kvshard {
namespace {

struct Case {
  int64_t len, q_heads, kv_heads, head_dim;
};

template <typename KV>
double MaxError(const Case& c, int64_t block_size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t row = c.kv_heads * c.head_dim;
  std::vector<float> k(c.len * row), v(c.len * row), q(c.q_heads * c.head_dim);
  for (auto* buf : {&k, &v, &q}) {
    for (float& x : *buf) x = normal(rng);
  }
  // Blocks in a scrambled order with unused blocks in between, as a real pool looks.
  const int64_t nblocks = (c.len + block_size - 1) / block_size;
  const int64_t pool_blocks = 2 * nblocks + 3;
  std::vector<int32_t> ids(pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(nblocks);
  std::vector<KV> kc(pool_blocks * block_size * row, from_f32<KV>(NAN));
  std::vector<KV> vc(pool_blocks * block_size * row, from_f32<KV>(NAN));
  std::vector<int64_t> slots(c.len);
  for (int64_t p = 0; p < c.len; ++p) slots[p] = ids[p / block_size] * block_size + p % block_size;
  kv_append<KV>(kc.data(), vc.data(), k.data(), v.data(), slots.data(), c.len, c.kv_heads,
                c.head_dim);

  const std::vector<int32_t> indptr = {0, static_cast<int32_t>(nblocks)};
  const PagedKvView view{indptr.data(), ids.data(), block_size};
  const int32_t seq = 0, pos = static_cast<int32_t>(c.len - 1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  std::vector<float> got(c.q_heads * c.head_dim), want(c.q_heads * c.head_dim);
  std::vector<float> lse(c.q_heads);
  paged_attention<KV>(got.data(), q.data(), kc.data(), vc.data(), view, &seq, &pos, 1, c.q_heads,
                      c.kv_heads, c.head_dim, scale, lse.data());
  // The reference sees the cache as stored (rounded to KV), so only the kernel's error remains.
  for (int64_t i = 0; i < c.len * row; ++i) {
    k[i] = to_f32(from_f32<KV>(k[i]));
    v[i] = to_f32(from_f32<KV>(v[i]));
  }
  contiguous_attention(want.data(), q.data(), k.data(), v.data(), c.len, c.q_heads, c.kv_heads,
                       c.head_dim, scale);
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  // Each row's log-sum-exp, against a double-precision sum over the stored keys.
  const int64_t group = c.q_heads / c.kv_heads;
  for (int64_t h = 0; h < c.q_heads; ++h) {
    std::vector<double> scores(c.len);
    for (int64_t p = 0; p < c.len; ++p) {
      double d = 0;
      for (int64_t i = 0; i < c.head_dim; ++i) {
        d += static_cast<double>(q[h * c.head_dim + i]) * k[p * row + (h / group) * c.head_dim + i];
      }
      scores[p] = d * scale;
    }
    const double mx = *std::max_element(scores.begin(), scores.end());
    double sum = 0;
    for (double x : scores) sum += std::exp(x - mx);
    err = std::max(err, std::fabs(lse[h] - (mx + std::log(sum))) / (1.0 + std::fabs(mx)));
  }
  return err;
}

TEST(PagedAttention, MatchesContiguousAtBlockBoundaries) {
  for (int64_t len : {1, 15, 16, 17, 1000}) {
    for (Case c : {Case{len, 4, 4, 16}, Case{len, 8, 2, 32}, Case{len, 8, 1, 8}}) {
      EXPECT_LT(MaxError<float>(c, 16, len), 1e-5)
          << "len " << len << " heads " << c.q_heads << "/" << c.kv_heads;
      EXPECT_LT(MaxError<f16_t>(c, 16, len + 1), 1e-4) << "f16 cache, len " << len;
      EXPECT_LT(MaxError<bf16_t>(c, 16, len + 2), 1e-4) << "bf16 cache, len " << len;
    }
  }
}

// Model head sizes (64, 128) and the query groups of Llama-style models take the tiled kernel:
// tiles of 16 positions inside blocks of 8, 16, 24 and 48, short last tiles, every cache dtype.
TEST(PagedAttention, TiledKernelAtModelShapes) {
  for (int64_t hd : {64, 128}) {
    for (int64_t group : {1, 2, 3, 4, 6, 8}) {
      for (int64_t bs : {8, 16, 24, 48}) {
        for (int64_t len : {1, 9, 16, 17, 50, 300}) {
          const Case c{len, 2 * group, 2, hd};
          const uint32_t seed = static_cast<uint32_t>(hd + group * 7 + bs * 13 + len);
          EXPECT_LT(MaxError<float>(c, bs, seed), 1e-5)
              << "head_dim " << hd << " group " << group << " block " << bs << " len " << len;
          if (len == 300) {
            EXPECT_LT(MaxError<f16_t>(c, bs, seed), 1e-4) << "f16, head_dim " << hd;
            EXPECT_LT(MaxError<bf16_t>(c, bs, seed), 1e-4) << "bf16, head_dim " << hd;
          }
        }
      }
    }
  }
}

TEST(PagedAttention, OddBlockSizes) {
  for (int64_t bs : {1, 3, 7, 64}) {
    EXPECT_LT(MaxError<float>(Case{100, 4, 2, 8}, bs, 9), 1e-5) << "block size " << bs;
  }
}

TEST(PagedAttention, CausalWithinOneStep) {
  // Three tokens of one sequence in one step: each must see only positions up to its own.
  const int64_t heads = 2, hd = 4, bs = 2;
  std::vector<float> k(3 * heads * hd), v(3 * heads * hd), q(3 * heads * hd);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (auto* buf : {&k, &v, &q}) {
    for (float& x : *buf) x = normal(rng);
  }
  std::vector<float> kc(4 * bs * heads * hd), vc(4 * bs * heads * hd);
  const std::vector<int32_t> ids = {3, 1}, indptr = {0, 2};
  const std::vector<int64_t> slots = {6, 7, 2};
  kv_append<float>(kc.data(), vc.data(), k.data(), v.data(), slots.data(), 3, heads, hd);
  const std::vector<int32_t> seqs = {0, 0, 0}, pos = {0, 1, 2};
  std::vector<float> out(3 * heads * hd);
  paged_attention<float>(out.data(), q.data(), kc.data(), vc.data(),
                         {indptr.data(), ids.data(), bs}, seqs.data(), pos.data(), 3, heads, heads,
                         hd, 0.5f);
  for (int64_t t = 0; t < 3; ++t) {
    std::vector<float> want(heads * hd);
    contiguous_attention(want.data(), q.data() + t * heads * hd, k.data(), v.data(), t + 1, heads,
                         heads, hd, 0.5f);
    for (int64_t i = 0; i < heads * hd; ++i) {
      EXPECT_NEAR(out[t * heads * hd + i], want[i], 1e-5) << "token " << t;
    }
  }
}

TEST(HalfConversions, RoundTripsRepresentableValues) {
  for (float f : {0.0f, 1.0f, -2.0f, 0.5f, 65504.0f, 6.103515625e-05f}) {
    EXPECT_EQ(to_f32(from_f32<f16_t>(f)), f);
  }
  for (float f : {0.0f, 1.0f, -2.0f, 0.5f, 1.5f, 256.0f}) EXPECT_EQ(to_f32(from_f32<bf16_t>(f)), f);
  // Ties round to even: 1 + 2^-8 lies halfway between two bf16 values.
  EXPECT_EQ(to_f32(from_f32<bf16_t>(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(to_f32(from_f32<bf16_t>(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isinf(to_f32(from_f32<f16_t>(1e6f))));
  EXPECT_TRUE(std::isnan(to_f32(from_f32<f16_t>(NAN))));
  EXPECT_TRUE(std::isnan(to_f32(from_f32<bf16_t>(NAN))));
}

}  // namespace
}  // namespace kvshard
