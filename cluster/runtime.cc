#include "cluster/runtime.h"

#include <omp.h>
#include <sched.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <thread>

#include "common/byte_size.h"
#include "shard/shard_model.h"
#ifdef KVSHARD_HAVE_CUDA
#include "common/cuda/cuda_check.h"
#include "shard/cuda/cuda_shard_model.h"
#include "transport/cuda/nccl_communicator.h"
#include "transport/cuda/staged_device_communicator.h"
#endif

namespace kvshard {

void AddShardFlags(CLI::App* cmd, ShardFlags* f) {
  cmd->add_option("--model", f->model_dir, "Model directory (config.json + safetensors)")
      ->required();
  cmd->add_option("--threads", f->threads, "Threads per rank (0 = cores on this host / ranks)");
  cmd->add_option("--kv-blocks", f->kv_blocks,
                  "KV blocks per rank (0 = one sequence of the whole context)");
  cmd->add_option("--block-size", f->block_size, "Tokens per KV block")->check(CLI::Range(1, 4096));
  cmd->add_option("--seq-shards", f->seq_shards,
                  "Seq shards per head group: the ranks form a grid of (ranks / S) head groups x "
                  "S seq shards, each shard holding a disjoint share of every sequence's KV")
      ->check(CLI::Range(1, static_cast<int>(kMaxMergeShards)));
  cmd->add_option("--kv-memory", f->kv_memory,
                  "KV cache memory per rank, e.g. 512MiB or 2GiB (sizes the pool; overrides "
                  "--kv-blocks)");
  cmd->add_option("--kv-dtype", f->kv_dtype,
                  "KV cache dtype: f32, f16, bf16, int8 or fp8 (e4m3; codes with one f32 scale per "
                  "token and KV head)");
  cmd->add_option("--sliding-window", f->sliding_window,
                  "Every layer attends to the last N positions only (overrides the model's "
                  "sliding_window; blocks behind the window return to the pool as a request runs)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--attention-sinks", f->attention_sinks,
                  "StreamingLLM: keep the first N positions' KV as attention sinks (with "
                  "--stream-window); generation may run past the model's context")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  cmd->add_option("--stream-window", f->stream_window,
                  "StreamingLLM: keep the last W positions' KV; attention uses positions within "
                  "the kept cache, and older blocks return to the pool as a request runs")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--max-tokens-per-step", f->max_tokens_per_step,
                  "Largest prefill chunk (tokens per step)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--device", f->device,
                  "Where the shards run: cpu, cuda, or auto (cuda when every rank has a GPU)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--gpu-memory-fraction", f->gpu_memory_fraction,
                  "cuda: fraction of each GPU's memory to use, weights and KV cache included "
                  "(the KV cache gets what is left unless --kv-blocks is given)")
      ->check(CLI::Range(0.05, 1.0));
  cmd->add_option("--weight-dtype", f->weight_dtype,
                  "Weight matrices in memory: auto, f32, bf16 or f16 (auto: cpu keeps each "
                  "matrix's stored dtype, block-quantized GGUF tensors as f32; cuda uses bf16, or "
                  "f16 for an f16 checkpoint). cuda: also the GEMM input dtype");
  cmd->add_option("--gemm-dtype", f->gemm_dtype,
                  "cpu: the inputs of prefill-sized products (16 tokens or more) with bf16 or f16 "
                  "weight matrices: f32 (the weights widened, exact) or bf16 (the activations "
                  "rounded to bf16, f32 sums; AMX tiles, or AVX512-BF16 dot products, where the "
                  "CPU has them; llama.cpp's choice for BF16 files; f16 weights are split exactly "
                  "into two bf16 parts). cuda: its GEMM inputs follow --weight-dtype")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_flag("--no-cuda-graphs", f->no_cuda_graphs, "cuda: run decode steps without graphs");
}

MpiSession::MpiSession() {
  int provided = 0;
  ok_ = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS;
}

MpiSession::~MpiSession() {
  if (ok_) MPI_Finalize();
}

namespace {

// The model's config, with --sliding-window applied.
StatusOr<ModelConfig> LoadConfig(const ShardFlags& flags) {
  KVS_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(flags.model_dir));
  if (flags.sliding_window > 0) {
    config.layer_window.assign(static_cast<size_t>(config.n_layers), flags.sliding_window);
  }
  if (flags.attention_sinks > 0 && flags.stream_window == 0) {
    return InvalidArgument(
        "--attention-sinks goes with --stream-window W (the recent positions kept)");
  }
  if (flags.stream_window > 0) {
    if (!config.layer_window.empty()) {
      return InvalidArgument(
          "--stream-window: this model (or --sliding-window) already has sliding windows; give "
          "one of them");
    }
    if (flags.attention_sinks + flags.stream_window > config.max_seq_len) {
      return InvalidArgument(
          "--attention-sinks {} + --stream-window {} exceed the model's context of {} tokens (the "
          "cache's positions must stay inside it)",
          flags.attention_sinks, flags.stream_window, config.max_seq_len);
    }
    config.attention_sinks = flags.attention_sinks;
    config.stream_window = flags.stream_window;
  }
  return config;
}

