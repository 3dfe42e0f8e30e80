// How the device model stages a step plan (host code, runs everywhere): slots and sequence ids
// like ShardModel's, each sequence's row in the persistent tables, attention tiles within
// sequences, and decode padding to a graph bucket on the scratch row that leaves the real tokens
// and their logits where they were.
#include "shard/cuda/device_step_plan.h"

#include <gtest/gtest.h>

#include <vector>

namespace kvshard::cuda {
namespace {

StageConfig Config(bool pad) {
  StageConfig c;
  c.padding.scratch_block = 99;
  c.padding.scratch_slot = 4;
  c.kv_heads = 2;
  c.group = 4;
  c.head_dim = 64;
  c.max_kv_blocks = 8;
  c.sm_count = 132;
  c.padding.pad_decode = pad;
  return c;
}

StatusOr<StepShape> Stage(const StepPlan& plan, const BlockTables& tables,
                          const StepInputsLayout& layout, const StageConfig& config, void* base) {
  StepShape shape;
  KVS_RETURN_IF_ERROR(StagePlan(plan, tables, layout, config, base, &shape));
  return shape;
}

// Four table slots of 8 blocks of 4 tokens (the device adds the scratch row, slot 4), 100 KV
// blocks.
BlockTables Tables() { return std::move(BlockTables::Create({4, 8, 100, 4})).value(); }

// Two sequences: 6 prompt tokens in slot 2 on blocks {3, 1}, and 1 decode token at position 9
// in slot 0 on {7, 0, 5}.
StepPlan MixedPlan() {
  StepPlan p;
  p.append_slots = {2, 0};
  p.append_indptr = {0, 2, 5};
  p.append_blocks = {3, 1, 7, 0, 5};
  p.tokens = {10, 11, 12, 13, 14, 15, 20};
  p.positions = {0, 1, 2, 3, 4, 5, 9};
  p.qo_indptr = {0, 6, 7};
  p.seq_slots = {2, 0};
  p.logits_rows = {5, 6};
  return p;
}

TEST(DeviceStepPlan, StagesSlotsSequencesAndTiles) {
  const StepInputsLayout layout = StepInputsLayout::Make(16);
  std::vector<std::byte> buffer(layout.bytes);
  BlockTables tables = Tables();
  ASSERT_TRUE(tables.Apply(MixedPlan(), 100, 16).ok());
  auto shape = Stage(MixedPlan(), tables, layout, Config(true), buffer.data());
  ASSERT_TRUE(shape.ok()) << shape.status().ToString();
  const StepInputs v = StepInputs::At(buffer.data(), layout);
  EXPECT_FALSE(shape->decode);
  EXPECT_FALSE(shape->padded);  // a prefill step is never padded
  EXPECT_EQ(shape->tokens, 7);
  const std::vector<int64_t> slots = {12, 13, 14, 15, 4, 5, 5 * 4 + 1};
  for (int t = 0; t < 7; ++t) EXPECT_EQ(v.slots[t], slots[t]) << "token " << t;
  const std::vector<int32_t> seqs = {0, 0, 0, 0, 0, 0, 1};
  for (int t = 0; t < 7; ++t) EXPECT_EQ(v.token_seq[t], seqs[t]);
  EXPECT_EQ(v.block_indptr[0], 2 * 8);  // each sequence reads its table where it lives
  EXPECT_EQ(v.block_indptr[1], 0);
  // Tiles never cross a sequence.
  ASSERT_GE(shape->num_tiles, 2);
  EXPECT_EQ(v.tiles[0], 0);
  EXPECT_EQ(v.tiles[shape->num_tiles], 7);
  for (int64_t i = 0; i < shape->num_tiles; ++i) {
    EXPECT_EQ(v.token_seq[v.tiles[i]], v.token_seq[v.tiles[i + 1] - 1]) << "tile " << i;
    EXPECT_LE(v.tiles[i + 1] - v.tiles[i], shape->attention.tile_tokens);
  }
  EXPECT_EQ(shape->rows, 2);
  EXPECT_EQ(v.logits_rows[0], 5);
  EXPECT_EQ(v.logits_rows[1], 6);
  EXPECT_EQ(shape->result_rows, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(shape->upload_bytes, layout.logits_rows + 2 * sizeof(int32_t));
}

// Sequence s in slot s on blocks {2s, 2s + 1}.
StepPlan DecodePlan(int seqs) {
  StepPlan p;
  p.qo_indptr = {0};
  p.append_indptr = {0};
  for (int s = 0; s < seqs; ++s) {
    p.tokens.push_back(100 + s);
    p.positions.push_back(4 + s);  // in the sequence's second block
    p.qo_indptr.push_back(s + 1);
    p.append_slots.push_back(s);
    p.append_blocks.push_back(2 * s);
    p.append_blocks.push_back(2 * s + 1);
    p.append_indptr.push_back(2 * (s + 1));
    p.seq_slots.push_back(s);
    p.logits_rows.push_back(s);
  }
  return p;
}

TEST(DeviceStepPlan, DecodePadsToTheBucketOnTheScratchBlock) {
  const StepInputsLayout layout = StepInputsLayout::Make(16);
  std::vector<std::byte> buffer(layout.bytes);
  BlockTables tables = Tables();
  ASSERT_TRUE(tables.Apply(DecodePlan(3), 200, 16).ok());
  auto shape = Stage(DecodePlan(3), tables, layout, Config(true), buffer.data());
  ASSERT_TRUE(shape.ok()) << shape.status().ToString();
  const StepInputs v = StepInputs::At(buffer.data(), layout);
  EXPECT_TRUE(shape->decode);
  EXPECT_TRUE(shape->padded);
  EXPECT_EQ(shape->tokens, 4);
  EXPECT_EQ(shape->real_tokens, 3);
  EXPECT_EQ(shape->num_tiles, 4);
  for (int t = 0; t <= 4; ++t) EXPECT_EQ(v.tiles[t], t);
  for (int s = 0; s < 3; ++s) EXPECT_EQ(v.slots[s], (2 * s + 1) * 4 + s);
  // The padding token: token 0 at position 0, its own sequence with the scratch block.
  EXPECT_EQ(v.tokens[3], 0);
  EXPECT_EQ(v.positions[3], 0);
  EXPECT_EQ(v.token_seq[3], 3);
  EXPECT_EQ(v.slots[3], 99 * 4);
  for (int s = 0; s < 3; ++s) EXPECT_EQ(v.block_indptr[s], 8 * s);
  EXPECT_EQ(v.block_indptr[3], 4 * 8);  // the scratch row
  // Every row's logits are computed; the plan's rows are found where their tokens are.
  EXPECT_EQ(shape->rows, 4);
  for (int t = 0; t < 4; ++t) EXPECT_EQ(v.logits_rows[t], t);
  EXPECT_EQ(shape->result_rows, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(shape->attention.tile_tokens, 1);
  EXPECT_EQ(shape->upload_bytes, layout.logits_rows + 4 * sizeof(int32_t));

  // Without graphs, no padding.
  shape = Stage(DecodePlan(3), tables, layout, Config(false), buffer.data());
  ASSERT_TRUE(shape.ok());
  EXPECT_TRUE(shape->decode);
  EXPECT_FALSE(shape->padded);
  EXPECT_EQ(shape->tokens, 3);
}

TEST(DeviceStepPlan, BucketsAndCapacity) {
  EXPECT_EQ(DecodeBucket(1, 512), 1);
  EXPECT_EQ(DecodeBucket(3, 512), 4);
  EXPECT_EQ(DecodeBucket(64, 512), 64);
  EXPECT_EQ(DecodeBucket(65, 512), 128);
  EXPECT_EQ(DecodeBucket(300, 300), 300);
  const StepInputsLayout small = StepInputsLayout::Make(4);
  std::vector<std::byte> buffer(small.bytes);
  BlockTables tables = Tables();
  ASSERT_TRUE(tables.Apply(MixedPlan(), 100, 16).ok());
  const auto shape = Stage(MixedPlan(), tables, small, Config(true), buffer.data());
  EXPECT_EQ(shape.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvshard::cuda
