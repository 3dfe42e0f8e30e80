// Invariant 1 of DESIGN.md over the 2D layout: the same logits and greedy tokens for every grid
// of head groups x seq shards (1x1, 1x2, 1x4, 2x2, 4x1 where the model allows), cached and
// recomputed, one request alone and a batch through the serving engine with the prefix cache and
// preemption, with sequences at the ownership edges (1, S*block - 1, S*block, S*block + 1 tokens,
// and shorter than one block per shard). Runs under `mpirun -np 4`: the world is split into
// groups of the grid's size, each group runs the same work, and world rank 0 compares.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <string>
#include <tuple>

#include "coordinator/serving_engine.h"
#include "shard/shard_model.h"
#include "shard/shard_worker.h"
#include "tests/mpi/mpi_test_util.h"
#include "transport/mpi_communicator.h"

namespace kvshard {
namespace {

constexpr int64_t kBlockSize = 4;
// One request's KV capacity on every grid (each shard's pool holds kPoolTokens / seq_shards), so
// the batch overflows it and is preempted on every grid alike.
constexpr int64_t kPoolTokens = 80;

struct Outcome {
  bool valid = true;  // false: the grid cannot split this model
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  std::vector<std::vector<int32_t>> batch;  // each batched request's tokens
  EngineSnapshot snapshot;
  int64_t capacity = 0;
};

std::vector<int32_t> Prompt(int64_t n, int64_t salt, int64_t vocab) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < n; ++i)
    p.push_back(static_cast<int32_t>((i * 37 + salt * 11 + 5) % vocab));
  return p;
}

// The batch: prompts at the ownership edges of 2 and 4 shards of kBlockSize, all at once.
const std::vector<int64_t> kBatchLengths = {1, 2, 3, 7, 8, 9, 15, 16, 17, 33};

Outcome RunOnGrid(const std::string& model_dir, int groups, int shards, bool use_cache,
                  DType kv_dtype) {
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  const int size = groups * shards;
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank / size, world_rank, &sub);
  auto comm = MpiCommunicator::Create(sub);
  MPI_Comm_free(&sub);
  EXPECT_TRUE(comm.ok()) << comm.status().ToString();
  auto config = LoadModelConfig(model_dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  Outcome out;
  if (!MakeTpLayout(*config, size, 0, shards).ok()) {
    out.valid = false;
    return out;
  }
  ShardOptions opt;
  opt.block_size = kBlockSize;
  opt.seq_shards = shards;
  opt.kv_dtype = kv_dtype;
  opt.num_blocks = kPoolTokens / (kBlockSize * shards);
  opt.max_tokens_per_step = 24;  // the 40-token prompt runs as chunked prefill
  opt.max_seqs = 16;
  auto model = ShardModel::Load(model_dir, *config, opt, comm->get());
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  if ((*comm)->rank() != 0) {
    const Status st = RunShardWorker(**model);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return out;
  }
  ServingOptions serving;
  serving.max_seqs = 16;
  ServingEngine engine(model->get(), /*tokenizer=*/nullptr, serving);
  out.capacity = engine.kv_capacity_tokens();
  RequestSpec req;
  req.prompt = Prompt(40, 0, config->vocab_size);
  req.max_tokens = 30;
  req.use_kv_cache = use_cache;
  req.ignore_eos = true;  // all 30 steps are compared
  auto result = engine.Generate(req, nullptr, &out.logits);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  if (result.ok()) out.tokens = result->tokens;
  if (use_cache) {
    // The batch: more than the pool holds at once (preemption), then the longest prompt again
    // (a prefix-cache hit).
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (size_t i = 0; i < kBatchLengths.size() + 1; ++i) {
      RequestSpec r;
      r.prompt =
          Prompt(i < kBatchLengths.size() ? kBatchLengths[i] : 33,
                 i < kBatchLengths.size() ? static_cast<int64_t>(i) + 1 : 10, config->vocab_size);
      r.max_tokens = 6;
      r.ignore_eos = true;
      auto s = engine.Submit(r);
      EXPECT_TRUE(s.ok()) << s.status().ToString();
      if (!s.ok()) break;
      streams.push_back(*s);
      if (i + 1 == kBatchLengths.size()) {  // the batch first, then the repeat
        for (;;) {
          auto stepped = engine.Step();
          EXPECT_TRUE(stepped.ok()) << stepped.status().ToString();
          if (!stepped.ok() || !*stepped) break;
        }
      }
    }
    for (;;) {
      auto stepped = engine.Step();
      EXPECT_TRUE(stepped.ok()) << stepped.status().ToString();
      if (!stepped.ok() || !*stepped) break;
    }
    for (const auto& s : streams) {
      std::lock_guard<std::mutex> lock(s->mu);
      EXPECT_TRUE(s->finished);
      EXPECT_EQ(s->finish_reason, "length") << s->error;
      out.batch.push_back(s->tokens);
    }
  }
  out.snapshot = engine.Snapshot();
  EXPECT_EQ(engine.blocks().free_blocks(), engine.blocks().total_blocks()) << "KV blocks leaked";
  EXPECT_TRUE(engine.Shutdown().ok());
  return out;
}

