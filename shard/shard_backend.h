// What the coordinator and the worker loop need of one rank's shard, whatever it runs on: the
// CPU ShardModel (shard/shard_model.h) or the CUDA one (shard/cuda/cuda_shard_model.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "plan/step_plan.h"
#include "shard/model_config.h"
#include "shard/tp_layout.h"
#include "transport/communicator.h"

namespace kvshard {

class ShardBackend {
 public:
  virtual ~ShardBackend() = default;

  // Runs one step. Every rank of the group calls it with the same plan. On rank 0, `logits`
  // receives f32 [plan.logits_rows.size(), vocab_size]; on other ranks it is left alone.
  virtual Status Forward(const StepPlan& plan, std::vector<float>* logits) = 0;

  virtual const ModelConfig& config() const = 0;
  virtual const TpLayout& layout() const = 0;
  // The group's communicator; its control plane (Broadcast, liveness) is host memory over MPI.
  virtual Communicator& comm() = 0;
  virtual int64_t num_blocks() const = 0;  // KV blocks per layer the block manager may hand out
  virtual int64_t block_size() const = 0;  // tokens per block of one seq shard's pool
  // Tokens one block id covers: the same id is a block in every seq shard's pool, so one logical
  // block of the block manager is block_size() x seq_shards positions (plan/paged_kv.h).
  int64_t logical_block_size() const { return block_size() * layout().seq_shards; }
  // One request's KV capacity in tokens: every block id, on every seq shard of its group.
  int64_t request_capacity_tokens() const { return num_blocks() * logical_block_size(); }
  virtual int64_t max_tokens_per_step() const = 0;
  virtual int64_t max_seqs() const = 0;      // block table slots: sequences that may run at once
  virtual int64_t weight_bytes() const = 0;  // this rank's weights in memory
  // The dtypes its weight matrices are held in: "BF16", or "F32+BF16" when they differ.
  virtual std::string weight_dtype() const = 0;
  virtual int64_t decode_read_bytes() const = 0;   // what one decode step reads of them
  virtual int64_t kv_bytes_per_token() const = 0;  // this rank's KV bytes for one token
  virtual int64_t kv_bytes() const = 0;            // this rank's whole KV pool
  // Whether Forward runs plans that evict KV (StepPlan::evict_seqs, rope_offsets).
  virtual bool supports_kv_eviction() const { return false; }
};

}  // namespace kvshard
