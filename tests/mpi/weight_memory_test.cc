// Weights kept in their own dtype (shard/weights.h): a bf16 checkpoint held as bf16 takes half
// the host memory of its f32 widening, counted both by the shard (weight_bytes, what the bench
// and the start-up log report) and by the process's resident set, and generates the same tokens
// with the same logits. Runs under `mpirun -np 1` on a bf16 model of about 20 MB in f32.
#include <gtest/gtest.h>
#include <malloc.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <optional>
#include <string>

#include "coordinator/serving_engine.h"
#include "kernels/cpu/matmul.h"
#include "shard/shard_model.h"
#include "tests/mpi/mpi_test_util.h"
#include "transport/mpi_communicator.h"

namespace kvshard {
namespace {

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

struct Loaded {
  int64_t weight_bytes = 0, decode_read_bytes = 0, resident_growth = 0;
  std::string dtype;
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
};

Loaded LoadAndGenerate(const std::string& dir, std::optional<DType> weight_dtype,
                       bool bf16_gemm_inputs = false) {
  Loaded run;
  auto comm = MpiCommunicator::Create(MPI_COMM_WORLD);
  EXPECT_TRUE(comm.ok()) << comm.status().ToString();
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  ShardOptions opt;
  opt.num_blocks = 4;
  opt.max_tokens_per_step = 16;
  opt.weight_dtype = weight_dtype;
  opt.bf16_gemm_inputs = bf16_gemm_inputs;
  const int64_t before = ResidentBytes();
  auto model = ShardModel::Load(dir, *config, opt, comm->get());
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  if (!model.ok()) return run;
  run.resident_growth = ResidentBytes() - before;
  run.weight_bytes = (*model)->weight_bytes();
  run.decode_read_bytes = (*model)->decode_read_bytes();
  run.dtype = (*model)->weight_dtype();
  ServingEngine engine(model->get(), /*tokenizer=*/nullptr, ServingOptions{});
  RequestSpec req;
  for (int i = 0; i < 20; ++i) req.prompt.push_back((i * 131 + 7) % config->vocab_size);
  req.max_tokens = 24;
  req.ignore_eos = true;
  auto result = engine.Generate(req, nullptr, &run.logits);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  if (result.ok()) run.tokens = result->tokens;
  EXPECT_EQ(engine.blocks().free_blocks(), engine.blocks().total_blocks()) << "KV blocks leaked";
  EXPECT_TRUE(engine.Shutdown().ok());
  return run;
}

TEST(WeightMemory, Bf16CheckpointHeldAsBf16TakesHalfTheMemoryAndGeneratesTheSame) {
  // Every large block mmapped, and returned to the system when freed: otherwise glibc raises its
  // mmap threshold after the first model's blocks are freed and keeps the second model's in a heap
  // that may reuse the first's pages (making the resident growth smaller than what is held).
  mallopt(M_MMAP_THRESHOLD, 64 << 10);
  const std::string dir = TestModelDir("big_bf16");
  const Loaded bf16 = LoadAndGenerate(dir, std::nullopt);  // the stored dtype
  const Loaded f32 = LoadAndGenerate(dir, DType::kF32);
  std::printf(
      "weights held as bf16: %lld B, resident +%lld B; as f32: %lld B, resident +%lld B\n",
      static_cast<long long>(bf16.weight_bytes), static_cast<long long>(bf16.resident_growth),
      static_cast<long long>(f32.weight_bytes), static_cast<long long>(f32.resident_growth));
  EXPECT_EQ(bf16.dtype, "BF16");
  EXPECT_EQ(f32.dtype, "F32");
  ASSERT_GT(f32.weight_bytes, 16 << 20);
  // Only the norm weights stay f32.
  EXPECT_LT(bf16.weight_bytes, 0.51 * f32.weight_bytes);
  EXPECT_GT(bf16.weight_bytes, 0.49 * f32.weight_bytes);
  EXPECT_LT(bf16.decode_read_bytes, 0.51 * f32.decode_read_bytes);
  // The process really holds that: its resident set grows by the weights (and a small KV pool
  // and workspace), half as much for bf16.
  EXPECT_GT(f32.resident_growth, 0.9 * f32.weight_bytes);
  EXPECT_LT(bf16.resident_growth, 0.6 * f32.resident_growth)
      << "bf16 +" << bf16.resident_growth << " B, f32 +" << f32.resident_growth << " B";
  // Widening is exact and the kernels add in the same order (the GEMM of the prompt's products
  // too), so the logits are equal; only OpenBLAS's sgemm (KVSHARD_GEMM=openblas) may sum a
  // 16-bit matrix, widened a panel of rows at a time, in another order: then the same tokens,
  // and logits equal within f32 rounding.
  ASSERT_EQ(bf16.tokens.size(), 24u);
  EXPECT_EQ(bf16.tokens, f32.tokens);
  EXPECT_LT(RelativeDiff(bf16.logits, f32.logits), 1e-5);
  if (!gemm_is_openblas()) {
    EXPECT_EQ(RelativeDiff(bf16.logits, f32.logits), 0.0);
  }
}

// --gemm-dtype bf16: the prompt's products take bf16 inputs (the activations rounded to bf16;
// decode steps keep f32 inputs). The same greedy tokens as f32 inputs, the logits within what
// rounding the activations to 8 bits of mantissa moves them, and not equal to them (the option is
// in effect).
TEST(WeightMemory, Bf16GemmInputsGenerateTheSameTokens) {
  const std::string dir = TestModelDir("big_bf16");
  const Loaded f32_inputs = LoadAndGenerate(dir, std::nullopt);
  const Loaded bf16_inputs = LoadAndGenerate(dir, std::nullopt, /*bf16_gemm_inputs=*/true);
  ASSERT_EQ(bf16_inputs.tokens.size(), 24u);
  EXPECT_EQ(bf16_inputs.tokens, f32_inputs.tokens);
  const double diff = RelativeDiff(bf16_inputs.logits, f32_inputs.logits);
  std::printf("logits with bf16 GEMM inputs: relative difference %.3g\n", diff);
  EXPECT_LT(diff, 2e-2);
  EXPECT_GT(diff, 0.0);
}

}  // namespace
}  // namespace kvshard
