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
