// The blocked prefill kernel (kernels/cpu/blocked_attention.h), through paged_attention, against
// the contiguous reference: steps of prefill chunks (whole prompts, and the tail of a prompt
// whose prefix is cached) beside decode tokens, at head sizes of one to eight vectors, query
// groups 1 to 8, blocks shorter and longer than its 66-position tiles, windows and floors, and
// every cache dtype.
#include "kernels/cpu/blocked_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cpu/paged_attention.h"

namespace kvshard {
namespace {

// One sequence of a step: `len` positions cached, its last `chunk` of them queried.
struct Seq {
  int64_t len, chunk;
};

struct Shape {
  int64_t q_heads, kv_heads, head_dim, block;
};

// The largest error of any output element (absolute) or log-sum-exp (relative to 1 + |max|)
// over every token of the step.
template <typename KV>
double StepError(const std::vector<Seq>& seqs, const Shape& sh, uint32_t seed, int64_t window = 0,
                 int64_t floor = 0) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t row = sh.kv_heads * sh.head_dim, bs = sh.block;
  int64_t nblocks = 0;
  for (const Seq& s : seqs) nblocks += (s.len + bs - 1) / bs;
  // Blocks scrambled through a pool twice as large; the rest stays NaN (values or scales), so
  // a read of anything not written shows in the output.
  const int64_t pool_blocks = 2 * nblocks + 3;
  std::vector<int32_t> ids(pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int32_t unused = ids[nblocks];
  KV fill{};
  if constexpr (!kQuantizedKv<KV>) fill = from_f32<KV>(NAN);
  std::vector<KV> kc(pool_blocks * bs * row, fill), vc(pool_blocks * bs * row, fill);
  std::vector<float> ks(pool_blocks * bs * sh.kv_heads, NAN), vs(ks.size(), NAN);
  std::vector<int32_t> indptr = {0}, table;
  std::vector<std::vector<float>> k(seqs.size()), v(seqs.size());  // as stored, f32
  std::vector<float> q;
  std::vector<int32_t> token_seq, positions;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t len = seqs[s].len, blocks = (len + bs - 1) / bs;
    std::vector<float> kr(len * row), vr(len * row);
    for (float& x : kr) x = normal(rng);
    for (float& x : vr) x = normal(rng);
    std::vector<int64_t> slots(len);
    for (int64_t p = 0; p < len; ++p) slots[p] = ids[table.size() + p / bs] * bs + p % bs;
    kv_append<KV>(kc.data(), vc.data(), kr.data(), vr.data(), slots.data(), len, sh.kv_heads,
                  sh.head_dim, ks.data(), vs.data());
    for (int64_t p = 0; p < len; ++p) {  // the reference reads what the cache holds
      for (int64_t h = 0; h < sh.kv_heads; ++h) {
        const int64_t at = slots[p] * row + h * sh.head_dim, sc = slots[p] * sh.kv_heads + h;
        kv_row_to_f32(kr.data() + p * row + h * sh.head_dim, kc.data() + at, ks[sc], sh.head_dim);
        kv_row_to_f32(vr.data() + p * row + h * sh.head_dim, vc.data() + at, vs[sc], sh.head_dim);
      }
    }
    k[s] = kr;
    v[s] = vr;
    // Blocks wholly before every queried token's window (and floor) name an unwritten block.
    const int64_t first_low =
        std::max<int64_t>(floor, window > 0 ? len - seqs[s].chunk + 1 - window : 0);
    for (int64_t b = 0; b < blocks; ++b) {
      const int32_t id = ids[table.size()];
      table.push_back((b + 1) * bs <= first_low ? unused : id);
    }
    indptr.push_back(static_cast<int32_t>(table.size()));
    for (int64_t p = len - seqs[s].chunk; p < len; ++p) {
      token_seq.push_back(static_cast<int32_t>(s));
      positions.push_back(static_cast<int32_t>(p));
      for (int64_t i = 0; i < sh.q_heads * sh.head_dim; ++i) q.push_back(normal(rng));
    }
  }
  const int64_t tokens = static_cast<int64_t>(positions.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(sh.head_dim));
  std::vector<float> got(tokens * sh.q_heads * sh.head_dim), lse(tokens * sh.q_heads);
  const PagedKvView view{indptr.data(), table.data(), bs};
  paged_attention<KV>(got.data(), q.data(), kc.data(), vc.data(), view, token_seq.data(),
                      positions.data(), tokens, sh.q_heads, sh.kv_heads, sh.head_dim, scale,
                      lse.data(), ks.data(), vs.data(), window, floor);
  double err = 0;
  const int64_t group = sh.q_heads / sh.kv_heads;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t s = token_seq[t], p = positions[t];
    const int64_t low = std::max<int64_t>(floor, window > 0 ? p + 1 - window : 0);
    std::vector<float> want(sh.q_heads * sh.head_dim);
    const float* qt = q.data() + t * sh.q_heads * sh.head_dim;
    if (low > p) {  // below the floor: nothing reached, out = 0 and lse = -inf
      for (size_t i = 0; i < want.size(); ++i) {
        err = std::max(err, static_cast<double>(std::fabs(got[t * want.size() + i])));
      }
      for (int64_t h = 0; h < sh.q_heads; ++h) {
        if (lse[t * sh.q_heads + h] != -std::numeric_limits<float>::infinity()) err = 1;
      }
      continue;
    }
    contiguous_attention(want.data(), qt, k[s].data() + low * row, v[s].data() + low * row,
                         p + 1 - low, sh.q_heads, sh.kv_heads, sh.head_dim, scale);
    for (size_t i = 0; i < want.size(); ++i) {
      err = std::max(err, static_cast<double>(std::fabs(got[t * want.size() + i] - want[i])));
    }
    for (int64_t h = 0; h < sh.q_heads; ++h) {
      double mx = -std::numeric_limits<double>::infinity();
      std::vector<double> scores;
      for (int64_t j = low; j <= p; ++j) {
        double d = 0;
        for (int64_t i = 0; i < sh.head_dim; ++i) {
          d += static_cast<double>(qt[h * sh.head_dim + i]) *
               k[s][j * row + (h / group) * sh.head_dim + i];
        }
        scores.push_back(d * scale);
        mx = std::max(mx, d * scale);
      }
      double sum = 0;
      for (double x : scores) sum += std::exp(x - mx);
      err = std::max(
          err, std::fabs(lse[t * sh.q_heads + h] - (mx + std::log(sum))) / (1.0 + std::fabs(mx)));
    }
  }
  return err;
}

