#include "cluster/runtime.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <thread>

namespace kvshard {

void AddShardFlags(CLI::App* cmd, ShardFlags* f) {
  cmd->add_option("--model", f->model_dir, "Model directory (config.json + safetensors)")
      ->required();
  cmd->add_option("--threads", f->threads, "Threads per rank (0 = cores on this host / ranks)");
  cmd->add_option("--kv-blocks", f->kv_blocks,
                  "KV blocks per rank (0 = one sequence of the whole context)");
  cmd->add_option("--block-size", f->block_size, "Tokens per KV block")->check(CLI::Range(1, 4096));
  cmd->add_option("--kv-dtype", f->kv_dtype, "KV cache dtype: f32, f16 or bf16");
  cmd->add_option("--max-tokens-per-step", f->max_tokens_per_step,
                  "Largest prefill chunk (tokens per step)")
      ->check(CLI::Range(1, 1 << 20));
}

MpiSession::MpiSession() {
  int provided = 0;
  ok_ = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS;
}

MpiSession::~MpiSession() {
  if (ok_) MPI_Finalize();
}

namespace {

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

Status LoadShard(const ShardFlags& flags, int64_t min_kv_tokens, Runtime* rt) {
  KVS_ASSIGN_OR_RETURN(rt->config, LoadModelConfig(flags.model_dir));
  ShardOptions options;
  options.block_size = flags.block_size;
  KVS_ASSIGN_OR_RETURN(options.kv_dtype, ParseDType(flags.kv_dtype));
  options.max_tokens_per_step = flags.max_tokens_per_step;
  const int64_t tokens = min_kv_tokens > 0 ? min_kv_tokens : rt->config.max_seq_len;
  options.num_blocks =
      flags.kv_blocks > 0 ? flags.kv_blocks : (tokens + flags.block_size - 1) / flags.block_size;
  KVS_ASSIGN_OR_RETURN(rt->model,
                       ShardModel::Load(flags.model_dir, rt->config, options, rt->comm.get()));
  return Status::Ok();
}

}  // namespace

StatusOr<Runtime> StartRuntime(const ShardFlags& flags, int64_t min_kv_tokens) {
  Runtime rt;
  KVS_ASSIGN_OR_RETURN(rt.comm, MpiCommunicator::Create(MPI_COMM_WORLD));
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  rt.threads = flags.threads > 0 ? flags.threads : std::max(1, cores / LocalRanks());
  omp_set_num_threads(rt.threads);
  const Status local = LoadShard(flags, min_kv_tokens, &rt);
  KVS_RETURN_IF_ERROR(AgreeOnStatus(*rt.comm, local));
  if (rt.is_root()) {
    const TpLayout& l = rt.model->layout();
    const KvPoolShape& kv = rt.model->kv_shape();
    spdlog::info(
        "{} ranks, {} threads each; rank 0 holds {} query heads, {} KV heads (x{} replicas), "
        "{:.1f} MiB of weights, {} KV blocks of {} tokens = {:.1f} MiB KV ({} B/token)",
        l.tp, rt.threads, l.q_heads, l.kv_heads, l.kv_replicas,
        rt.model->weights().bytes() / 1048576.0, kv.num_blocks, kv.block_size,
        kv.total_bytes() / 1048576.0, kv.bytes_per_token());
  }
  return rt;
}

int ReportFailure(const Status& status, int rank) {
  if (rank == 0) spdlog::error("{}", status.ToString());
  return 1;
}

}  // namespace kvshard
