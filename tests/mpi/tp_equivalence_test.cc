// Invariant 1 of DESIGN.md: the same logits and greedy tokens at every tensor-parallel size, with
// and without the KV cache. Runs under `mpirun -np 4`; the world is split into groups of 1, 2 and
// 4 ranks, each group runs the same request, and world rank 0 (root of every group) compares.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>

#include "coordinator/serving_engine.h"
#include "shard/shard_model.h"
#include "shard/shard_worker.h"
#include "tests/mpi/mpi_test_util.h"
#include "transport/mpi_communicator.h"

namespace kvshard {
namespace {

struct Trace {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
};

// Runs the request on a group of `tp` ranks; the group's root returns the trace.
Trace RunOnGroup(const std::string& model_dir, int tp, bool use_cache, DType kv_dtype,
                 std::optional<DType> weight_dtype = std::nullopt) {
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm group;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank / tp, world_rank, &group);
  auto comm = MpiCommunicator::Create(group);
  MPI_Comm_free(&group);
  EXPECT_TRUE(comm.ok()) << comm.status().ToString();
  auto config = LoadModelConfig(model_dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  ShardOptions opt;
  opt.num_blocks = 8;  // 128 tokens: the sequence crosses several block boundaries
  opt.block_size = 16;
  opt.kv_dtype = kv_dtype;
  opt.weight_dtype = weight_dtype;
  opt.max_tokens_per_step = 24;  // the 40-token prompt runs as chunked prefill
  auto model = ShardModel::Load(model_dir, *config, opt, comm->get());
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  Trace trace;
  if ((*comm)->rank() != 0) {
    const Status st = RunShardWorker(**model);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return trace;
  }
  ServingEngine engine(model->get(), /*tokenizer=*/nullptr, ServingOptions{});
  RequestSpec req;
  for (int i = 0; i < 40; ++i) req.prompt.push_back((i * 37 + 11) % config->vocab_size);
  req.max_tokens = 30;
  req.use_kv_cache = use_cache;
  req.ignore_eos = true;  // all 30 steps are compared
  auto result = engine.Generate(req, nullptr, &trace.logits);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  if (result.ok()) trace.tokens = result->tokens;
  EXPECT_EQ(engine.blocks().free_blocks(), engine.blocks().total_blocks()) << "KV blocks leaked";
  EXPECT_TRUE(engine.Shutdown().ok());
  return trace;
}

// Greedy tokens two runs share before the first difference, and the relative difference of
// their logits over those steps and the first different one (each step's logits come from the
// same context up to there; after it, the contexts differ).
std::pair<size_t, double> CommonPrefix(const Trace& a, const Trace& b) {
  size_t same = 0;
  while (same < a.tokens.size() && same < b.tokens.size() && a.tokens[same] == b.tokens[same]) {
    ++same;
  }
  const size_t steps = std::min({same + 1, a.logits.size(), b.logits.size()});
  const std::vector<std::vector<float>> x(a.logits.begin(), a.logits.begin() + steps);
  const std::vector<std::vector<float>> y(b.logits.begin(), b.logits.begin() + steps);
  return {same, RelativeDiff(x, y)};
}

class TpEquivalence : public ::testing::TestWithParam<std::string> {};

TEST_P(TpEquivalence, SameLogitsAtEveryLayoutWithAndWithoutCache) {
  int world_rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  ASSERT_EQ(world, 4) << "run under mpirun -np 4";
  const std::string dir = TestModelDir(GetParam());
  const Trace ref = RunOnGroup(dir, 1, true, DType::kF32);
  const Trace recompute = RunOnGroup(dir, 1, false, DType::kF32);
  const Trace tp2 = RunOnGroup(dir, 2, true, DType::kF32);
  const Trace tp4 = RunOnGroup(dir, 4, true, DType::kF32);
  const Trace tp4_recompute = RunOnGroup(dir, 4, false, DType::kF32);
  const Trace tp2_bf16 = RunOnGroup(dir, 2, true, DType::kBF16);
  const Trace int8 = RunOnGroup(dir, 1, true, DType::kI8);
  const Trace tp2_int8 = RunOnGroup(dir, 2, true, DType::kI8);
  const Trace tp4_int8 = RunOnGroup(dir, 4, true, DType::kI8);
  const Trace fp8 = RunOnGroup(dir, 1, true, DType::kF8E4M3);
  const Trace tp4_fp8 = RunOnGroup(dir, 4, true, DType::kF8E4M3);
  // The weights in the other width: a bf16 checkpoint widened to f32 in memory, an f32 one
  // rounded to bf16.
  const bool bf16_checkpoint = GetParam().find("bf16") != std::string::npos;
  const Trace tp2_other_width =
      RunOnGroup(dir, 2, true, DType::kF32, bf16_checkpoint ? DType::kF32 : DType::kBF16);
  if (world_rank != 0) return;
  ASSERT_EQ(ref.tokens.size(), 30u);
  ASSERT_EQ(ref.logits.size(), 30u);
  EXPECT_LT(RelativeDiff(ref.logits, recompute.logits), 1e-4) << "cached decode != recompute";
  EXPECT_LT(RelativeDiff(ref.logits, tp2.logits), 1e-4) << "TP=2 != TP=1";
  EXPECT_LT(RelativeDiff(ref.logits, tp4.logits), 1e-4) << "TP=4 != TP=1";
  EXPECT_LT(RelativeDiff(ref.logits, tp4_recompute.logits), 1e-4) << "TP=4 recompute != TP=1";
  EXPECT_EQ(ref.tokens, recompute.tokens);
  EXPECT_EQ(ref.tokens, tp2.tokens);
  EXPECT_EQ(ref.tokens, tp4.tokens);
  // A bf16 cache rounds K and V to 8 bits of mantissa: close, not equal.
  EXPECT_LT(RelativeDiff(ref.logits, tp2_bf16.logits), 5e-2) << "bf16 KV cache far from f32";
  EXPECT_GT(RelativeDiff(ref.logits, tp2_bf16.logits), 0.0) << "bf16 KV cache was not used";
  // Quantized caches: every layout sees the same codes (one scale per token and KV head, and a
  // KV head lives whole on one rank), so they agree as f32 layouts do; against the f32 cache
  // they are within the tolerance their step sizes give.
  EXPECT_LT(RelativeDiff(int8.logits, tp2_int8.logits), 1e-4) << "int8 cache: TP=2 != TP=1";
  EXPECT_LT(RelativeDiff(int8.logits, tp4_int8.logits), 1e-4) << "int8 cache: TP=4 != TP=1";
  EXPECT_EQ(int8.tokens, tp4_int8.tokens);
  EXPECT_LT(RelativeDiff(fp8.logits, tp4_fp8.logits), 1e-4) << "fp8 cache: TP=4 != TP=1";
  EXPECT_EQ(fp8.tokens, tp4_fp8.tokens);
  const auto [int8_same, int8_diff] = CommonPrefix(ref, int8);
  const auto [fp8_same, fp8_diff] = CommonPrefix(ref, fp8);
  std::printf(
      "[ info ] %s: logits vs the f32 cache: bf16 %.2e, int8 %.2e (%zu/30 tokens equal), fp8 "
      "%.2e (%zu/30)\n",
      GetParam().c_str(), RelativeDiff(ref.logits, tp2_bf16.logits), int8_diff, int8_same, fp8_diff,
      fp8_same);
  EXPECT_EQ(int8_same, 30u) << "int8 KV cache changed the greedy tokens";
  EXPECT_LT(int8_diff, 2e-2) << "int8 KV cache far from f32";
  EXPECT_GT(int8_diff, 0.0) << "int8 KV cache was not used";
  // Random logits have near-ties that 3 mantissa bits may flip; the logits are what is bounded.
  EXPECT_GE(fp8_same, 1u) << "fp8 KV cache changes the first greedy token";
  EXPECT_LT(fp8_diff, 1e-1) << "fp8 KV cache far from f32";
  EXPECT_GT(fp8_diff, 0.0) << "fp8 KV cache was not used";
  if (bf16_checkpoint) {
    // bf16 weights kept bf16 and widened in the kernels are exactly the f32 copy's arithmetic.
    EXPECT_EQ(RelativeDiff(tp2.logits, tp2_other_width.logits), 0.0)
        << "bf16 weights in memory != their f32 widening";
    EXPECT_EQ(tp2.tokens, tp2_other_width.tokens);
  } else {
    // Rounded weights may flip a near-tie of random logits: compare the common prefix.
    const auto [same, diff] = CommonPrefix(tp2, tp2_other_width);
    EXPECT_GE(same, 5u) << "bf16 weights change the greedy tokens from the start";
    EXPECT_LT(diff, 5e-2) << "bf16 weights far off";
    EXPECT_GT(diff, 0.0) << "weight dtype bf16 was not used";
  }
}

INSTANTIATE_TEST_SUITE_P(Models, TpEquivalence,
                         ::testing::Values("mha", "gqa", "mqa", "mha_bf16_sharded"));

}  // namespace
}  // namespace kvshard