// A model and a KV cache dtype: quantized caches hold the same codes on every grid (one scale per
// token and KV head, each row whole on one rank), so they must agree across grids as f32 does.
class GridEquivalence : public ::testing::TestWithParam<std::tuple<std::string, DType>> {};

TEST_P(GridEquivalence, SameOutputsOnEveryGrid) {
  int world_rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  ASSERT_EQ(world, 4) << "run under mpirun -np 4";
  const auto [model, kv_dtype] = GetParam();
  const std::string dir = TestModelDir(model);
  const Outcome ref = RunOnGrid(dir, 1, 1, true, kv_dtype);
  const std::vector<std::pair<int, int>> grids = {{1, 2}, {1, 4}, {2, 2}, {4, 1}};
  std::vector<Outcome> got, recomputed;
  for (const auto& [g, s] : grids) {
    got.push_back(RunOnGrid(dir, g, s, true, kv_dtype));
    recomputed.push_back(RunOnGrid(dir, g, s, false, kv_dtype));
  }
  if (world_rank != 0) return;
  ASSERT_EQ(ref.tokens.size(), 30u);
  ASSERT_EQ(ref.batch.size(), kBatchLengths.size() + 1);
  EXPECT_GT(ref.snapshot.preemptions, 0) << "the batch should overflow the pool";
  EXPECT_EQ(ref.capacity, kPoolTokens);
  int ran = 0;
  for (size_t i = 0; i < grids.size(); ++i) {
    const std::string name = fmt::format("{} ({} cache) grid {}x{}", model, KvDTypeName(kv_dtype),
                                         grids[i].first, grids[i].second);
    if (!got[i].valid) continue;
    ++ran;
    EXPECT_LT(RelativeDiff(ref.logits, got[i].logits), 1e-4) << name;
    EXPECT_LT(RelativeDiff(ref.logits, recomputed[i].logits), 1e-4) << name << " recomputed";
    EXPECT_EQ(ref.tokens, got[i].tokens) << name;
    EXPECT_EQ(ref.tokens, recomputed[i].tokens) << name << " recomputed";
    EXPECT_EQ(ref.batch, got[i].batch) << name << " batched";
    EXPECT_GT(got[i].snapshot.prefix_cache_hits, 0) << name;
    EXPECT_GT(got[i].snapshot.preemptions, 0) << name;
    EXPECT_EQ(got[i].capacity, kPoolTokens) << name;
  }
  EXPECT_GE(ran, 2) << "too few grids could split " << model;
}

INSTANTIATE_TEST_SUITE_P(
    Models, GridEquivalence,
    ::testing::Values(std::make_tuple("mha", DType::kF32), std::make_tuple("gqa", DType::kF32),
                      std::make_tuple("mqa", DType::kF32), std::make_tuple("mha", DType::kI8),
                      std::make_tuple("gqa", DType::kI8), std::make_tuple("gqa", DType::kF8E4M3)));

}  // namespace
}  // namespace kvshard
