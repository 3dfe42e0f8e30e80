// What one rank owns on the CPU: its weight slice, its KV pool and the workspace of a step. The
// forward itself is shard/layer_program.h's; this backend supplies its ops (kernels/cpu). It
// knows its local head counts, never request state.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "plan/step_plan.h"
#include "shard/block_tables.h"
#include "shard/kv_eviction_pass.h"
#include "shard/kv_pool.h"
#include "shard/model_config.h"
#include "shard/shard_backend.h"
#include "shard/step_inputs.h"
#include "shard/thread_tuner.h"
#include "shard/tp_layout.h"
#include "shard/weights.h"
#include "transport/communicator.h"

namespace kvshard {

struct ShardOptions {
  int64_t num_blocks = 0;        // KV blocks per layer on every rank
  int64_t block_size = 16;       // tokens per KV block (of one seq shard's pool)
  int seq_shards = 1;            // seq shards per head group (shard/tp_layout.h)
  DType kv_dtype = DType::kF32;  // KV cache storage
  // The weight matrices' dtype in memory; unset: each keeps its stored dtype (shard/weights.h).
  std::optional<DType> weight_dtype;
  int64_t max_tokens_per_step = 512;  // workspace size: the most tokens one step may carry
  int64_t max_seqs = 256;             // block table slots: sequences running at once
  // Prefill-sized products with bf16 or f16 weight matrices take bf16 inputs (kernels/cpu/gemm.h's
  // gemm_bf16_inputs: the activations rounded to bf16); false: f32 inputs, the weights widened.
  bool bf16_gemm_inputs = false;
  int tune_threads = 0;  // > 0: pick the OpenMP team size in 1..tune_threads by measurement
                         // while decoding (shard/thread_tuner.h); 0: leave it as it is
};

class ShardModel : public ShardBackend {
 public:
  // Loads this rank's slice of the model in `model_dir` and allocates its KV pool and workspace.
  // `comm` joins the ranks of the tensor-parallel group and must outlive the model.
  static StatusOr<std::unique_ptr<ShardModel>> Load(const std::string& model_dir,
                                                    const ModelConfig& config,
                                                    const ShardOptions& options,
                                                    Communicator* comm);

  // Runs one step. Every rank of the group calls it with the same plan. On rank 0, `logits`
  // receives f32 [plan.logits_rows.size(), vocab_size]; on other ranks it is left alone.
  Status Forward(const StepPlan& plan, std::vector<float>* logits) override;

  const ModelConfig& config() const override { return config_; }
  const TpLayout& layout() const override { return layout_; }
  const ShardOptions& options() const { return options_; }
  const ShardWeights& weights() const { return weights_; }
  const KvPoolShape& kv_shape() const { return kv_->shape(); }
  Communicator& comm() override { return *comm_; }
  int64_t num_blocks() const override { return options_.num_blocks; }
  int64_t block_size() const override { return options_.block_size; }
  int64_t max_tokens_per_step() const override { return options_.max_tokens_per_step; }
  int64_t max_seqs() const override { return options_.max_seqs; }
  int64_t weight_bytes() const override { return weights_.bytes(); }
  std::string weight_dtype() const override { return weights_.matrix_dtypes(); }
  int64_t decode_read_bytes() const override { return weights_.decode_read_bytes(); }
  int64_t kv_bytes_per_token() const override { return kv_->shape().bytes_per_token(); }
  int64_t kv_bytes() const override { return kv_->shape().total_bytes(); }
  bool supports_kv_eviction() const override { return true; }

 private:
  template <typename KV>
  friend class CpuOps;
  ShardModel() = default;

  ModelConfig config_;
  TpLayout layout_;
  ShardOptions options_;
  ShardWeights weights_;
  std::unique_ptr<KvPool> kv_;
  BlockTables tables_;                  // the running sequences' block tables, kept between steps
  std::unique_ptr<ThreadTuner> tuner_;  // when options.tune_threads > 0
  Communicator* comm_ = nullptr;
  std::vector<float> inv_freq_;  // f32 [head_dim / 2]
  // Attention sinks (config.streaming()): the sinks' query rows, their positions and RoPE shift,
  // and both parts' outputs and log-sum-exps before the merge.
  std::vector<float> sink_q_, sink_parts_;
  std::vector<int32_t> sink_pos_;
  EvictionQueries evict_q_;  // KV eviction in this step: the windows' queries

  // Workspace, sized once for max_tokens_per_step (no allocation in the step).
  std::vector<float> x_;             // f32 [T, dim] residual stream
  std::vector<float> xn_;            // f32 [T, dim] normalised
  std::vector<float> q_;             // f32 [T, q_heads, head_dim]
  std::vector<float> k_;             // f32 [T, kv_heads, head_dim]
  std::vector<float> v_;             // f32 [T, kv_heads, head_dim]
  std::vector<float> att_;           // f32 [T, q_heads, head_dim] then the lse [T, q_heads]
  std::vector<float> att_parts_;     // f32 [seq_shards][att_] every shard's, gathered
  std::vector<float> att_merged_;    // f32 [T, o_cols] the merged columns this rank feeds to wo
  std::vector<float> gate_;          // f32 [T, ffn]
  std::vector<float> up_;            // f32 [T, ffn]
  std::vector<float> partial_;       // f32 [T, dim] this rank's share before the all-reduce
  std::vector<float> rows_;          // f32 [T, dim] the final-normed rows that get logits
  std::vector<float> local_logits_;  // f32 [T, vocab_slice]
  std::vector<float> gathered_;      // f32 [T * vocab] rank-major, on rank 0
  StepInputsLayout inputs_layout_;
  std::vector<std::byte> inputs_;  // the step's inputs (shard/step_inputs.h)
  StagedStep staged_;
  std::vector<int> gather_counts_;  // [tp] floats each rank sends in the logits gather
};

}  // namespace kvshard
