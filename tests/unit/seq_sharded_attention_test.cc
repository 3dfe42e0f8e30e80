// Attention over positions sharded block-round-robin across pools (plan/paged_kv.h), merged with
// each pool's log-sum-exp (merge_attention), against the one-pool kernel: the same outputs and
// log-sum-exps for every token of a batch whose sequences end at the ownership edges (length 1,
// S*block - 1, S*block, S*block + 1, shorter than one block per shard) and beyond, for 2, 3 and 4
// shards; a shard that holds none of a row's positions contributes nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/paged_attention.h"

namespace kvshard {
namespace {

constexpr int64_t kQHeads = 8, kKvHeads = 2;

struct Batch {
  int64_t head_dim, row;  // row: kKvHeads * head_dim
  std::vector<int64_t> lens;
  std::vector<std::vector<float>> k, v;  // per sequence [len, row]
  std::vector<float> q;                  // [tokens, kQHeads, head_dim]: every position of every
  std::vector<int32_t> token_seq, positions;  // sequence, as one causal prefill step
  int64_t tokens = 0;
};

Batch MakeBatch(const std::vector<int64_t>& lens, int64_t head_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Batch b;
  b.head_dim = head_dim;
  b.row = kKvHeads * head_dim;
  b.lens = lens;
  for (size_t s = 0; s < lens.size(); ++s) {
    b.k.emplace_back(lens[s] * b.row);
    b.v.emplace_back(lens[s] * b.row);
    for (float& x : b.k.back()) x = normal(rng);
    for (float& x : b.v.back()) x = normal(rng);
    for (int64_t p = 0; p < lens[s]; ++p) {
      b.token_seq.push_back(static_cast<int32_t>(s));
      b.positions.push_back(static_cast<int32_t>(p));
    }
  }
  b.tokens = static_cast<int64_t>(b.positions.size());
  b.q.resize(b.tokens * kQHeads * head_dim);
  for (float& x : b.q) x = normal(rng);
  return b;
}

// One pool with `geometry`: each sequence's local blocks, in reverse order in the pool (as a
// used pool looks), its owned positions appended; then attention of every token with its lse.
void Attend(const Batch& b, const PagedKvGeometry& geometry, float* out, float* lse) {
  std::vector<int32_t> indptr = {0}, ids;
  int64_t blocks = 0;
  for (int64_t len : b.lens) blocks += geometry.BlocksFor(len);
  for (int64_t len : b.lens) {
    for (int64_t i = 0; i < geometry.BlocksFor(len); ++i) {
      ids.push_back(static_cast<int32_t>(blocks - 1 - static_cast<int64_t>(ids.size())));
    }
    indptr.push_back(static_cast<int32_t>(ids.size()));
  }
  const int64_t pool = (blocks + 1) * geometry.block_size * b.row;
  std::vector<float> kc(pool, NAN), vc(pool, NAN);
  for (size_t s = 0; s < b.lens.size(); ++s) {
    for (int64_t p = 0; p < b.lens[s]; ++p) {
      if (!geometry.Owns(p)) continue;
      ASSERT_TRUE(geometry.Covers(indptr[s + 1] - indptr[s], p));
      const int64_t slot = geometry.Slot(ids.data() + indptr[s], p);
      kv_append<float>(kc.data(), vc.data(), b.k[s].data() + p * b.row, b.v[s].data() + p * b.row,
                       &slot, 1, kKvHeads, b.head_dim);
    }
  }
  const PagedKvView view{indptr.data(), ids.data(), geometry};
  paged_attention<float>(out, b.q.data(), kc.data(), vc.data(), view, b.token_seq.data(),
                         b.positions.data(), b.tokens, kQHeads, kKvHeads, b.head_dim,
                         1.0f / std::sqrt(static_cast<float>(b.head_dim)), lse);
}

// Head size 16 takes the general kernel, 64 the tiled one (runs of up to 16 tokens of a
// prefill chunk sharing each K/V tile), with blocks shorter and longer than its tiles.
TEST(SeqShardedAttention, MergedShardsEqualOnePool) {
  for (const auto& [hd, block] : {std::pair<int64_t, int64_t>{16, 4}, {64, 4}, {64, 24}}) {
    for (int64_t S : {2, 3, 4}) {
      const Batch b =
          MakeBatch({1, S * block - 1, S * block, S * block + 1, 3, 37, 2 * S * block + 40}, hd,
                    static_cast<uint32_t>(7 + S + hd));
      const int64_t rows = b.tokens * kQHeads;
      std::vector<float> want(rows * hd), want_lse(rows);
      Attend(b, PagedKvGeometry{block, 1, 0}, want.data(), want_lse.data());

      std::vector<float> partial(S * rows * hd), partial_lse(S * rows);
      for (int64_t shard = 0; shard < S; ++shard) {
        Attend(b, PagedKvGeometry{block, S, shard}, partial.data() + shard * rows * hd,
               partial_lse.data() + shard * rows);
      }
      std::vector<float> got(rows * hd), got_lse(rows);
      merge_attention(got.data(), got_lse.data(), partial.data(), partial_lse.data(), S, rows, hd);
      const std::string where =
          "head_dim " + std::to_string(hd) + ", block " + std::to_string(block) + ", ";
      for (int64_t i = 0; i < rows * hd; ++i) {
        ASSERT_NEAR(got[i], want[i], 1e-5) << where << S << " shards, element " << i;
      }
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_NEAR(got_lse[r], want_lse[r], 1e-5) << where << S << " shards, row " << r;
      }
      // The first token of every sequence reaches only position 0, on shard 0: every other shard
      // returns zeros and -inf for its rows.
      for (int64_t shard = 1; shard < S; ++shard) {
        for (int64_t h = 0; h < kQHeads; ++h) {
          EXPECT_EQ(partial_lse[shard * rows + h], -std::numeric_limits<float>::infinity());
          EXPECT_EQ(partial[(shard * rows + h) * hd], 0.0f);
        }
      }
    }
  }
}

// A decode step of sequences of which some reach past 4096 positions (the span kernel) and some
// do not, on shards of one pool: merged, every token equals one pool's.
TEST(SeqShardedAttention, LongDecodeMergedShardsEqualOnePool) {
  for (int64_t S : {1, 2, 3}) {
    Batch b = MakeBatch({5000, 70, 4200}, 64, static_cast<uint32_t>(31 + S));
    // Only each sequence's last token queries (a decode step).
    std::vector<float> q;
    std::vector<int32_t> token_seq, positions;
    int64_t first = 0;
    for (size_t s = 0; s < b.lens.size(); ++s) {
      const int64_t t = first + b.lens[s] - 1;
      q.insert(q.end(), b.q.begin() + t * kQHeads * 64, b.q.begin() + (t + 1) * kQHeads * 64);
      token_seq.push_back(static_cast<int32_t>(s));
      positions.push_back(static_cast<int32_t>(b.lens[s] - 1));
      first += b.lens[s];
    }
    b.q = q;
    b.token_seq = token_seq;
    b.positions = positions;
    b.tokens = static_cast<int64_t>(b.lens.size());
    const int64_t rows = b.tokens * kQHeads;
    std::vector<float> want(rows * 64), want_lse(rows);
    Attend(b, PagedKvGeometry{16, 1, 0}, want.data(), want_lse.data());
    // One pool's answer against a double-precision reference.
    for (size_t s = 0; s < b.lens.size(); ++s) {
      std::vector<float> ref(kQHeads * 64);
      contiguous_attention(ref.data(), b.q.data() + s * kQHeads * 64, b.k[s].data(), b.v[s].data(),
                           b.lens[s], kQHeads, kKvHeads, 64, 1.0f / 8.0f);
      for (int64_t i = 0; i < kQHeads * 64; ++i) {
        ASSERT_NEAR(want[s * kQHeads * 64 + i], ref[i], 1e-5) << "sequence " << s;
      }
    }
    std::vector<float> partial(S * rows * 64), partial_lse(S * rows);
    for (int64_t shard = 0; shard < S; ++shard) {
      Attend(b, PagedKvGeometry{16, S, shard}, partial.data() + shard * rows * 64,
             partial_lse.data() + shard * rows);
    }
    std::vector<float> got(rows * 64), got_lse(rows);
    merge_attention(got.data(), got_lse.data(), partial.data(), partial_lse.data(), S, rows, 64);
    for (int64_t i = 0; i < rows * 64; ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5) << S << " shards, element " << i;
    }
    for (int64_t r = 0; r < rows; ++r) ASSERT_NEAR(got_lse[r], want_lse[r], 1e-5) << S << " shards";
  }
}

