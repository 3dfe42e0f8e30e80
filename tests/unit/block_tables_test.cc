// The persistent block tables and the delta step plans: rank 0's PlanBuilder sends only what
// changed, every rank's BlockTables rebuilds the same tables, and bad plans are refused whole.
#include "shard/block_tables.h"

#include <gtest/gtest.h>

#include "coordinator/block_manager.h"
#include "coordinator/plan_builder.h"
#include "plan/step_plan.h"

namespace kvshard {
namespace {

BlockTables Tables(int64_t slots = 4, int64_t stride = 8, int64_t num_blocks = 8) {
  return std::move(BlockTables::Create({slots, stride, num_blocks, 16})).value();
}

// Slot 1 gains blocks {4, 1}; one sequence of 3 tokens at positions 15..17 there.
StepPlan GoodPlan() {
  StepPlan p;
  p.append_slots = {1};
  p.append_indptr = {0, 2};
  p.append_blocks = {4, 1};
  p.tokens = {5, 6, 7};
  p.positions = {15, 16, 17};
  p.qo_indptr = {0, 3};
  p.seq_slots = {1};
  p.logits_rows = {2};
  return p;
}

TEST(BlockTables, ValidationCatchesEveryInconsistencyAndChangesNothing) {
  auto expect_bad = [](StepPlan p, const char* fragment) {
    BlockTables t = Tables();
    const Status st = t.Apply(p, 100, 64);
    EXPECT_FALSE(st.ok()) << fragment;
    EXPECT_NE(st.message().find(fragment), std::string::npos) << st.message();
    EXPECT_EQ(t.length(1), 0) << "a refused plan must change no table";
  };
  BlockTables t = Tables();
  ASSERT_TRUE(t.Apply(GoodPlan(), 100, 64).ok());
  EXPECT_EQ(t.length(1), 2);
  StepPlan p = GoodPlan();
  p.tokens[1] = 100;
  expect_bad(p, "token id 100");
  p = GoodPlan();
  p.append_blocks[0] = 8;
  expect_bad(p, "KV block 8");
  p = GoodPlan();
  p.positions[2] = 32;
  expect_bad(p, "not covered");
  p = GoodPlan();
  p.logits_rows = {3};
  expect_bad(p, "logits row 3");
  p = GoodPlan();
  p.positions.pop_back();
  expect_bad(p, "positions");
  p = GoodPlan();
  p.qo_indptr = {0, 2};
  expect_bad(p, "index pointers");
  p = GoodPlan();
  p.seq_slots = {4};
  expect_bad(p, "table slot 4");
  p = GoodPlan();
  p.append_slots = {-1};
  expect_bad(p, "table slot -1");
  p = GoodPlan();
  p.append_indptr = {0, 3};
  expect_bad(p, "append pointers");
  p = GoodPlan();
  p.append_slots = {1, 1};
  p.append_indptr = {0, 1, 2};
  expect_bad(p, "twice");
  p = GoodPlan();
  p.append_blocks = {1, 2, 3, 4, 5, 6, 7, 0, 1};
  p.append_indptr = {0, 9};
  expect_bad(p, "at most 8");
  BlockTables small = Tables();
  EXPECT_FALSE(small.Apply(GoodPlan(), 100, 2).ok()) << "more tokens than a step takes";
}

TEST(BlockTables, ReleaseEmptiesASlotBeforeItIsReused) {
  BlockTables t = Tables();
  ASSERT_TRUE(t.Apply(GoodPlan(), 100, 64).ok());
  StepPlan p;
  p.released_slots = {1};
  p.append_slots = {1};
  p.append_indptr = {0, 1};
  p.append_blocks = {6};
  p.tokens = {9};
  p.positions = {3};
  p.qo_indptr = {0, 1};
  p.seq_slots = {1};
  ASSERT_TRUE(t.Apply(p, 100, 64).ok());
  EXPECT_EQ(t.length(1), 1);
  int64_t slot = 0;
  t.Slots(p, &slot);
  EXPECT_EQ(slot, 6 * 16 + 3);
  // Released and not appended: position 16 is no longer covered.
  StepPlan q = p;
  q.append_slots.clear();
  q.append_indptr = {0};
  q.append_blocks.clear();
  q.positions = {16};
  EXPECT_FALSE(t.Apply(q, 100, 64).ok());
}

// A decode step's plan does not grow with the context, and the ranks' tables match rank 0's.
TEST(PlanBuilder, DecodePlansCarryOnlyTheChangeAndTheRanksFollow) {
  constexpr int64_t kBlock = 16, kContext = 4000;
  BlockManager blocks(1024, kBlock);
  PlanBuilder builder(4);
  BlockTables rank = std::move(BlockTables::Create({4, 1024, 1024, kBlock})).value();
  std::vector<int32_t> tokens(kContext + 64, 1);
  StepPlan plan;
  auto step = [&](int64_t seq, int64_t begin, int64_t end) {
    ASSERT_TRUE(blocks.EnsureCapacity(seq, end).ok());
    for (int64_t gone : blocks.TakeReleased()) builder.Release(gone);
    builder.Begin(&plan);
    ASSERT_TRUE(builder
                    .Add(&plan, seq, blocks.Table(seq), blocks.BlocksFor(end), tokens.data(), begin,
                         end, true)
                    .ok());
    ASSERT_TRUE(rank.Apply(plan, 100, 8192).ok());
  };
  step(7, 0, kContext);
  EXPECT_EQ(plan.append_blocks.size(), static_cast<size_t>(blocks.BlocksFor(kContext)));
  int64_t most = 0;
  for (int64_t p = kContext; p < kContext + 64; ++p) {
    step(7, p, p + 1);
    most = std::max(most, StepPlanWireBytes(plan));
    EXPECT_LE(plan.append_blocks.size(), 1u) << "a decode step appends at most one block";
  }
  // Header; one token, position, slot and logits row; qo_indptr; at most one appended block
  // with its slot and two pointers: 20 ints, at any context.
  EXPECT_LE(most, (kStepPlanHeaderFields + 10) * 4);
  const std::vector<int32_t>& table = blocks.Table(7);
  const int32_t slot = plan.seq_slots[0];
  ASSERT_EQ(rank.length(slot), static_cast<int64_t>(table.size()));
  for (size_t i = 0; i < table.size(); ++i) EXPECT_EQ(rank.tables()[slot * 1024 + i], table[i]);
  // The sequence ends and another takes its slot: the release goes first, in the same plan.
  blocks.Free(7);
  step(8, 0, 20);
  EXPECT_EQ(plan.released_slots, std::vector<int32_t>{slot});
  EXPECT_EQ(rank.length(plan.seq_slots[0]), 2);
}

TEST(StepPlan, WireFormRoundTrips) {
  StepPlan p = GoodPlan();
  p.released_slots = {3, 0};
  std::vector<int32_t> payload;
  PackStepPlan(p, &payload);
  StepPlan q;
  size_t ints = 0;
  ASSERT_TRUE(ShapeStepPlan(StepPlanHeaderOf(p), &q, &ints).ok());
  ASSERT_EQ(ints, payload.size());
  UnpackStepPlan(payload, &q);
  EXPECT_EQ(q.released_slots, p.released_slots);
  EXPECT_EQ(q.append_blocks, p.append_blocks);
  EXPECT_EQ(q.seq_slots, p.seq_slots);
  EXPECT_EQ(q.logits_rows, p.logits_rows);
  EXPECT_EQ(StepPlanWireBytes(p), static_cast<int64_t>((kStepPlanHeaderFields + ints) * 4));
  StepPlanHeader bad = StepPlanHeaderOf(p);
  bad[3] = -1;
  EXPECT_FALSE(ShapeStepPlan(bad, &q, &ints).ok());
  bad[3] = 1 << 30;
  EXPECT_FALSE(ShapeStepPlan(bad, &q, &ints).ok());
}

}  // namespace
}  // namespace kvshard
