#include "shard/tp_layout.h"

#include <gtest/gtest.h>

namespace kvshard {
namespace {

ModelConfig Config(int64_t heads, int64_t kv_heads, int64_t ffn = 64, int64_t vocab = 100) {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = ffn;
  c.n_layers = 1;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = 64 / heads;
  c.vocab_size = vocab;
  c.max_seq_len = 128;
  return c;
}

TEST(TpLayout, SplitsHeadsMlpAndVocabulary) {
  const ModelConfig c = Config(8, 4, 64, 10);
  int64_t vocab_total = 0;
  for (int r = 0; r < 4; ++r) {
    auto l = MakeTpLayout(c, 4, r);
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    EXPECT_EQ(l->q_heads, 2);
    EXPECT_EQ(l->q_head0, 2 * r);
    EXPECT_EQ(l->kv_heads, 1);
    EXPECT_EQ(l->kv_head0, r);
    EXPECT_EQ(l->kv_replicas, 1);
    EXPECT_EQ(l->ffn, 16);
    EXPECT_EQ(l->vocab0, vocab_total);
    vocab_total += l->vocab;
    EXPECT_EQ(l->vocab_counts, (std::vector<int>{3, 3, 2, 2}));
  }
  EXPECT_EQ(vocab_total, 10);
}

TEST(TpLayout, ReplicatesKvHeadsWhenRanksOutnumberThem) {
  const ModelConfig mqa = Config(8, 1);
  for (int r = 0; r < 4; ++r) {
    auto l = MakeTpLayout(mqa, 4, r);
    ASSERT_TRUE(l.ok());
    EXPECT_EQ(l->kv_heads, 1);
    EXPECT_EQ(l->kv_head0, 0);
    EXPECT_EQ(l->kv_replicas, 4);
  }
  const ModelConfig gqa = Config(8, 2);
  // Ranks 0, 1 hold query heads 0-3 (KV head 0); ranks 2, 3 hold 4-7 (KV head 1).
  for (int r = 0; r < 4; ++r) {
    auto l = MakeTpLayout(gqa, 4, r);
    ASSERT_TRUE(l.ok());
    EXPECT_EQ(l->kv_head0, r / 2);
    EXPECT_EQ(l->kv_replicas, 2);
  }
}

TEST(TpLayout, RefusesWhatCannotSplitAndSaysWhatWould) {
  const Status three = MakeTpLayout(Config(8, 4), 3, 0).status();
  EXPECT_EQ(three.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(three.message().find("8 attention heads do not split evenly over 3 head groups"),
            std::string::npos)
      << three.message();
  EXPECT_NE(three.message().find("sizes that work: 1, 2, 4, 8"), std::string::npos);
  EXPECT_NE(three.message().find("grids (head groups x seq shards) that work for 3 ranks: 1x3"),
            std::string::npos)
      << three.message();
  const Status kv = MakeTpLayout(Config(12, 4, 48), 6, 0).status();
  EXPECT_NE(kv.message().find("4 KV heads over 6 head groups"), std::string::npos) << kv.message();
  const Status ffn = MakeTpLayout(Config(4, 4, 3), 4, 0).status();
  EXPECT_NE(ffn.message().find("MLP width 3 is smaller than 4 ranks"), std::string::npos)
      << ffn.message();
  const Status shards = MakeTpLayout(Config(8, 2), 8, 0, 3).status();
  EXPECT_NE(shards.message().find("cannot split 8 ranks into seq shards of 3"), std::string::npos)
      << shards.message();
  EXPECT_NE(shards.message().find("that work for 8 ranks: 1x8, 2x4, 4x2, 8x1"), std::string::npos)
      << shards.message();
}

// A 2-KV-head model on 8 ranks as 2 head groups x 4 seq shards: each group's ranks hold its heads
// (the same Q/K/V rows), split its attention columns for wo, and the MLP and the vocabulary split
// over all 8 ranks, so no weight but wq/wk/wv is held twice.
TEST(TpLayout, GridSplitsHeadsByGroupAndTheRestOverEveryRank) {
  const ModelConfig c = Config(8, 2, 100, 21);
  int64_t ffn_total = 0, vocab_total = 0;
  for (int r = 0; r < 8; ++r) {
    auto l = MakeTpLayout(c, 8, r, 4);
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    EXPECT_EQ(l->head_groups, 2);
    EXPECT_EQ(l->seq_shards, 4);
    EXPECT_EQ(l->group, r / 4);
    EXPECT_EQ(l->shard, r % 4);
    EXPECT_EQ(l->q_heads, 4);
    EXPECT_EQ(l->q_head0, 4 * (r / 4));
    EXPECT_EQ(l->kv_heads, 1);
    EXPECT_EQ(l->kv_head0, r / 4);
    EXPECT_EQ(l->kv_replicas, 1);
    // 4 heads x 8 = 32 columns per group, 8 per shard.
    EXPECT_EQ(l->o_cols, 8);
    EXPECT_EQ(l->o_col0, 8 * (r % 4));
    EXPECT_EQ(l->ffn0, ffn_total);
    ffn_total += l->ffn;
    EXPECT_EQ(l->vocab0, vocab_total);
    vocab_total += l->vocab;
    EXPECT_EQ(l->Geometry(16).seq_shards, 4);
    EXPECT_EQ(l->Geometry(16).shard, r % 4);
  }
  EXPECT_EQ(ffn_total, 100);  // 13, 13, 13, 13, 12, 12, 12, 12
  EXPECT_EQ(vocab_total, 21);
  // MQA: only 1 x S grids split the KV; every grid of 4 ranks that the heads allow.
  const ModelConfig mqa = Config(4, 1);
  std::vector<std::pair<int, int>> grids = {{1, 4}, {2, 2}, {4, 1}};
  EXPECT_EQ(ValidGrids(mqa, 4), grids);
  EXPECT_EQ(DescribeGrids(mqa, 4), "1x4, 2x2, 4x1");
}

}  // namespace
}  // namespace kvshard