// Ranks sharing this host, so that threads default to this host's share of the cores.
int LocalRanks() {
  MPI_Comm local;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) !=
      MPI_SUCCESS) {
    return 1;
  }
  int n = 1;
  MPI_Comm_size(local, &n);
  MPI_Comm_free(&local);
  return n;
}

// The cores this process may run on (its affinity mask: mpirun binds each rank to one core by
// default, and then more threads than that only share it).
int AllowedCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  return std::max(1, CPU_COUNT(&set));
}

#ifdef KVSHARD_HAVE_CUDA
// This rank's index among the ranks on its host.
int LocalRank() {
  MPI_Comm local;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) !=
      MPI_SUCCESS) {
    return 0;
  }
  int rank = 0;
  MPI_Comm_rank(local, &rank);
  MPI_Comm_free(&local);
  return rank;
}

struct CudaRuntime : DeviceRuntime {
  cudaStream_t stream = nullptr;
  int ranks_per_gpu = 1;
  std::unique_ptr<cuda::DeviceCommunicator> comm;
  ~CudaRuntime() override {
    comm.reset();
    if (stream) cudaStreamDestroy(stream);
  }
};

// Rank -> GPU (local rank modulo the host's GPUs) and a stream; local, never collective.
Status SelectDevice(CudaRuntime* cuda, bool* shares_gpu) {
  std::string why;
  const int devices = cuda::UsableDeviceCount(&why);
  if (devices == 0) return FailedPrecondition("--device cuda: {}", why);
  const int local = LocalRank();
  *shares_gpu = LocalRanks() > devices;
  cuda->ranks_per_gpu = (LocalRanks() + devices - 1) / devices;
  KVS_RETURN_IF_ERROR(KVS_CUDA(cudaSetDevice(local % devices)));
  return KVS_CUDA(cudaStreamCreateWithFlags(&cuda->stream, cudaStreamNonBlocking));
}

