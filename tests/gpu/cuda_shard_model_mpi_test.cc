// The device model against the CPU model (invariant 1 of DESIGN.md: the same logits for every
// layout and backend), under `mpirun -np 2`: each rank alone (TP=1, with CUDA graphs through a
// one-rank NCCL clique and without them through the host-staged communicator), and both ranks
// together (TP=2) through the host-staged communicator with both ranks on GPU 0, or NCCL when
// there is a GPU per rank. Chunked prefill, a mixed prefill/decode step, decode across block
// boundaries with scrambled block tables, f32 and bf16; attention sinks, alone and on seq shards.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "cluster/model_writer.h"
#include "shard/cuda/cuda_shard_model.h"
#include "shard/shard_model.h"
#include "tests/gpu/gpu_test_util.h"
#include "transport/cuda/nccl_communicator.h"
#include "transport/cuda/staged_device_communicator.h"

namespace kvshard::cuda {
namespace {

using testing::Stream;

int AgreedDeviceCount() {
  int n = UsableDeviceCount();
  MPI_Allreduce(MPI_IN_PLACE, &n, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return n;
}

int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// A random Llama (GQA 8/2, head_dim 16, vocabulary not divisible by 2) written by world rank 0
// into a fresh directory whose name every rank receives.
std::string WriteModel(DType dtype) {
  char dir[256] = {};
  if (WorldRank() == 0) {
    ModelConfig c;
    c.dim = 128;
    c.hidden_dim = 192;
    c.n_layers = 2;
    c.n_heads = 8;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 301;
    c.max_seq_len = 256;
    c.dtype = dtype;
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<NamedTensor> tensors;
    for (auto& [name, shape] : LlamaTensorShapes(c)) {
      NamedTensor t{name, shape, {}};
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      const float scale = shape.size() == 1 ? 0.2f : std::sqrt(3.0f / shape.back());
      for (int64_t i = 0; i < n; ++i) t.values.push_back(scale * uniform(rng));
      if (shape.size() == 1) {
        for (float& x : t.values) x += 1.0f;
      }
      tensors.push_back(std::move(t));
    }
    const std::string path =
        (std::filesystem::temp_directory_path() /
         ("kvshard_gpu_model_" + std::to_string(getpid()) + "_" + std::string(DTypeName(dtype))))
            .string();
    const Status st = WriteModelDir(path, c, tensors, 1, {{"format", "pt"}});
    EXPECT_TRUE(st.ok()) << st.ToString();
    std::snprintf(dir, sizeof(dir), "%s", path.c_str());
  }
  MPI_Bcast(dir, sizeof(dir), MPI_CHAR, 0, MPI_COMM_WORLD);
  return dir;
}

struct Sequence {
  std::vector<int32_t> blocks;  // its whole block table, scrambled
  std::vector<int32_t> tokens;  // prompt, then the greedy choices
  int64_t done = 0;             // tokens whose KV is cached
  bool table_sent = false;      // the models keep it (table slot: the sequence's index)
};

// The next step: every sequence with tokens not yet cached contributes up to `chunk` of them and
// wants the logits of its last one. row_seq: the sequence of each logits row.
StepPlan NextPlan(std::vector<Sequence>& seqs, int64_t chunk, std::vector<size_t>* row_seq) {
  StepPlan plan;
  plan.qo_indptr.push_back(0);
  plan.append_indptr.push_back(0);
  row_seq->clear();
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = seqs[i];
    const int64_t n = std::min<int64_t>(chunk, static_cast<int64_t>(s.tokens.size()) - s.done);
    if (n <= 0) continue;
    for (int64_t j = 0; j < n; ++j) {
      plan.tokens.push_back(s.tokens[s.done + j]);
      plan.positions.push_back(static_cast<int32_t>(s.done + j));
    }
    s.done += n;
    plan.logits_rows.push_back(static_cast<int32_t>(plan.tokens.size()) - 1);
    row_seq->push_back(i);
    plan.qo_indptr.push_back(static_cast<int32_t>(plan.tokens.size()));
    plan.seq_slots.push_back(static_cast<int32_t>(i));
    if (!s.table_sent) {
      plan.append_slots.push_back(static_cast<int32_t>(i));
      plan.append_blocks.insert(plan.append_blocks.end(), s.blocks.begin(), s.blocks.end());
      plan.append_indptr.push_back(static_cast<int32_t>(plan.append_blocks.size()));
      s.table_sent = true;
    }
  }
  return plan;
}

struct RunConfig {
  DType weight_dtype = DType::kF32, kv_dtype = DType::kF32;
  bool graphs = false;
  double tolerance = 1e-3;  // of the largest |logit|, at least 1
  int seq_shards = 1;       // both models on the grid (ranks / seq_shards) x seq_shards
  int64_t sinks = 0, stream_window = 0;  // attention sinks (StreamingLLM) when stream_window > 0
};

// Runs chunked prefill of two prompts (the second joins in the second step), then 10 decode
// steps, through the CPU model on `cpu_comm` and the device model on `device_comm`; the group
// root compares every step's logits.
void CompareWithCpu(const std::string& model_dir, MpiCommunicator& cpu_comm,
                    DeviceCommunicator& device_comm, const RunConfig& run) {
  auto config = LoadModelConfig(model_dir);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  config->attention_sinks = run.sinks;
  config->stream_window = run.stream_window;
  ShardOptions cpu_options;
  cpu_options.num_blocks = 16;
  cpu_options.block_size = 16;
  cpu_options.kv_dtype = run.kv_dtype;
  cpu_options.max_tokens_per_step = 32;
  cpu_options.seq_shards = run.seq_shards;
  auto cpu = ShardModel::Load(model_dir, *config, cpu_options, &cpu_comm);
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  CudaShardOptions gpu_options;
  gpu_options.num_blocks = 16;
  gpu_options.block_size = 16;
  gpu_options.kv_dtype = run.kv_dtype;
  gpu_options.weight_dtype = run.weight_dtype;
  gpu_options.max_tokens_per_step = 32;
  gpu_options.cuda_graphs = run.graphs;
  gpu_options.seq_shards = run.seq_shards;
  auto gpu = CudaShardModel::Load(model_dir, *config, gpu_options, &device_comm);
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  ASSERT_TRUE((*gpu)->AgreeOnBlocks().ok());
  EXPECT_EQ((*gpu)->num_blocks(), 16);

  std::vector<Sequence> seqs(2);
  seqs[0].blocks = {5, 2, 7, 11};
  seqs[1].blocks = {0, 9};
  for (int i = 0; i < 40; ++i) seqs[0].tokens.push_back((i * 37 + 11) % 301);
  const bool root = cpu_comm.rank() == 0;
  for (int step = 0; step < 12; ++step) {
    if (step == 1) {
      for (int i = 0; i < 12; ++i) seqs[1].tokens.push_back((i * 53 + 5) % 301);
    }
    std::vector<size_t> row_seq;
    const StepPlan plan = NextPlan(seqs, 24, &row_seq);
    std::vector<float> want, got;
    const Status cpu_st = (*cpu)->Forward(plan, &want);
    ASSERT_TRUE(cpu_st.ok()) << cpu_st.ToString();
    const Status gpu_st = (*gpu)->Forward(plan, &got);
    ASSERT_TRUE(gpu_st.ok()) << gpu_st.ToString();
    std::vector<int32_t> next(plan.logits_rows.size());
    // Root-only checks must not return early: the other rank would wait in the next collective.
    if (root && got.size() != want.size()) {
      ADD_FAILURE() << "step " << step << ": " << got.size() << " logits, want " << want.size();
    } else if (root) {
      float largest = 1.0f;
      for (float w : want) largest = std::max(largest, std::fabs(w));
      double err = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        err = std::max(err, static_cast<double>(std::fabs(got[i] - want[i])));
      }
      EXPECT_LT(err, run.tolerance * largest) << "step " << step;
      const int64_t V = config->vocab_size;
      for (size_t r = 0; r < next.size(); ++r) {
        const float* row = want.data() + r * V;
        next[r] = static_cast<int32_t>(std::max_element(row, row + V) - row);
      }
    }
    ASSERT_TRUE(cpu_comm.Broadcast(next.data(), next.size() * sizeof(int32_t), 0).ok());
    // A sequence whose tokens are all cached now generates: greedy, from the CPU's logits.
    for (size_t r = 0; r < row_seq.size(); ++r) {
      Sequence& s = seqs[row_seq[r]];
      if (s.done == static_cast<int64_t>(s.tokens.size())) s.tokens.push_back(next[r]);
    }
  }
  if (run.graphs) {
    EXPECT_EQ((*gpu)->graphs(), 1u) << "decode steps of 2 sequences: one bucket";
  }
}

std::unique_ptr<MpiCommunicator> Split(int color) {
  MPI_Comm group;
  MPI_Comm_split(MPI_COMM_WORLD, color, WorldRank(), &group);
  auto comm = MpiCommunicator::Create(group);
  MPI_Comm_free(&group);
  EXPECT_TRUE(comm.ok()) << comm.status().ToString();
  return comm.ok() ? std::move(comm).value() : nullptr;
}

TEST(CudaShardModel, OneRankMatchesCpuWithAndWithoutGraphs) {
  if (AgreedDeviceCount() < 1) GTEST_SKIP() << "no CUDA device on every rank: test not run";
  KVS_TEST_CUDA(cudaSetDevice(0));
  const std::string f32_model = WriteModel(DType::kF32);
  auto cpu_comm = Split(WorldRank());
  auto control = Split(WorldRank());
  ASSERT_TRUE(cpu_comm && control);
  Stream stream;
  {
    auto nccl = NcclCommunicator::Create(control.get(), stream.get());
    ASSERT_TRUE(nccl.ok()) << nccl.status().ToString();
    CompareWithCpu(f32_model, *cpu_comm, **nccl, {DType::kF32, DType::kF32, true, 1e-3});
    CompareWithCpu(f32_model, *cpu_comm, **nccl, {DType::kF32, DType::kF16, true, 1e-2});
    // Quantized caches: the same codes and scales as the CPU's from (almost) the same K and V;
    // an element within an f32 rounding of a code boundary may take the next code.
    CompareWithCpu(f32_model, *cpu_comm, **nccl, {DType::kF32, DType::kI8, true, 1e-2});
    CompareWithCpu(f32_model, *cpu_comm, **nccl, {DType::kF32, DType::kF8E4M3, false, 2e-2});
  }
  StagedOptions staged_options;
  staged_options.max_reduce_floats = staged_options.max_gather_floats = 32 * 301;
  {
    // Attention sinks: the 52-token sequence passes a window of 12 after 4 sinks during prefill
    // chunks and every decode step; the sinks are attended with the query rotated back. Also a
    // window alone (no sinks), and an int8 cache with graphs.
    auto nccl = NcclCommunicator::Create(control.get(), stream.get());
    ASSERT_TRUE(nccl.ok()) << nccl.status().ToString();
    CompareWithCpu(f32_model, *cpu_comm, **nccl, {DType::kF32, DType::kF32, true, 1e-3, 1, 4, 12});
    CompareWithCpu(f32_model, *cpu_comm, **nccl, {DType::kF32, DType::kF32, false, 1e-3, 1, 0, 9});
    CompareWithCpu(f32_model, *cpu_comm, **nccl, {DType::kF32, DType::kI8, true, 1e-2, 1, 2, 20});
  }
  auto staged = StagedDeviceCommunicator::Create(control.get(), stream.get(), staged_options);
  ASSERT_TRUE(staged.ok()) << staged.status().ToString();
  CompareWithCpu(f32_model, *cpu_comm, **staged, {DType::kF32, DType::kF32, false, 1e-3});
  const std::string bf16_model = WriteModel(DType::kBF16);
  CompareWithCpu(bf16_model, *cpu_comm, **staged, {DType::kBF16, DType::kBF16, false, 0.1});
}

TEST(CudaShardModel, TwoRanksMatchCpu) {
  const int devices = AgreedDeviceCount();
  if (devices < 1) GTEST_SKIP() << "no CUDA device on every rank: test not run";
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const bool nccl = devices >= world;  // otherwise the ranks share GPU 0 through the host
  KVS_TEST_CUDA(cudaSetDevice(nccl ? WorldRank() : 0));
  const std::string f32_model = WriteModel(DType::kF32);
  const std::string bf16_model = WriteModel(DType::kBF16);
  auto cpu_comm = Split(0);
  auto control = Split(0);
  ASSERT_TRUE(cpu_comm && control);
  Stream stream;
  std::unique_ptr<DeviceCommunicator> device_comm;
  if (nccl) {
    auto c = NcclCommunicator::Create(control.get(), stream.get());
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    device_comm = std::move(c).value();
  } else {
    StagedOptions options;
    options.max_reduce_floats = 32 * 128;
    options.max_gather_floats = 32 * 301;
    options.max_group_gather_floats = 1 << 16;  // 2 shards x 32 tokens x [out | lse] of the heads
    auto c = StagedDeviceCommunicator::Create(control.get(), stream.get(), options);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    device_comm = std::move(c).value();
  }
  CompareWithCpu(f32_model, *cpu_comm, *device_comm, {DType::kF32, DType::kF32, nccl, 1e-3});
  CompareWithCpu(bf16_model, *cpu_comm, *device_comm, {DType::kBF16, DType::kBF16, nccl, 0.1});
  // One head group of two seq shards: each rank holds every other block of positions, attends
  // over its own, and the device all-gather and merge join them (prefill chunks and decode, two
  // sequences, the second shorter than one block per shard at first).
  CompareWithCpu(f32_model, *cpu_comm, *device_comm, {DType::kF32, DType::kF32, nccl, 1e-3, 2});
  CompareWithCpu(bf16_model, *cpu_comm, *device_comm, {DType::kBF16, DType::kBF16, nccl, 0.1, 2});
  // Attention sinks on the seq shards: each shard's sink and window parts merge by their
  // log-sum-exps, and the merged log-sum-exp joins the shards' merge.
  CompareWithCpu(f32_model, *cpu_comm, *device_comm,
                 {DType::kF32, DType::kF32, nccl, 1e-3, 2, 4, 12});
}

}  // namespace
}  // namespace kvshard::cuda
