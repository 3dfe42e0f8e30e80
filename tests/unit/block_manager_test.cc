#include "coordinator/block_manager.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace kvshard {
namespace {

TEST(BlockManager, GrowsTablesAndFreesEverything) {
  BlockManager m(10, 16);
  ASSERT_TRUE(m.EnsureCapacity(1, 1).ok());
  EXPECT_EQ(m.Table(1).size(), 1u);
  ASSERT_TRUE(m.EnsureCapacity(1, 16).ok());
  EXPECT_EQ(m.Table(1).size(), 1u) << "16 tokens fit one block of 16";
  ASSERT_TRUE(m.EnsureCapacity(1, 17).ok());
  EXPECT_EQ(m.Table(1).size(), 2u);
  ASSERT_TRUE(m.EnsureCapacity(2, 100).ok());
  EXPECT_EQ(m.Table(2).size(), 7u);
  EXPECT_EQ(m.free_blocks(), 1);
  std::set<int32_t> used(m.Table(1).begin(), m.Table(1).end());
  used.insert(m.Table(2).begin(), m.Table(2).end());
  EXPECT_EQ(used.size(), 9u) << "no block is handed out twice";
  m.Free(1);
  m.Free(2);
  m.Free(3);  // unknown: harmless
  EXPECT_EQ(m.free_blocks(), m.total_blocks());
  EXPECT_EQ(m.live_sequences(), 0);
}

TEST(BlockManager, AllOrNothingWhenFull) {
  BlockManager m(4, 16);
  ASSERT_TRUE(m.EnsureCapacity(1, 40).ok());  // 3 blocks
  const Status st = m.EnsureCapacity(2, 40);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("only 1 of 4 are free"), std::string::npos) << st.message();
  EXPECT_EQ(m.free_blocks(), 1) << "a refused request takes nothing";
  EXPECT_TRUE(m.Table(2).empty());
  EXPECT_EQ(m.live_sequences(), 1);
  m.Free(1);
  EXPECT_EQ(m.free_blocks(), 4);
}

TEST(BlockManager, RandomWorkloadNeverLeaks) {
  BlockManager m(64, 8);
  std::mt19937 rng(11);
  std::vector<int64_t> live_len(20, 0);
  for (int step = 0; step < 5000; ++step) {
    const int64_t seq = rng() % live_len.size();
    if (rng() % 5 == 0) {
      m.Free(seq);
      live_len[seq] = 0;
    } else {
      const int64_t want = live_len[seq] + 1 + rng() % 20;
      if (m.EnsureCapacity(seq, want).ok()) live_len[seq] = want;
    }
    int64_t held = 0;
    for (size_t s = 0; s < live_len.size(); ++s) held += m.Table(s).size();
    ASSERT_EQ(held + m.free_blocks(), m.total_blocks()) << "step " << step;
  }
  for (size_t s = 0; s < live_len.size(); ++s) m.Free(s);
  EXPECT_EQ(m.free_blocks(), m.total_blocks());
}

}  // namespace
}  // namespace kvshard

