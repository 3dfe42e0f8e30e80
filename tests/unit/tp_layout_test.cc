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
  EXPECT_NE(three.message().find("8 attention heads do not split evenly over 3 ranks"),
            std::string::npos)
      << three.message();
  EXPECT_NE(three.message().find("sizes that work: 1, 2, 4, 8"), std::string::npos);
  const Status kv = MakeTpLayout(Config(12, 4, 48), 6, 0).status();
  EXPECT_NE(kv.message().find("4 KV heads over 6 ranks"), std::string::npos) << kv.message();
  const Status ffn = MakeTpLayout(Config(4, 4, 66), 4, 0).status();
  EXPECT_NE(ffn.message().find("MLP width 66"), std::string::npos) << ffn.message();
}

}  // namespace
}  // namespace kvshard