// The CUDA start-up, in phases that keep every rank in step (each local phase ends in an
// agreement, so a failing rank never leaves the others waiting in a collective): device
// selection and config; the device communicator, NCCL when no GPU is shared by two ranks
// anywhere, else host staging; the model; the block count, the smallest over the ranks.
Status StartCuda(const ShardFlags& flags, int64_t min_kv_tokens, Runtime* rt) {
  auto cuda = std::make_unique<CudaRuntime>();
  bool shares_gpu = false;
  Status local = SelectDevice(cuda.get(), &shares_gpu);
  if (local.ok()) {
    auto config = LoadConfig(flags);
    local = config.ok() ? Status::Ok() : config.status();
    if (config.ok()) rt->config = *config;
  }
  KVS_RETURN_IF_ERROR(AgreeOnStatus(*rt->comm, local));
  int staged = shares_gpu ? 1 : 0;
  KVS_RETURN_IF_ERROR(rt->comm->AllReduceMax(&staged));
  if (staged) {
    cuda::StagedOptions options;
    options.max_reduce_floats = flags.max_tokens_per_step * rt->config.dim;
    options.max_gather_floats = flags.max_tokens_per_step * rt->config.vocab_size;
    // The seq shards' [out | lse] of a step, from every shard of a head group (a grid the model
    // cannot split is refused by the model's load below).
    auto grid = MakeTpLayout(rt->config, rt->comm->size(), 0, flags.seq_shards);
    if (grid.ok() && grid->seq_shards > 1) {
      options.max_group_gather_floats =
          grid->seq_shards * flags.max_tokens_per_step * grid->q_heads * (rt->config.head_dim + 1);
    }
    auto comm = cuda::StagedDeviceCommunicator::Create(rt->comm.get(), cuda->stream, options);
    KVS_RETURN_IF_ERROR(AgreeOnStatus(*rt->comm, comm.ok() ? Status::Ok() : comm.status()));
    cuda->comm = std::move(comm).value();
  } else {
    KVS_ASSIGN_OR_RETURN(cuda->comm, cuda::NcclCommunicator::Create(rt->comm.get(), cuda->stream));
  }
  cuda::CudaShardOptions options;
  options.num_blocks = flags.kv_blocks;  // 0: what the memory fraction leaves
  if (!flags.kv_memory.empty()) {
    auto blocks = KvBlocksPerRank(flags, rt->config, rt->comm->size(), min_kv_tokens);
    KVS_RETURN_IF_ERROR(AgreeOnStatus(*rt->comm, blocks.status()));
    options.num_blocks = *blocks;
  }
  // Ranks sharing a GPU split its memory fraction.
  options.memory_fraction = flags.gpu_memory_fraction / cuda->ranks_per_gpu;
  options.block_size = flags.block_size;
  options.seq_shards = flags.seq_shards;
  options.max_tokens_per_step = flags.max_tokens_per_step;
  options.max_seqs = flags.max_seqs;
  options.cuda_graphs = !flags.no_cuda_graphs;
  std::unique_ptr<cuda::CudaShardModel> model;
  auto kv_dtype = ParseKvDType(flags.kv_dtype);
  auto weight_dtype =
      flags.weight_dtype == "auto"
          ? StatusOr<DType>(rt->config.dtype == DType::kF16 ? DType::kF16 : DType::kBF16)
          : ParseDType(flags.weight_dtype);
  if (!kv_dtype.ok()) {
    local = kv_dtype.status();
  } else if (!weight_dtype.ok()) {
    local = weight_dtype.status();
  } else {
    options.kv_dtype = *kv_dtype;
    options.weight_dtype = *weight_dtype;
    auto loaded =
        cuda::CudaShardModel::Load(flags.model_dir, rt->config, options, cuda->comm.get());
    local = loaded.ok() ? Status::Ok() : loaded.status();
    if (loaded.ok()) model = std::move(loaded).value();
  }
  KVS_RETURN_IF_ERROR(AgreeOnStatus(*rt->comm, local));
  KVS_RETURN_IF_ERROR(model->AgreeOnBlocks());
  if (min_kv_tokens > model->request_capacity_tokens()) {
    return ResourceExhausted(
        "the GPUs' KV caches hold {} tokens for one request; {} are needed (raise "
        "--gpu-memory-fraction, add ranks or seq shards)",
        model->request_capacity_tokens(), min_kv_tokens);
  }
  rt->device = std::move(cuda);
  rt->model = std::move(model);
  return Status::Ok();
}
#endif

}  // namespace

StatusOr<int64_t> KvBlocksPerRank(const ShardFlags& flags, const ModelConfig& config, int world,
                                  int64_t min_kv_tokens) {
  KVS_ASSIGN_OR_RETURN(const TpLayout layout, MakeTpLayout(config, world, 0, flags.seq_shards));
  KVS_ASSIGN_OR_RETURN(const DType kv_dtype, ParseKvDType(flags.kv_dtype));
  KvPoolShape shape;
  shape.layers = config.n_layers;
  shape.block_size = flags.block_size;
  shape.kv_heads = layout.kv_heads;
  shape.head_dim = config.head_dim;
  shape.dtype = kv_dtype;
  if (!flags.kv_memory.empty()) {
    KVS_ASSIGN_OR_RETURN(const int64_t bytes, ParseByteSize(flags.kv_memory));
    const int64_t blocks = bytes / shape.bytes_per_block();
    if (blocks < 1) {
      return InvalidArgument(
          "--kv-memory {} holds no KV block: one block of {} tokens takes {} on each rank",
          flags.kv_memory, flags.block_size, FormatBytes(shape.bytes_per_block()));
    }
    return blocks;
  }
  if (flags.kv_blocks > 0) return flags.kv_blocks;
  // One block id covers block_size positions on each of the group's seq shards.
  const int64_t logical = flags.block_size * flags.seq_shards;
  const int64_t tokens = min_kv_tokens > 0 ? min_kv_tokens : config.max_seq_len;
  return (tokens + logical - 1) / logical;
}

namespace {

Status LoadShard(const ShardFlags& flags, int64_t min_kv_tokens, Runtime* rt) {
  KVS_ASSIGN_OR_RETURN(rt->config, LoadConfig(flags));
  ShardOptions options;
  options.block_size = flags.block_size;
  options.seq_shards = flags.seq_shards;
  KVS_ASSIGN_OR_RETURN(options.kv_dtype, ParseKvDType(flags.kv_dtype));
  if (flags.weight_dtype != "auto") {
    KVS_ASSIGN_OR_RETURN(options.weight_dtype, ParseDType(flags.weight_dtype));
  }
  options.max_tokens_per_step = flags.max_tokens_per_step;
  options.max_seqs = flags.max_seqs;
  options.bf16_gemm_inputs = flags.gemm_dtype == "bf16";
  // --threads N fixes the team size; the default (0) lets the shard tune it while decoding.
  options.tune_threads = flags.threads > 0 ? 0 : rt->threads;
  KVS_ASSIGN_OR_RETURN(options.num_blocks,
                       KvBlocksPerRank(flags, rt->config, rt->comm->size(), min_kv_tokens));
  KVS_ASSIGN_OR_RETURN(rt->model,
                       ShardModel::Load(flags.model_dir, rt->config, options, rt->comm.get()));
  return Status::Ok();
}

}  // namespace

