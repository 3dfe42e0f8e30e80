// Sliding-window attention end to end (issue: KV compression): a model whose every layer slides
// (window 12) and one with a full-attention layer among sliding ones; the same weights with full
// attention show the window changes the output. Runs under `mpirun -np 4`:
// the world is split into grids (1x1, 1x2, 2x2), each runs the same request, world rank 0
// compares. What must hold:
//   - the cached run, whose blocks before the window go back to the pool as it runs, equals the
//     recompute path (the whole sequence each step, nothing released) and every grid (1e-4);
//   - with every layer sliding, a request 8x the window long holds at most window / block + 1
//     blocks after every step, and with a full layer it holds every block (nothing released);
//   - a batch of requests that release blocks and take each other's as they run gives each the
//     tokens it gets alone;
//   - no block leaks, with the KV dtypes f32 and int8.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

#include "coordinator/serving_engine.h"
#include "shard/shard_model.h"
#include "shard/shard_worker.h"
#include "tests/mpi/mpi_test_util.h"
#include "transport/mpi_communicator.h"

namespace kvshard {
namespace {

constexpr int64_t kBlockSize = 4;
constexpr int64_t kWindow = 12;  // the models' sliding_window (tests/mpi/CMakeLists.txt)

struct Outcome {
  bool valid = true;
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  int64_t most_held = 0;  // the request's blocks after its fullest step
  int64_t steps = 0;
  std::vector<std::vector<int32_t>> batch;  // each batched request's tokens
};

Outcome RunOnGrid(const std::string& model_dir, int groups, int shards, bool use_cache,
                  DType kv_dtype) {
  const int size = groups * shards;
  auto comm = GroupOf(size);
  auto config = LoadModelConfig(model_dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  Outcome out;
  if (!MakeTpLayout(*config, size, 0, shards).ok()) {
    out.valid = false;
    return out;
  }
  ShardOptions opt;
  opt.block_size = kBlockSize / shards;  // one logical block is kBlockSize positions on any grid
  opt.seq_shards = shards;
  opt.kv_dtype = kv_dtype;
  opt.num_blocks = 40;          // room for the whole request when nothing is released
  opt.max_tokens_per_step = 8;  // the 30-token prompt runs as 4 chunks
  auto model = ShardModel::Load(model_dir, *config, opt, comm->get());
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  if ((*comm)->rank() != 0) {
    const Status st = RunShardWorker(**model);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return out;
  }
  ServingEngine engine(model->get(), /*tokenizer=*/nullptr, ServingOptions{});
  RequestSpec req;
  for (int i = 0; i < 30; ++i) req.prompt.push_back((i * 37 + 11) % config->vocab_size);
  req.max_tokens = 8 * kWindow - 30;  // 8x the window in all
  req.use_kv_cache = use_cache;
  req.ignore_eos = true;
  auto stream = engine.Submit(req);
  EXPECT_TRUE(stream.ok()) << stream.status().ToString();
  if (!stream.ok()) return out;
  for (;;) {
    auto stepped = engine.Step();
    EXPECT_TRUE(stepped.ok()) << stepped.status().ToString();
    if (!stepped.ok() || !*stepped) break;
    ++out.steps;
    out.most_held = std::max(out.most_held, engine.blocks().HeldBlocks((*stream)->id));
  }
  {
    std::lock_guard<std::mutex> lock((*stream)->mu);
    EXPECT_TRUE((*stream)->finished);
    EXPECT_EQ((*stream)->finish_reason, "length") << (*stream)->error;
    out.tokens = (*stream)->tokens;
  }
  EXPECT_EQ(engine.blocks().free_blocks(), engine.blocks().total_blocks()) << "KV blocks leaked";
  // The logits: the same request again through Generate's trace (the prefix cache serves its
  // full blocks before the window; what is recomputed must agree).
  RequestSpec again = req;
  auto result = engine.Generate(again, nullptr, &out.logits);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  if (result.ok()) {
    EXPECT_EQ(result->tokens, out.tokens) << "the repeat differs";
  }
  EXPECT_EQ(engine.blocks().free_blocks(), engine.blocks().total_blocks()) << "KV blocks leaked";
  // A batch whose blocks are released and taken by one another as they run, each request's
  // tokens equal to the same request run alone.
  std::vector<std::shared_ptr<RequestStream>> batch;
  std::vector<RequestSpec> specs;
  for (int r = 0; r < 6; ++r) {
    RequestSpec spec;
    for (int i = 0; i < 10 + 7 * r; ++i) {
      spec.prompt.push_back((i * 29 + r * 13 + 3) % config->vocab_size);
    }
    spec.max_tokens = 40;
    spec.ignore_eos = true;
    spec.use_kv_cache = use_cache;
    specs.push_back(spec);
    auto st = engine.Submit(spec);
    EXPECT_TRUE(st.ok()) << st.status().ToString();
    if (st.ok()) batch.push_back(*st);
  }
  for (;;) {
    auto stepped = engine.Step();
    EXPECT_TRUE(stepped.ok()) << stepped.status().ToString();
    if (!stepped.ok() || !*stepped) break;
  }
  for (size_t r = 0; r < batch.size(); ++r) {
    std::vector<int32_t> together;
    {
      std::lock_guard<std::mutex> lock(batch[r]->mu);
      together = batch[r]->tokens;
    }
    auto alone = engine.Generate(specs[r], nullptr);
    EXPECT_TRUE(alone.ok()) << alone.status().ToString();
    if (alone.ok()) {
      EXPECT_EQ(together, alone->tokens) << "batched request " << r << " != alone";
    }
    out.batch.push_back(together);
  }
  EXPECT_EQ(engine.blocks().free_blocks(), engine.blocks().total_blocks()) << "KV blocks leaked";
  EXPECT_TRUE(engine.Shutdown().ok());
  return out;
}

class SlidingWindow : public ::testing::TestWithParam<DType> {};

TEST_P(SlidingWindow, ReleasesBlocksBehindTheWindowAndAgreesEverywhere) {
  int world_rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  ASSERT_EQ(world, 4) << "run under mpirun -np 4";
  const DType kv = GetParam();
  for (const std::string name : {"swa", "swa_mixed"}) {
    const std::string dir = TestModelDir(name);
    const Outcome ref = RunOnGrid(dir, 1, 1, true, kv);
    const Outcome recomputed = RunOnGrid(dir, 1, 1, false, kv);
    const Outcome seq2 = RunOnGrid(dir, 1, 2, true, kv);
    const Outcome grid = RunOnGrid(dir, 2, 2, true, kv);
    const Outcome full = RunOnGrid(TestModelDir("swa_full"), 1, 1, true, kv);
    if (world_rank != 0) continue;
    const std::string what = name + " (" + KvDTypeName(kv) + " cache)";
    ASSERT_EQ(ref.tokens.size(), static_cast<size_t>(8 * kWindow - 30)) << what;
    EXPECT_LT(RelativeDiff(ref.logits, recomputed.logits), 1e-4) << what << ": recompute";
    EXPECT_EQ(ref.tokens, recomputed.tokens) << what << ": recompute";
    EXPECT_EQ(ref.batch, recomputed.batch) << what << ": recompute, batched";
    for (const Outcome* o : {&seq2, &grid}) {
      if (!o->valid) continue;
      EXPECT_LT(RelativeDiff(ref.logits, o->logits), 1e-4) << what << ": grid";
      EXPECT_EQ(ref.tokens, o->tokens) << what << ": grid";
      EXPECT_EQ(ref.batch, o->batch) << what << ": grid, batched";
    }
    EXPECT_TRUE(grid.valid) << what << ": the 2x2 grid should split this model";
    std::printf("[ info ] %s: %lld steps, at most %lld blocks held (1x1), %lld (1x2), %lld (2x2)\n",
                what.c_str(), static_cast<long long>(ref.steps),
                static_cast<long long>(ref.most_held), static_cast<long long>(seq2.most_held),
                static_cast<long long>(grid.most_held));
    if (name == "swa") {
      // The window matters: the same weights with full attention give other logits.
      EXPECT_GT(RelativeDiff(ref.logits, full.logits), 1e-3) << what << ": the window did nothing";
      EXPECT_LE(ref.most_held, kWindow / kBlockSize + 1) << what;
      EXPECT_LE(seq2.most_held, kWindow / kBlockSize + 1) << what << ", 1x2";
      EXPECT_LE(grid.most_held, kWindow / kBlockSize + 1) << what << ", 2x2";
    } else {
      EXPECT_EQ(ref.most_held, 8 * kWindow / kBlockSize) << what << ": a full layer keeps all";
    }
    EXPECT_GT(ref.steps, 8 * kWindow - 30) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(KvDTypes, SlidingWindow, ::testing::Values(DType::kF32, DType::kI8));

// Attention sinks (StreamingLLM): N = 4 sinks and a window of W = 16, generating to 10x the
// model's context (256) with at most BlocksFor(N) + W / block + 1 blocks held; on a 1-layer model
// (whose K and V depend only on each token and its position) every chosen step's logits equal a
// fresh request over just the kept tokens, at positions 0.. within the cache (what the cache
// means, recomputed from scratch); the same trace on the 1x2 and 2x2 grids.
constexpr int64_t kSinks = 4, kStream = 16;

struct Streamed {
  bool valid = true;
  std::vector<int32_t> tokens;  // prompt + generated
  std::vector<std::vector<float>> logits;
  int64_t most_held = 0;
  std::vector<std::pair<int64_t, std::vector<float>>> reference;  // (position, fresh logits)
};

Streamed Stream(const std::string& model_dir, int groups, int shards, DType kv_dtype) {
  const int size = groups * shards;
  auto comm = GroupOf(size);
  auto config = LoadModelConfig(model_dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  Streamed out;
  if (!MakeTpLayout(*config, size, 0, shards).ok()) {
    out.valid = false;
    return out;
  }
  config->attention_sinks = kSinks;
  config->stream_window = kStream;
  ShardOptions opt;
  opt.block_size = kBlockSize / shards;
  opt.seq_shards = shards;
  opt.kv_dtype = kv_dtype;
  opt.num_blocks = 12;  // 48 positions: a tenth of what one request runs through
  opt.max_tokens_per_step = 8;
  auto model = ShardModel::Load(model_dir, *config, opt, comm->get());
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  if ((*comm)->rank() != 0) {
    const Status st = RunShardWorker(**model);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return out;
  }
  ServingEngine engine(model->get(), /*tokenizer=*/nullptr, ServingOptions{});
  RequestSpec req;
  for (int i = 0; i < 30; ++i) req.prompt.push_back((i * 37 + 11) % config->vocab_size);
  req.max_tokens = 10 * config->max_seq_len - 30;
  req.ignore_eos = true;
  auto stream = engine.Submit(req);
  EXPECT_TRUE(stream.ok()) << stream.status().ToString();
  if (!stream.ok()) return out;
  for (;;) {
    auto stepped = engine.Step();
    EXPECT_TRUE(stepped.ok()) << stepped.status().ToString();
    if (!stepped.ok() || !*stepped) break;
    out.most_held = std::max(out.most_held, engine.blocks().HeldBlocks((*stream)->id));
  }
  out.tokens = req.prompt;
  {
    std::lock_guard<std::mutex> lock((*stream)->mu);
    EXPECT_EQ((*stream)->finish_reason, "length") << (*stream)->error;
    out.tokens.insert(out.tokens.end(), (*stream)->tokens.begin(), (*stream)->tokens.end());
  }
  // The logits of every step, from the same request again.
  auto again = engine.Generate(req, nullptr, &out.logits);
  EXPECT_TRUE(again.ok()) << again.status().ToString();
  // Fresh requests over the kept tokens of chosen query positions.
  for (int64_t p : {int64_t{29}, int64_t{40}, int64_t{300}, int64_t{1001}, int64_t{2558}}) {
    RequestSpec fresh;
    for (int64_t x = 0; x < std::min(kSinks, p + 1); ++x) fresh.prompt.push_back(out.tokens[x]);
    for (int64_t x = std::max(kSinks, p - kStream + 1); x <= p; ++x) {
      fresh.prompt.push_back(out.tokens[x]);
    }
    fresh.max_tokens = 1;
    fresh.ignore_eos = true;
    std::vector<std::vector<float>> trace;
    auto r = engine.Generate(fresh, nullptr, &trace);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (r.ok() && !trace.empty()) out.reference.emplace_back(p, trace[0]);
  }
  EXPECT_EQ(engine.blocks().free_blocks(), engine.blocks().total_blocks()) << "KV blocks leaked";
  EXPECT_TRUE(engine.Shutdown().ok());
  return out;
}

class AttentionSinks : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionSinks, RunPastTheContextAndEqualTheKeptTokensRecomputed) {
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  const DType kv = GetParam();
  for (const std::string name : {"stream1", "swa_full"}) {
    const Streamed ref = Stream(TestModelDir(name), 1, 1, kv);
    const Streamed seq2 = Stream(TestModelDir(name), 1, 2, kv);
    const Streamed grid = Stream(TestModelDir(name), 2, 2, kv);
    if (world_rank != 0) continue;
    const std::string what = name + " (" + KvDTypeName(kv) + " cache)";
    ASSERT_EQ(ref.tokens.size(), 2560u) << what;
    EXPECT_LE(ref.most_held, 1 + kStream / kBlockSize + 1) << what;
    EXPECT_LE(grid.most_held, 1 + kStream / kBlockSize + 1) << what << ", 2x2";
    for (const Streamed* o : {&seq2, &grid}) {
      if (!o->valid) continue;
      // int8: over 2,560 steps a K or V element within an f32 rounding of a code boundary may
      // round the other way on another grid.
      EXPECT_LT(RelativeDiff(ref.logits, o->logits), kv == DType::kF32 ? 1e-4 : 1e-3)
          << what << ": grid";
      if (kv == DType::kF32) {
        EXPECT_EQ(ref.tokens, o->tokens) << what << ": grid";
      }
    }
    if (name != "stream1") continue;
    ASSERT_EQ(ref.reference.size(), 5u);
    for (const auto& [p, fresh] : ref.reference) {
      const std::vector<std::vector<float>> a = {ref.logits[p - 29]}, b = {fresh};
      const double diff = RelativeDiff(a, b);
      std::printf("[ info ] %s: query position %lld: %.2e from the kept tokens recomputed\n",
                  what.c_str(), static_cast<long long>(p), diff);
      EXPECT_LT(diff, kv == DType::kF32 ? 1e-4 : 2e-2) << what << ", position " << p;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(KvDTypes, AttentionSinks, ::testing::Values(DType::kF32, DType::kI8));

}  // namespace
}  // namespace kvshard
