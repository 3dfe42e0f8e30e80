// The paged kernel against a contiguous double-precision reference, across block boundaries,
// grouped-query ratios and every cache dtype.
#include "kernels/cpu/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cpu/kv_load.h"

namespace kvshard {
namespace {

struct Case {
  int64_t len, q_heads, kv_heads, head_dim;
};

template <typename KV>
double MaxError(const Case& c, int64_t block_size, uint32_t seed, double* quant_err = nullptr,
                int64_t window = 0) {
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
  // Rows never written read as NaN: values, or (quantized) their scales.
  KV fill{};
  if constexpr (!kQuantizedKv<KV>) fill = from_f32<KV>(NAN);
  std::vector<KV> kc(pool_blocks * block_size * row, fill);
  std::vector<KV> vc(pool_blocks * block_size * row, fill);
  std::vector<float> ks(pool_blocks * block_size * c.kv_heads, NAN);
  std::vector<float> vs(pool_blocks * block_size * c.kv_heads, NAN);
  std::vector<int64_t> slots(c.len);
  for (int64_t p = 0; p < c.len; ++p) slots[p] = ids[p / block_size] * block_size + p % block_size;
  kv_append<KV>(kc.data(), vc.data(), k.data(), v.data(), slots.data(), c.len, c.kv_heads,
                c.head_dim, ks.data(), vs.data());

  const std::vector<int32_t> indptr = {0, static_cast<int32_t>(nblocks)};
  const PagedKvView view{indptr.data(), ids.data(), block_size};
  const int32_t seq = 0, pos = static_cast<int32_t>(c.len - 1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  std::vector<float> got(c.q_heads * c.head_dim), want(c.q_heads * c.head_dim);
  std::vector<float> lse(c.q_heads);
  paged_attention<KV>(got.data(), q.data(), kc.data(), vc.data(), view, &seq, &pos, 1, c.q_heads,
                      c.kv_heads, c.head_dim, scale, lse.data(), ks.data(), vs.data(), window);
  // The reference sees the cache as stored (rounded or quantized to KV), so only the kernel's
  // error remains; `quant_err` is how far storing moved the rows.
  for (int64_t p = 0; p < c.len; ++p) {
    for (int64_t h = 0; h < c.kv_heads; ++h) {
      const int64_t at = slots[p] * row + h * c.head_dim, sc = slots[p] * c.kv_heads + h;
      std::vector<float> kr(c.head_dim), vr(c.head_dim);
      kv_row_to_f32(kr.data(), kc.data() + at, ks[sc], c.head_dim);
      kv_row_to_f32(vr.data(), vc.data() + at, vs[sc], c.head_dim);
      for (int64_t i = 0; i < c.head_dim; ++i) {
        const int64_t j = p * row + h * c.head_dim + i;
        if (quant_err) {
          *quant_err = std::max(*quant_err, static_cast<double>(std::fabs(kr[i] - k[j])));
          *quant_err = std::max(*quant_err, static_cast<double>(std::fabs(vr[i] - v[j])));
        }
        k[j] = kr[i];
        v[j] = vr[i];
      }
    }
  }
  // A window: the dense reference over the window's positions only.
  const int64_t low = window > 0 ? std::max<int64_t>(0, c.len - window) : 0;
  contiguous_attention(want.data(), q.data(), k.data() + low * row, v.data() + low * row,
                       c.len - low, c.q_heads, c.kv_heads, c.head_dim, scale);
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  // Each row's log-sum-exp, against a double-precision sum over the stored keys.
  const int64_t group = c.q_heads / c.kv_heads;
  for (int64_t h = 0; h < c.q_heads; ++h) {
    std::vector<double> scores;
    for (int64_t p = low; p < c.len; ++p) {
      double d = 0;
      for (int64_t i = 0; i < c.head_dim; ++i) {
        d += static_cast<double>(q[h * c.head_dim + i]) * k[p * row + (h / group) * c.head_dim + i];
      }
      scores.push_back(d * scale);
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
      EXPECT_LT(MaxError<int8_t>(c, 16, len + 3), 1e-4) << "int8 cache, len " << len;
      EXPECT_LT(MaxError<fp8_e4m3_t>(c, 16, len + 4), 1e-4) << "fp8 cache, len " << len;
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
          if (len == 300 || len == 17) {
            EXPECT_LT(MaxError<int8_t>(c, bs, seed), 1e-4)
                << "int8, head_dim " << hd << " group " << group << " block " << bs;
            EXPECT_LT(MaxError<fp8_e4m3_t>(c, bs, seed), 1e-4)
                << "fp8, head_dim " << hd << " group " << group << " block " << bs;
          }
        }
      }
    }
  }
}

// Decode reaching at least 4096 positions takes the span kernel (flash-decoding): the sequence
// cut into spans of 2048 positions, each span's KV heads read together, the spans merged by
// their log-sum-exps; span edges inside blocks (24) and on them (16), a short last span, windows
// within the last span and across spans, every query group's kernel and every cache dtype.
TEST(PagedAttention, LongDecodeSpansEqualTheReference) {
  for (int64_t len : {4096, 4097, 6200}) {
    for (const Case c : {Case{len, 8, 2, 64}, Case{len, 4, 4, 128}, Case{len, 3, 1, 64}}) {
      for (int64_t bs : {16, 24}) {
        for (int64_t window : {0, 100, 3000}) {
          const uint32_t seed = static_cast<uint32_t>(len + bs + window + c.q_heads);
          const std::string what = "len " + std::to_string(len) + " heads " +
                                   std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) +
                                   " block " + std::to_string(bs) + " window " +
                                   std::to_string(window);
          EXPECT_LT(MaxError<float>(c, bs, seed, nullptr, window), 1e-5) << what;
          if (bs == 24 && window != 100) {
            EXPECT_LT(MaxError<int8_t>(c, bs, seed, nullptr, window), 1e-4) << "int8, " << what;
            EXPECT_LT(MaxError<bf16_t>(c, bs, seed, nullptr, window), 1e-4) << "bf16, " << what;
            EXPECT_LT(MaxError<fp8_e4m3_t>(c, bs, seed, nullptr, window), 1e-4) << "fp8, " << what;
          }
        }
      }
    }
  }
}