std::vector<std::string> DescribeRanks(const Runtime& rt) {
  const TpLayout& l = rt.model->layout();
  std::vector<std::string> out;
  for (int r = 0; r < l.tp; ++r) {
    out.push_back(fmt::format("{} -> (head group {}, seq shard {})", rt.comm->Where(r),
                              r / l.seq_shards, r % l.seq_shards));
  }
  return out;
}

namespace {

// The start-up log (rank 0): the grid, what rank 0 holds, one request's KV capacity, and where
// every rank lives in the grid.
void LogLayout(const Runtime& rt) {
  if (!rt.is_root()) return;
  const TpLayout& l = rt.model->layout();
  const ShardBackend& m = *rt.model;
  spdlog::info(
      "{} ranks on {} ({} threads each) as {} head groups x {} seq shards; rank 0 holds {} query "
      "heads, {} KV heads (x{} replicas), {} of weights ({}), {} KV blocks of {} tokens = {} KV "
      "({}, {} B/token)",
      l.tp, rt.device_name == "cuda" ? "GPUs" : "CPUs", rt.threads, l.head_groups, l.seq_shards,
      l.q_heads, l.kv_heads, l.kv_replicas, FormatBytes(m.weight_bytes()), m.weight_dtype(),
      m.num_blocks(), m.block_size(), FormatBytes(m.kv_bytes()), rt.kv_dtype,
      m.kv_bytes_per_token());
  spdlog::info(
      "KV capacity of one request: {} tokens ({} blocks of {} tokens across {} seq shards)",
      m.request_capacity_tokens(), m.num_blocks(), m.logical_block_size(), l.seq_shards);
  for (const std::string& line : DescribeRanks(rt)) spdlog::info("  {}", line);
}

}  // namespace

StatusOr<Runtime> StartRuntime(const ShardFlags& flags, int64_t min_kv_tokens) {
  Runtime rt;
  KVS_ASSIGN_OR_RETURN(rt.comm, MpiCommunicator::Create(MPI_COMM_WORLD));
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int allowed = AllowedCores();
  rt.threads =
      flags.threads > 0 ? flags.threads : std::max(1, std::min(allowed, cores / LocalRanks()));
  if (rt.threads > allowed) {
    spdlog::warn(
        "--threads {} but this rank may run on {} of the host's {} cores, so its threads share "
        "them (mpirun binds each rank to a core unless given --bind-to none)",
        rt.threads, allowed, cores);
  }
  omp_set_num_threads(rt.threads);
  // auto: CUDA when this build has it and every rank sees a GPU; otherwise the CPU path.
  ShardFlags resolved = flags;
  if (flags.device == "auto") {
    int without_gpu = 1;
#ifdef KVSHARD_HAVE_CUDA
    without_gpu = cuda::UsableDeviceCount() > 0 ? 0 : 1;
#endif
    KVS_RETURN_IF_ERROR(rt.comm->AllReduceMax(&without_gpu));
    resolved.device = without_gpu ? "cpu" : "cuda";
  }
  rt.device_name = resolved.device;
  KVS_ASSIGN_OR_RETURN(const DType kv_dtype, ParseKvDType(flags.kv_dtype));
  rt.kv_dtype = KvDTypeName(kv_dtype);
  if (resolved.device == "cuda") {
#ifdef KVSHARD_HAVE_CUDA
    KVS_RETURN_IF_ERROR(StartCuda(resolved, min_kv_tokens, &rt));
    LogLayout(rt);
    return rt;
#else
    return AgreeOnStatus(*rt.comm, FailedPrecondition("--device cuda: this kvshard was built "
                                                      "without CUDA (no nvcc at configure time)"));
#endif
  }
  const Status local = LoadShard(resolved, min_kv_tokens, &rt);
  KVS_RETURN_IF_ERROR(AgreeOnStatus(*rt.comm, local));
  LogLayout(rt);
  return rt;
}

int ReportFailure(const Status& status, int rank) {
  if (rank == 0) spdlog::error("{}", status.ToString());
  return 1;
}

}  // namespace kvshard
