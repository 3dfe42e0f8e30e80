// The device twin of shard/shard_model.h: one rank's weight slice, KV pool and workspaces on its
// GPU. The forward is shard/layer_program.h's, the same program as the CPU backend's; this
// backend supplies its ops (kernels/cuda and cuBLAS), fusing each residual add with the next
// norm.
//
// Everything is allocated in Create: weights, workspaces for max_tokens_per_step, the plan
// staging buffers, and then the KV pool from what memory_fraction leaves (or exactly num_blocks).
// A step copies its plan to the device in one transfer, enqueues every kernel on comm->stream(),
// and waits once, through comm->Synchronize() (bounded: never hangs on a dead peer). Decode
// steps (one token per sequence) are captured into a CUDA graph per batch-size bucket and
// replayed, when the communicator is capturable and the stream is not the legacy default stream.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/cuda/device_buffer.h"
#include "common/status.h"
#include "kernels/cuda/gemm.h"
#include "plan/step_plan.h"
#include "shard/block_tables.h"
#include "shard/cuda/device_step_plan.h"
#include "shard/cuda/device_weights.h"
#include "shard/dtype.h"
#include "shard/kv_eviction_pass.h"
#include "shard/model_config.h"
#include "shard/shard_backend.h"
#include "shard/tp_layout.h"
#include "shard/weights.h"
#include "transport/cuda/device_communicator.h"

namespace kvshard::cuda {

struct CudaShardOptions {
  int64_t num_blocks = 0;             // KV blocks per layer; 0: as many as memory_fraction allows
  double memory_fraction = 0.9;       // of the device's memory this process may hold in all
                                      // (the runtime divides it among ranks sharing a GPU)
  int64_t block_size = 16;            // tokens per KV block (of one seq shard's pool)
  int seq_shards = 1;                 // seq shards per head group (shard/tp_layout.h)
  DType kv_dtype = DType::kBF16;      // KV cache storage
  DType weight_dtype = DType::kBF16;  // GEMM inputs: bf16, f16 or f32 (exact and slow)
  int64_t max_tokens_per_step = 512;  // workspace size: the most tokens one step may carry
  int64_t max_seqs = 256;             // block table slots: sequences running at once
  bool cuda_graphs = true;            // replay decode steps from graphs
};

class CudaShardModel : public ShardBackend {
 public:
  // Uploads this rank's slice (`weights`, laid out by MakeTpLayout(config, comm->size(),
  // comm->rank(), options.seq_shards)) to the current device and allocates everything. Not
  // collective: the ranks then agree on a block count, the minimum of num_blocks() over ranks, and
  // the coordinator hands out only that many. `comm` must outlive the model.
  static StatusOr<std::unique_ptr<CudaShardModel>> Create(const ModelConfig& config,
                                                          const ShardWeights& weights,
                                                          const CudaShardOptions& options,
                                                          DeviceCommunicator* comm);
  // Reads the rank's slice from `model_dir` (shard/weights.h), then Create.
  static StatusOr<std::unique_ptr<CudaShardModel>> Load(const std::string& model_dir,
                                                        const ModelConfig& config,
                                                        const CudaShardOptions& options,
                                                        DeviceCommunicator* comm);
  ~CudaShardModel() override;
  CudaShardModel(const CudaShardModel&) = delete;
  CudaShardModel& operator=(const CudaShardModel&) = delete;

  // Collective, after every rank's Create succeeded (AgreeOnStatus): lowers every rank's
  // num_blocks() to the smallest over the ranks, the count the block manager may hand out.
  Status AgreeOnBlocks();

  // Runs one step, exactly as ShardModel::Forward: every rank of the group calls it with the same
  // plan; on rank 0 `logits` receives f32 [plan.logits_rows.size(), vocab_size].
  Status Forward(const StepPlan& plan, std::vector<float>* logits) override;

  const ModelConfig& config() const override { return config_; }
  const TpLayout& layout() const override { return layout_; }
  const CudaShardOptions& options() const { return options_; }
  DeviceCommunicator& comm() override { return *comm_; }
  int64_t num_blocks() const override { return num_blocks_; }  // usable KV blocks per layer
  int64_t block_size() const override { return options_.block_size; }
  int64_t max_tokens_per_step() const override { return options_.max_tokens_per_step; }
  int64_t max_seqs() const override { return options_.max_seqs; }
  int64_t weight_bytes() const override { return weights_.bytes; }
  std::string weight_dtype() const override { return DTypeName(weights_.dtype); }
  int64_t decode_read_bytes() const override;
  int64_t kv_bytes_per_token() const override;
  int64_t kv_bytes() const override { return static_cast<int64_t>(kv_.bytes()); }
  size_t graphs() const { return graphs_.size(); }  // decode graphs captured so far
  bool supports_kv_eviction() const override { return true; }

