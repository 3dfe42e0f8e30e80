// The `kvshard` sub-commands. Each returns the process exit code.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace kvshard {

// Options shared by every command that starts the shards (generate, bench).
struct ShardFlags {
  std::string model_dir;
  int threads = 0;        // per rank; 0 = this host's cores / ranks on this host
  int64_t kv_blocks = 0;  // 0 = enough for one sequence of the model's whole context
  int64_t block_size = 16;
  int seq_shards = 1;     // seq shards per head group: the grid is (ranks / seq_shards) x this
  std::string kv_memory;  // KV pool per rank, e.g. "2GiB" (sizes the pool; "" = --kv-blocks)
  std::string kv_dtype = "f32";
  int64_t sliding_window = 0;   // > 0: every layer's window (overrides config.json's)
  int64_t attention_sinks = 0;  // StreamingLLM: keep the first N positions' KV ...
  int64_t stream_window = 0;    // ... and the last W positions' (0: off)
  int64_t max_tokens_per_step = 512;
  int64_t max_seqs = 1;              // block table slots on every rank (serve: its --max-seqs)
  std::string device = "auto";       // auto, cpu, or cuda (one GPU per rank, or ranks sharing GPUs)
  double gpu_memory_fraction = 0.9;  // cuda: of each GPU's memory, weights and KV included
  std::string weight_dtype = "auto";  // weight matrices in memory (and cuda's GEMM inputs)
  std::string gemm_dtype = "f32";     // cpu: inputs of prefill-sized products with bf16 weights
  bool no_cuda_graphs = false;        // cuda: run decode steps eagerly
};

void AddShardFlags(CLI::App* cmd, ShardFlags* flags);

void RegisterGenerate(CLI::App& app, int* exit_code);
void RegisterBench(CLI::App& app, int* exit_code);
void RegisterMakeModel(CLI::App& app, int* exit_code);
void RegisterConvertLlama2c(CLI::App& app, int* exit_code);
void RegisterServe(CLI::App& app, int* exit_code);
void RegisterClient(CLI::App& app, int* exit_code);
void RegisterTokenize(CLI::App& app, int* exit_code);
void RegisterPerplexity(CLI::App& app, int* exit_code);

}  // namespace kvshard