// A causal prefill step on the tiled kernel against the contiguous reference, token by token:
// three sequences' prompts in one step, cut into runs at 16 tokens and at each sequence's end.
TEST(SeqShardedAttention, TiledPrefillChunkIsCausal) {
  constexpr int64_t hd = 64, block = 16;
  const Batch b = MakeBatch({40, 70, 5}, hd, 11);
  const int64_t rows = b.tokens * kQHeads;
  std::vector<float> out(rows * hd), lse(rows);
  Attend(b, PagedKvGeometry{block, 1, 0}, out.data(), lse.data());
  int64_t t = 0;
  for (size_t s = 0; s < b.lens.size(); ++s) {
    for (int64_t p = 0; p < b.lens[s]; ++p, ++t) {
      std::vector<float> want(kQHeads * hd);
      contiguous_attention(want.data(), b.q.data() + t * kQHeads * hd, b.k[s].data(), b.v[s].data(),
                           p + 1, kQHeads, kKvHeads, hd, 1.0f / std::sqrt(static_cast<float>(hd)));
      for (int64_t i = 0; i < kQHeads * hd; ++i) {
        ASSERT_NEAR(out[t * kQHeads * hd + i], want[i], 1e-5)
            << "sequence " << s << " position " << p;
      }
    }
  }
}