// What storing costs: an int8 row is within half a step (max |x| / 254) of the f32 row, an fp8
// row within half of E4M3's relative spacing (2^-4 of the value, or the subnormal step).
TEST(PagedAttention, QuantizedRowsAreWithinHalfAStep) {
  for (int64_t hd : {8, 64, 128}) {
    const Case c{40, 4, 2, hd};
    double int8_err = 0, fp8_err = 0;
    MaxError<int8_t>(c, 16, 5, &int8_err);
    MaxError<fp8_e4m3_t>(c, 16, 6, &fp8_err);
    // Unit normals: a row's max |x| is below 5.5, so int8's half step is below 5.5 / 254, and
    // fp8's (half of 2^-3 relative to a value at most the row's max) below 5.5 / 16.
    EXPECT_GT(int8_err, 0.0);
    EXPECT_LT(int8_err, 5.5 / 254) << "head_dim " << hd;
    EXPECT_GT(fp8_err, int8_err) << "e4m3 keeps 3 mantissa bits, int8 7";
    EXPECT_LT(fp8_err, 5.5 / 16) << "head_dim " << hd;
  }
}

// fp8 rows take, of the 16 candidate scales (half.h), the one that stores them best: never worse
// than mapping the row's max to 448, within f32 rounding of the best candidate, and better by 40%
// in mean squared error over normal rows of 8 (stories260K's head size).
TEST(PagedAttention, Fp8RowsTakeTheScaleThatStoresThemBest) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t hd : {8, 64, 128}) {
    double sum_best = 0, sum_max = 0;
    for (int r = 0; r < 2000; ++r) {
      std::vector<float> k(hd), v(hd);
      for (int64_t i = 0; i < hd; ++i) k[i] = normal(rng) * (r % 7 == 0 ? 1e-3f : 1.0f);
      for (int64_t i = 0; i < hd; ++i) v[i] = (i == r % hd) ? 30.0f : normal(rng);  // an outlier
      std::vector<fp8_e4m3_t> kc(hd), vc(hd);
      float ks = 0, vs = 0;
      const int64_t slot = 0;
      kv_append<fp8_e4m3_t>(kc.data(), vc.data(), k.data(), v.data(), &slot, 1, 1, hd, &ks, &vs);
      for (const auto& [x, codes, scale] : {std::tuple(&k, &kc, ks), std::tuple(&v, &vc, vs)}) {
        double amax = 0;
        for (float e : *x) amax = std::max(amax, std::fabs(static_cast<double>(e)));
        // A row stored with the top code t: its squared error, in double.
        auto error_at = [&](double t) {
          double err = 0;
          for (float e : *x) {
            const float code =
                fp8_e4m3_bits_to_f32(f32_to_fp8_e4m3_bits(e * static_cast<float>(t / amax)));
            const double d = e - code * (amax / t);
            err += d * d;
          }
          return err;
        };
        double stored = 0;
        for (int64_t i = 0; i < hd; ++i) {
          const double d = (*x)[i] - fp8_e4m3_bits_to_f32((*codes)[i].bits) * double{scale};
          stored += d * d;
        }
        double best = error_at(448.0);
        for (int j = 1; j < kFp8ScaleCandidates; ++j)
          best = std::min(best, error_at(14.0 * (32 - j)));
        const double at_max = error_at(448.0);
        EXPECT_LE(stored, at_max * (1 + 1e-5) + 1e-30) << "head_dim " << hd << " row " << r;
        EXPECT_LE(stored, best * (1 + 1e-5) + 1e-30) << "head_dim " << hd << " row " << r;
        if (x == &k && r % 7 != 0) sum_best += stored, sum_max += at_max;
      }
    }
    if (hd == 8) {
      EXPECT_LT(sum_best, sum_max * 0.6) << "mean squared error, rows of 8";
    }
    std::printf("head_dim %ld: mean squared error %.3g of the max-to-448 scale's\n",
                static_cast<long>(hd), sum_best / sum_max);
  }
}

