// KV eviction's pieces (plan/kv_eviction.h): the SnapKV selection against a reference written
// from the policy's statement, the block manager's truncation, and the shards' checks of an
// evicting step plan. End to end (the engine, every grid, a dense reference) is
// tests/mpi/kv_eviction_test.cc.
#include "kernels/cpu/kv_eviction.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "coordinator/block_manager.h"
#include "plan/kv_eviction.h"
#include "shard/block_tables.h"

namespace kvshard {
namespace {

// The policy in double from its statement: softmax of each window query over the positions it
// sees, summed over the head's query heads and the window, pooled, the best keep - window.
std::vector<int32_t> Reference(const std::vector<float>& logits, int64_t H, int64_t KVH, int64_t w,
                               int64_t L, int64_t keep, int64_t h) {
  const int64_t prefix = L - w, g = H / KVH;
  std::vector<double> score(prefix, 0.0);
  for (int64_t qh = h * g; qh < (h + 1) * g; ++qh) {
    for (int64_t i = 0; i < w; ++i) {
      const float* row = logits.data() + (qh * w + i) * L;
      double sum = 0;
      for (int64_t p = 0; p <= prefix + i; ++p) sum += std::exp(static_cast<double>(row[p]));
      for (int64_t p = 0; p < prefix; ++p) score[p] += std::exp(static_cast<double>(row[p])) / sum;
    }
  }
  std::vector<std::pair<double, int32_t>> ranked;
  for (int64_t p = 0; p < prefix; ++p) {
    double s = 0;
    for (int64_t d = -kSnapKvPool / 2; d <= kSnapKvPool / 2; ++d) {
      if (p + d >= 0 && p + d < prefix) s += score[p + d];
    }
    ranked.emplace_back(-s / kSnapKvPool, static_cast<int32_t>(p));
  }
  std::sort(ranked.begin(), ranked.end());
  std::vector<int32_t> kept;
  for (int64_t i = 0; i < keep - w; ++i) kept.push_back(ranked[i].second);
  std::sort(kept.begin(), kept.end());
  for (int64_t p = prefix; p < L; ++p) kept.push_back(static_cast<int32_t>(p));
  return kept;
}

TEST(SnapKvSelect, KeepsWhatTheReferenceKeeps) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  struct Case {
    int64_t H, KVH, L, keep;
  };
  // GQA ratios 1, 4 and 8, windows of 1 to 32, keep = window (nothing but the window), a prefix
  // of one position, and a budget one short of the prompt.
  for (const Case& c : std::vector<Case>{{4, 4, 40, 10},
                                         {8, 2, 100, 64},
                                         {8, 1, 30, 2},
                                         {2, 2, 12, 11},
                                         {4, 1, 9, 8},
                                         {1, 1, 70, 6}}) {
    const int64_t w = SnapKvWindow(c.keep);
    std::vector<float> logits(c.H * w * c.L);
    for (float& x : logits) x = normal(rng);
    std::vector<int32_t> kept(c.KVH * c.keep);
    snapkv_select(logits.data(), c.H, c.KVH, w, c.L, c.keep, kept.data());
    for (int64_t h = 0; h < c.KVH; ++h) {
      const std::vector<int32_t> mine(kept.begin() + h * c.keep, kept.begin() + (h + 1) * c.keep);
      EXPECT_EQ(mine, Reference(logits, c.H, c.KVH, w, c.L, c.keep, h))
          << "H " << c.H << " KVH " << c.KVH << " L " << c.L << " keep " << c.keep << " head " << h;
      EXPECT_TRUE(std::is_sorted(mine.begin(), mine.end()));
      EXPECT_EQ(std::adjacent_find(mine.begin(), mine.end()), mine.end()) << "a position twice";
    }
  }
}

TEST(SnapKvSelect, EntriesPastAQuerysPositionAreIgnoredAndTiesKeepTheEarlier) {
  // Equal scores everywhere: the earliest positions win the ties. Garbage (NaN, huge) past each
  // window query's own position must not matter (causal).
  const int64_t L = 20, keep = 6, w = SnapKvWindow(keep);  // w = 3
  std::vector<float> logits(1 * w * L, 0.0f);
  for (int64_t i = 0; i < w; ++i) {
    for (int64_t p = L - w + i + 1; p < L; ++p) logits[i * L + p] = i % 2 ? NAN : 1e30f;
  }
  std::vector<int32_t> kept(keep);
  snapkv_select(logits.data(), 1, 1, w, L, keep, kept.data());
  // Pooling with zero padding lowers the first positions' scores (fewer neighbours): the best
  // are 3.. (full neighbourhoods), earliest first.
  EXPECT_EQ(kept, (std::vector<int32_t>{3, 4, 5, 17, 18, 19}));
}

TEST(SnapKvWindow, IsHalfTheBudgetUpTo32) {
  EXPECT_EQ(SnapKvWindow(1), 1);
  EXPECT_EQ(SnapKvWindow(16), 8);
  EXPECT_EQ(SnapKvWindow(64), 32);
  EXPECT_EQ(SnapKvWindow(4096), 32);
}

TEST(BlockManagerTruncate, ReturnsTheBlocksPastTheKeptOnes) {
  BlockManager bm(10, 4);
  ASSERT_TRUE(bm.EnsureCapacity(1, 30).ok());  // 8 blocks
  EXPECT_EQ(bm.free_blocks(), 2);
  EXPECT_EQ(bm.Truncate(1, 3), 5);
  EXPECT_EQ(bm.Table(1).size(), 3u);
  EXPECT_EQ(bm.free_blocks(), 7);
  ASSERT_TRUE(bm.EnsureCapacity(1, 20).ok());  // grows again from there
  EXPECT_EQ(bm.Table(1).size(), 5u);
  bm.Free(1);
  EXPECT_EQ(bm.free_blocks(), 10);
}

StepPlan EvictingPlan(int64_t tokens, int32_t keep) {
  StepPlan plan;
  plan.append_slots = {0};
  plan.append_indptr = {0, 4};
  plan.append_blocks = {0, 1, 2, 3};
  for (int64_t p = 0; p < tokens; ++p) {
    plan.tokens.push_back(1);
    plan.positions.push_back(static_cast<int32_t>(p));
  }
  plan.qo_indptr = {0, static_cast<int32_t>(tokens)};
  plan.seq_slots = {0};
  plan.logits_rows = {static_cast<int32_t>(tokens - 1)};
  plan.evict_seqs = {0};
  plan.evict_keep = {keep};
  return plan;
}

TEST(BlockTablesEviction, ChecksTheEvictionsAndTheRopeOffsets) {
  auto tables = BlockTables::Create({2, 8, 16, PagedKvGeometry{4}});
  ASSERT_TRUE(tables.ok());
  EXPECT_TRUE(tables->Apply(EvictingPlan(16, 8), 100, 64).ok());
  tables->Truncate(0, 2);
  EXPECT_EQ(tables->length(0), 2);
  auto message = [](const StepPlan& plan) {
    auto t = BlockTables::Create({2, 8, 16, PagedKvGeometry{4}});
    return t->Apply(plan, 100, 64).message();
  };
  EXPECT_NE(message(EvictingPlan(16, 16)).find("cannot keep 16 of 16"), std::string::npos);
  EXPECT_NE(message(EvictingPlan(16, 0)).find("cannot keep 0"), std::string::npos);
  // keep 40: a window of 20 tokens, more than the chunk's 16.
  StepPlan wide = EvictingPlan(16, 40);
  EXPECT_NE(message(wide).find("from a chunk of 16"), std::string::npos);
  StepPlan twice = EvictingPlan(16, 8);
  twice.evict_seqs = {0, 0};
  twice.evict_keep = {8, 8};
  EXPECT_NE(message(twice).find("evicted twice"), std::string::npos);
  StepPlan outside = EvictingPlan(16, 8);
  outside.evict_seqs = {1};
  EXPECT_NE(message(outside).find("outside"), std::string::npos);
  StepPlan offsets = EvictingPlan(16, 8);
  offsets.rope_offsets = {1, 2};
  EXPECT_NE(message(offsets).find("2 RoPE offsets for 1"), std::string::npos);
  offsets.rope_offsets = {-3};
  EXPECT_NE(message(offsets).find("RoPE offset -3"), std::string::npos);
}

}  // namespace
}  // namespace kvshard