TEST(SeqShardedAttention, GeometryDealsBlocksRoundRobin) {
  const PagedKvGeometry g{4, 3, 1};  // block size 4, shard 1 of 3: global blocks 1, 4, 7, ...
  EXPECT_EQ(g.BlocksFor(0), 0);
  EXPECT_EQ(g.BlocksFor(4), 0);  // only global block 0 (shard 0's)
  EXPECT_EQ(g.BlocksFor(5), 1);
  EXPECT_EQ(g.BlocksFor(17), 2);  // global blocks 0..4: 1 and 4 are here
  EXPECT_FALSE(g.Owns(3));
  EXPECT_TRUE(g.Owns(4));
  EXPECT_TRUE(g.Owns(19));
  EXPECT_EQ(g.LocalBlock(19), 1);
  EXPECT_EQ(g.BlockStart(1), 16);
  const int32_t table[] = {9, 2};
  EXPECT_EQ(g.Slot(table, 18), 2 * 4 + 2);
  EXPECT_TRUE(g.Covers(2, 18));
  EXPECT_FALSE(g.Covers(1, 18));
  EXPECT_FALSE(g.Covers(2, 8));  // shard 2's
  EXPECT_NE(PagedKvGeometry({4, 3, 3}).Check(10, 100), "");
  EXPECT_EQ(g.Check(10, 100), "");
}

TEST(SeqShardedAttention, MergeOfNothingIsEmpty) {
  const float po[2 * 4] = {1, 2, 3, 4, 5, 6, 7, 8};
  const float inf = std::numeric_limits<float>::infinity();
  const float plse[2] = {-inf, -inf};
  float out[4] = {9, 9, 9, 9}, lse = 0;
  merge_attention(out, &lse, po, plse, 2, 1, 4);
  for (float x : out) EXPECT_EQ(x, 0.0f);
  EXPECT_EQ(lse, -inf);
}

}  // namespace
}  // namespace kvshard