// A step as continuous batching builds them: a whole prompt, the tail of a prompt whose prefix
// is cached (starting inside a tile and a block), a one-token prompt and decode tokens.
const std::vector<Seq> kStep = {{200, 200}, {300, 77}, {1, 1}, {65, 1}, {129, 129}, {70, 3}};

TEST(BlockedAttention, PrefillStepsEqualTheReference) {
  for (int64_t hd : {64, 128, 32, 80}) {
    if (!BlockedAttentionFits(hd)) continue;  // other head sizes keep the other kernels
    for (int64_t group : {1, 3, 4, 8}) {
      // Blocks shorter than a tile, dividing it, straddling it and longer than it.
      for (int64_t bs :
           hd == 64 ? std::vector<int64_t>{7, 16, 48, 128} : std::vector<int64_t>{16}) {
        const Shape sh{2 * group, 2, hd, bs};
        const uint32_t seed = static_cast<uint32_t>(hd * 3 + group * 17 + bs);
        const std::string what = "head_dim " + std::to_string(hd) + " group " +
                                 std::to_string(group) + " block " + std::to_string(bs);
        EXPECT_LT(StepError<float>(kStep, sh, seed), 1e-5) << what;
        if (bs == 7 && group != 3) {
          EXPECT_LT(StepError<f16_t>(kStep, sh, seed), 1e-4) << "f16, " << what;
          EXPECT_LT(StepError<bf16_t>(kStep, sh, seed), 1e-4) << "bf16, " << what;
          EXPECT_LT(StepError<int8_t>(kStep, sh, seed), 1e-4) << "int8, " << what;
          EXPECT_LT(StepError<fp8_e4m3_t>(kStep, sh, seed), 1e-4) << "fp8, " << what;
        }
      }
    }
  }
}

// Sliding windows shorter than a tile, across tiles and longer than every sequence, with and
// without a floor (attention sinks' kept prefix, attended apart): blocks before the window are
// never read (their table entries name an unwritten block).
TEST(BlockedAttention, WindowsAndFloorsEqualTheReference) {
  for (int64_t window : {5, 50, 100, 1000}) {
    for (int64_t floor : {0, 4}) {
      for (int64_t bs : {7, 128}) {
        const Shape sh{8, 2, 64, bs};
        const uint32_t seed = static_cast<uint32_t>(window + floor + bs);
        const std::string what = "window " + std::to_string(window) + " floor " +
                                 std::to_string(floor) + " block " + std::to_string(bs);
        EXPECT_LT(StepError<float>(kStep, sh, seed, window, floor), 1e-5) << what;
        EXPECT_LT(StepError<int8_t>(kStep, sh, seed, window, floor), 1e-4) << "int8, " << what;
      }
    }
  }
}

// A chunk much longer than one call's run (several runs per sequence, the longest first) and
// the MHA and MQA extremes.
TEST(BlockedAttention, LongChunksAndExtremeGroups) {
  for (const Shape& sh : {Shape{4, 4, 64, 16}, Shape{16, 1, 64, 16}, Shape{8, 1, 128, 32}}) {
    const uint32_t seed = static_cast<uint32_t>(sh.q_heads + sh.head_dim);
    EXPECT_LT(StepError<float>({{700, 700}, {400, 213}}, sh, seed), 1e-5)
        << "heads " << sh.q_heads << "/" << sh.kv_heads << " head_dim " << sh.head_dim;
  }
}

TEST(BlockedAttention, RunsHoldAboutOneHundredTwentyEightRows) {
  EXPECT_EQ(BlockedRunTokens(1), 64);
  EXPECT_EQ(BlockedRunTokens(4), 32);
  EXPECT_EQ(BlockedRunTokens(8), 16);
  EXPECT_EQ(BlockedRunTokens(128), 1);
}

}  // namespace
}  // namespace kvshard