// E4M3 rounding of every 331st positive f32 up to 480 against the nearest of the format's values
// (found by search, in double; a tie goes to the even code), and of the two floats beside each
// midpoint between neighbouring codes.
TEST(HalfConversions, Fp8E4M3RoundsToTheNearestCode) {
  std::vector<double> values;  // codes 0..0x7e
  for (int b = 0; b <= 0x7e; ++b) values.push_back(fp8_e4m3_bits_to_f32(static_cast<uint8_t>(b)));
  auto nearest = [&](double a) -> int {
    if (a >= 448.0) return 0x7e;
    const auto it = std::upper_bound(values.begin(), values.end(), a);
    const int hi = static_cast<int>(it - values.begin()), lo = hi - 1;
    const double dl = a - values[lo], dh = values[hi] - a;
    return dl < dh ? lo : (dh < dl ? hi : (lo % 2 == 0 ? lo : hi));
  };
  std::vector<float> probes;
  for (uint32_t bits = 0; bits < 0x43f00000u; bits += 331) {
    float f = 0;
    std::memcpy(&f, &bits, 4);
    probes.push_back(f);
  }
  for (int b = 0; b < 0x7e; ++b) {
    const float mid = static_cast<float>((values[b] + values[b + 1]) / 2);
    for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) probes.push_back(f);
  }
  int wrong = 0;
  for (float f : probes) {
    const int want = nearest(f);
    if (f32_to_fp8_e4m3_bits(f) != want || f32_to_fp8_e4m3_bits(-f) != (0x80 | want)) {
      if (++wrong < 10)
        ADD_FAILURE() << f << " gave " << int{f32_to_fp8_e4m3_bits(f)} << ", not " << want;
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << probes.size();
  EXPECT_EQ(f32_to_fp8_e4m3_bits(NAN), 0x7f);
}

// Sliding windows: only the last `window` positions (the query's own included), against the dense
// reference over exactly those, for windows inside one block, across blocks and tiles, longer
// than the sequence, on the tiled kernel's shapes and the general loop's, every cache dtype.
TEST(PagedAttention, SlidingWindowEqualsTheDenseReferenceOverTheWindow) {
  for (int64_t window : {1, 5, 16, 17, 40, 2000}) {
    for (const Case c : {Case{300, 8, 2, 64}, Case{300, 4, 4, 128}, Case{300, 4, 2, 8}}) {
      for (int64_t bs : {8, 16}) {
        const uint32_t seed = static_cast<uint32_t>(window * 3 + bs + c.head_dim);
        const std::string what = "window " + std::to_string(window) + " head_dim " +
                                 std::to_string(c.head_dim) + " block " + std::to_string(bs);
        EXPECT_LT(MaxError<float>(c, bs, seed, nullptr, window), 1e-5) << what;
        EXPECT_LT(MaxError<bf16_t>(c, bs, seed, nullptr, window), 1e-4) << "bf16, " << what;
        EXPECT_LT(MaxError<int8_t>(c, bs, seed, nullptr, window), 1e-4) << "int8, " << what;
      }
    }
  }
}

// Blocks wholly before every window are never read: their rows (NaN here) leave no trace.
TEST(PagedAttention, SlidingWindowNeverReadsBlocksBeforeTheWindow) {
  const int64_t heads = 2, hd = 64, bs = 16, len = 100, window = 20;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> k(len * heads * hd), v(len * heads * hd), q(heads * hd);
  for (auto* buf : {&k, &v, &q}) {
    for (float& x : *buf) x = normal(rng);
  }
  std::vector<float> kc(7 * bs * heads * hd), vc(7 * bs * heads * hd);
  std::vector<int32_t> ids = {6, 2, 4, 0, 5, 1, 3}, indptr = {0, 7};
  std::vector<int64_t> slots(len);
  for (int64_t p = 0; p < len; ++p) slots[p] = ids[p / bs] * bs + p % bs;
  kv_append<float>(kc.data(), vc.data(), k.data(), v.data(), slots.data(), len, heads, hd);
  const int32_t seq = 0, pos = len - 1;
  std::vector<float> want(heads * hd), got(heads * hd);
  paged_attention<float>(want.data(), q.data(), kc.data(), vc.data(),
                         {indptr.data(), ids.data(), bs}, &seq, &pos, 1, heads, heads, hd, 0.125f,
                         nullptr, nullptr, nullptr, window);
  // Positions 0..79 lie before the window; blocks 0..3 (positions 0..63) hold none of it.
  for (int64_t b = 0; b < 4; ++b) {
    std::fill(kc.begin() + ids[b] * bs * heads * hd, kc.begin() + (ids[b] + 1) * bs * heads * hd,
              NAN);
    std::fill(vc.begin() + ids[b] * bs * heads * hd, vc.begin() + (ids[b] + 1) * bs * heads * hd,
              NAN);
  }
  paged_attention<float>(got.data(), q.data(), kc.data(), vc.data(),
                         {indptr.data(), ids.data(), bs}, &seq, &pos, 1, heads, heads, hd, 0.125f,
                         nullptr, nullptr, nullptr, window);
  EXPECT_EQ(got, want);
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

// E4M3 against the format's definition: every one of its 256 codes decodes to
// (-1)^s 2^(e-7) (1 + m/8) (e > 0) or 2^-6 (m/8) (e = 0), S.1111.111 is NaN; encoding a decoded
// value gives its code back, midpoints round to the even code, and beyond 448 saturates.
TEST(HalfConversions, Fp8E4M3EveryCode) {
  for (int b = 0; b < 256; ++b) {
    const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    const float f = fp8_e4m3_bits_to_f32(static_cast<uint8_t>(b));
    if (e == 15 && m == 7) {
      EXPECT_TRUE(std::isnan(f)) << b;
      continue;
    }
    const double want =
        (s ? -1 : 1) * (e > 0 ? std::ldexp(1.0 + m / 8.0, e - 7) : std::ldexp(m / 8.0, -6));
    EXPECT_EQ(f, want) << "code " << b;
    if (b != 0x80) {
      EXPECT_EQ(f32_to_fp8_e4m3_bits(f), b) << "code " << b;
    }
    // The midpoint to the next code up rounds to whichever of the two is even.
    if (e < 15 && m < 7 && !(e == 14 && m == 6) && s == 0) {
      const float next = fp8_e4m3_bits_to_f32(static_cast<uint8_t>(b + 1));
      const float mid = (f + next) / 2;
      EXPECT_EQ(f32_to_fp8_e4m3_bits(mid), (b % 2 == 0) ? b : b + 1) << "midpoint above " << b;
    }
  }
  EXPECT_EQ(f32_to_fp8_e4m3_bits(-0.0f), 0x80);
  EXPECT_EQ(f32_to_fp8_e4m3_bits(1e9f), 0x7e);
  EXPECT_EQ(f32_to_fp8_e4m3_bits(-500.0f), 0xfe);
  EXPECT_EQ(f32_to_fp8_e4m3_bits(1e-9f), 0x00);
  EXPECT_EQ(f32_to_i8(126.5f), 126);
  EXPECT_EQ(f32_to_i8(-1000.0f), -127);
  EXPECT_EQ(f32_to_i8(2.5f), 2);
}

// The vector decode the attention kernels use (kernels/cpu/kv_load.h) equals the scalar one for
// every code but NaN, on each ISA path this file is built for.
TEST(HalfConversions, Fp8VectorLoadEqualsScalarDecode) {
  constexpr int W = simd::kWidth;
  std::vector<fp8_e4m3_t> codes(256 + W);
  for (size_t b = 0; b < codes.size(); ++b) codes[b].bits = static_cast<uint8_t>(b % 256);
  for (int b0 = 0; b0 < 256; b0 += W) {
    float got[W];
    simd::store(got, load_kv(codes.data() + b0));
    for (int i = 0; i < W; ++i) {
      const int b = b0 + i;
      if ((b & 0x7f) == 0x7f) continue;
      EXPECT_EQ(got[i] * kCodeDivisor<fp8_e4m3_t>, fp8_e4m3_bits_to_f32(static_cast<uint8_t>(b)))
          << "code " << b;
    }
  }
}

}  // namespace
}  // namespace kvshard