namespace kvshard {
namespace {

std::vector<int32_t> Tokens(int n, int32_t base) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = base + i;
  return t;
}

// Computes `tokens` for `seq` the way the scheduler does: share the cache, allocate the rest,
// register the full blocks. Returns the tokens served from the cache.
int64_t Compute(BlockManager& m, int64_t seq, const std::vector<int32_t>& tokens,
                const std::string& salt = "") {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t hit = m.MatchPrefix(seq, tokens.data(), n - 1, salt);
  EXPECT_TRUE(m.EnsureCapacity(seq, n).ok());
  m.CommitFullBlocks(seq, tokens.data(), n, salt);
  return hit;
}

TEST(PrefixCache, SecondSequenceSharesFullBlocks) {
  BlockManager m(16, 4);
  const auto doc = Tokens(10, 100);  // blocks [0,4) [4,8) full, [8,10) partial
  EXPECT_EQ(Compute(m, 1, doc), 0);
  auto longer = doc;
  longer.push_back(7);
  longer.push_back(8);
  EXPECT_EQ(Compute(m, 2, longer), 8) << "two full blocks shared";
  EXPECT_EQ(m.Table(1)[0], m.Table(2)[0]);
  EXPECT_EQ(m.Table(1)[1], m.Table(2)[1]);
  EXPECT_NE(m.Table(1)[2], m.Table(2)[2]) << "partial blocks are never shared";
  m.Free(1);
  m.Free(2);
  EXPECT_EQ(m.free_blocks(), m.total_blocks());
  EXPECT_GT(m.cached_blocks(), 0);
  EXPECT_EQ(m.cache_hits(), 2);
}

TEST(PrefixCache, LeavesAtLeastOneTokenToCompute) {
  BlockManager m(16, 4);
  const auto doc = Tokens(8, 100);
  Compute(m, 1, doc);
  m.Free(1);
  // The same 8 tokens again: matching may cover at most 7, so only the first block is shared.
  EXPECT_EQ(m.MatchPrefix(2, doc.data(), 7, ""), 4);
}

TEST(PrefixCache, SaltsNeverShare) {
  BlockManager m(16, 4);
  const auto doc = Tokens(12, 100);
  Compute(m, 1, doc, "tenant-a");
  m.Free(1);
  EXPECT_EQ(Compute(m, 2, doc, "tenant-b"), 0);
  EXPECT_EQ(Compute(m, 3, doc, ""), 0);
  EXPECT_EQ(Compute(m, 4, doc, "tenant-a"), 8);
}

TEST(PrefixCache, DifferentEarlierBlockMeansNoMatchLater) {
  BlockManager m(16, 4);
  auto a = Tokens(12, 100);
  Compute(m, 1, a);
  m.Free(1);
  auto b = a;
  b[1] = 5;  // first block differs; second and third are equal to a's
  EXPECT_EQ(Compute(m, 2, b), 0) << "a block's key includes everything before it";
}

TEST(PrefixCache, ReusedParentNeverServesStaleChildren) {
  // Evicting and reusing a parent block must invalidate the children keyed to its old content,
  // even when the reused block is registered again with the same id.
  BlockManager m(3, 2);
  Compute(m, 1, {1, 2, 3, 4, 9});  // blocks: [1,2] [3,4] [9]
  m.Free(1);                       // two registered blocks cached, one free
  Compute(m, 2, {5, 6, 7});        // evicts the LRU cached block ([1,2]) and reuses its id
  m.Free(2);
  // A sequence starting [5,6] (now registered in [1,2]'s old block) followed by [3,4] must not
  // match the cached [3,4] block, whose parent was [1,2].
  EXPECT_EQ(m.MatchPrefix(3, std::vector<int32_t>{5, 6, 3, 4, 0}.data(), 4, ""), 2);
  m.Free(3);
  EXPECT_EQ(m.free_blocks(), m.total_blocks());
}

TEST(PrefixCache, EvictionReclaimsCachedBlocksLeastRecentlyUsedFirst) {
  BlockManager m(4, 2);
  Compute(m, 1, {1, 2, 0});  // [1,2] registered, [0] not
  m.Free(1);
  Compute(m, 2, {3, 4, 0});
  m.Free(2);
  EXPECT_EQ(m.cached_blocks(), 2);
  EXPECT_EQ(m.free_blocks(), 4);
  // Three blocks: the two never-cached ones, then the least recently used cached one ([1,2]).
  ASSERT_TRUE(m.EnsureCapacity(3, 6).ok()) << "cached blocks are free capacity";
  EXPECT_EQ(m.cached_blocks(), 1);
  m.Free(3);
  EXPECT_EQ(m.MatchPrefix(4, std::vector<int32_t>{1, 2, 0}.data(), 2, ""), 0) << "evicted";
  EXPECT_EQ(m.MatchPrefix(5, std::vector<int32_t>{3, 4, 0}.data(), 2, ""), 2) << "kept";
  m.Free(5);
  EXPECT_EQ(m.free_blocks(), 4);
}

TEST(PrefixCache, RandomWorkloadNeverLeaksOrDoubleBooks) {
  BlockManager m(48, 4);
  std::mt19937 rng(3);
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < 5; ++d) docs.push_back(Tokens(20 + 3 * d, 10 * d));
  std::vector<int64_t> live;
  for (int step = 0; step < 3000; ++step) {
    if (!live.empty() && (rng() % 3 == 0 || m.free_blocks() < 12)) {
      const size_t i = rng() % live.size();
      m.Free(live[i]);
      live.erase(live.begin() + i);
      continue;
    }
    const int64_t seq = step;
    auto t = docs[rng() % docs.size()];
    t.resize(1 + rng() % t.size());
    const int64_t n = static_cast<int64_t>(t.size());
    m.MatchPrefix(seq, t.data(), n - 1, "");
    if (!m.EnsureCapacity(seq, n).ok()) {
      m.Free(seq);
      continue;
    }
    m.CommitFullBlocks(seq, t.data(), n, "");
    live.push_back(seq);
    std::multiset<int32_t> held;
    for (int64_t s : live) held.insert(m.Table(s).begin(), m.Table(s).end());
    std::set<int32_t> distinct(held.begin(), held.end());
    ASSERT_LE(static_cast<int64_t>(distinct.size()) + m.free_blocks(), m.total_blocks());
  }
  for (int64_t s : live) m.Free(s);
  EXPECT_EQ(m.free_blocks(), m.total_blocks());
  EXPECT_GT(m.cache_hits(), 0);
}

}  // namespace
}  // namespace kvshard