 private:
  template <typename Act, typename KV>
  friend class CudaOps;
  CudaShardModel() = default;
  Status AllocateWorkspaces();
  Status AllocateKv();
  // Host tables sized for num_blocks_, and their device rows with the scratch row written.
  Status CreateTables();
  // Copies the table entries `plan` appended (already applied to tables_) to the device rows.
  Status UploadAppends(const StepPlan& plan);
  // Enqueues the whole step (embedding to logits on rank 0's pinned buffer) on the stream.
  Status Enqueue(const StepShape& shape);
  template <typename Act, typename KV>
  Status EnqueueStep(const StepShape& shape);
  // Replays the bucket's graph: the first step of a bucket runs eagerly (warming cuBLAS and
  // NCCL up), the second captures the graph, later ones only launch it.
  Status RunDecodeGraph(const StepShape& shape);
  // KV eviction after a step whose chunks end evicted prompts (shard/kv_eviction_pass.h): each
  // layer of each sequence through a host copy of its blocks, the compacted ones copied back.
  template <typename KV>
  Status Evict(const StepPlan& plan);
  Status EvictAny(const StepPlan& plan);
  template <typename KV>
  KV* KvLayer(int64_t layer, int which) const {  // which: 0 = K, 1 = V
    return reinterpret_cast<KV*>(static_cast<std::byte*>(kv_.get()) +
                                 (2 * layer + which) * kv_layer_bytes_);
  }
  // A quantized cache's row scales, f32 [(num_blocks + 1) * block_size, kv_heads]; else nullptr.
  float* KvScale(int64_t layer, int which) const;

  ModelConfig config_;
  TpLayout layout_;
  CudaShardOptions options_;
  DeviceCommunicator* comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool use_graphs_ = false;
  StageConfig stage_;
  std::unique_ptr<CublasHandle> blas_;
  DeviceWeights weights_;
  DeviceBuffer inv_freq_;  // f32 [head_dim / 2]

  int64_t num_blocks_ = 0;           // usable; the pool holds one more, the scratch block
  size_t free_at_start_ = 0;         // device memory free before this model allocated anything
  size_t kv_layer_bytes_ = 0;        // one layer's K (or V): (num_blocks + 1) * block_size * row
  size_t kv_scale_layer_bytes_ = 0;  // one layer's K (or V) scales (quantized dtypes), after all
  DeviceBuffer
      kv_;  // kv_dtype [layers][K, V][num_blocks + 1, block_size, kv_heads, hd], then
            // (quantized) f32 scales [layers][K, V][(num_blocks + 1) * block_size, kv_heads]

  // Workspace, sized once for T = max_tokens_per_step (Act: the weight dtype).
  DeviceBuffer x_;              // f32 [T, dim] residual stream
  DeviceBuffer xn_;             // Act [T, dim] normalised
  DeviceBuffer q_;              // f32 [T, q_heads, head_dim]
  DeviceBuffer k_;              // f32 [T, kv_heads, head_dim]
  DeviceBuffer v_;              // f32 [T, kv_heads, head_dim]
  DeviceBuffer att_;            // f32 [T, q_heads, head_dim] then the lse [T, q_heads]
  DeviceBuffer att_parts_;      // f32 [seq_shards][att_] every shard's, gathered (seq shards)
  DeviceBuffer att_merged_;     // f32 [T, o_cols] the merged columns this rank feeds to wo
  DeviceBuffer sink_q_;         // f32 [T, q_heads, head_dim] queries rotated back (sinks)
  DeviceBuffer sink_parts_;     // f32 [sinks, window][att_] the two parts before their merge
  DeviceBuffer sink_pos_;       // int32 [2][T] the sinks' last position, the queries' shift
  DeviceBuffer att_act_;        // Act [T, q_heads, head_dim] (not for f32 weights)
  DeviceBuffer partial_;        // f32 [T, dim] this rank's share before the all-reduce
  DeviceBuffer gate_;           // f32 [T, ffn]
  DeviceBuffer up_;             // f32 [T, ffn]
  DeviceBuffer act_;            // Act [T, ffn]
  DeviceBuffer rows_;           // f32 [T, dim] the logits rows of xn
  DeviceBuffer rows_act_;       // Act [T, dim] (not for f32 weights)
  DeviceBuffer local_logits_;   // f32 [T, vocab_slice]
  DeviceBuffer gathered_;       // f32 [T * vocab] rank-major, on rank 0 when tp > 1
  DeviceBuffer attention_ws_;   // f32 split-K partials of the largest decode step
  BlockTables tables_;          // the running sequences' block tables (host copy)
  DeviceBuffer tables_device_;  // int32 [max_seqs + 1, stride]: the same rows, plus scratch
  StepInputsLayout plan_layout_;
  StepShape shape_;           // the step being run (reused: no allocation per step)
  PinnedBuffer plan_host_;    // the step plan, staged
  DeviceBuffer plan_device_;  // its device mirror
  PinnedBuffer logits_host_;  // f32 [T * vocab] on rank 0
  std::vector<int> gather_counts_;

  EvictionQueries evict_q_;   // KV eviction in this step: the windows' queries (host)
  std::set<int64_t> warmed_;  // buckets that ran once eagerly
  std::map<int64_t, cudaGraphExec_t> graphs_;  // bucket -> its decode graph
};

}  // namespace kvshard::cuda
