// Rank 0's driver of the shards: turns a generation request into step plans (chunked prefill,
// then one decode step per token), samples, and keeps the KV block tables.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/block_manager.h"
#include "coordinator/plan_builder.h"
#include "coordinator/sampler.h"
#include "shard/shard_backend.h"

namespace kvshard {

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, BOS included when wanted
  int64_t max_tokens = 16;      // tokens to generate at most
  SamplingParams sampling;
  bool use_kv_cache = true;       // false: recompute the whole sequence every step
  std::vector<int32_t> stop_ids;  // generation ends (the id not emitted) at any of these
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids, the stop id excluded
  std::string finish_reason;    // "stop" or "length"
  double prefill_seconds = 0;   // prompt forward, up to the first sampled token
  double decode_seconds = 0;    // every later step
  int64_t decode_steps = 0;
};

class Engine {
 public:
  // `model` is rank 0's shard; its communicator reaches every worker.
  explicit Engine(ShardBackend* model);

  // Everything checked before any rank sees the request: ids within the vocabulary, prompt and
  // generation within the context, sampling parameters, KV capacity.
  Status Validate(const GenerationRequest& request) const;

  // Runs the request to the end. on_token (may be empty) sees each generated id as it is
  // chosen. logits_trace, when given, receives the logits of every sampling step (for tests).
  StatusOr<GenerationResult> Generate(const GenerationRequest& request,
                                      const std::function<void(int32_t)>& on_token,
                                      std::vector<std::vector<float>>* logits_trace = nullptr);

  // Tells every worker to leave its loop.
  Status Shutdown();

  const BlockManager& blocks() const { return blocks_; }
  // Bytes broadcast for the last step plan (for a decode step: independent of the context).
  int64_t last_plan_bytes() const { return last_plan_bytes_; }
  ShardBackend& model() { return *model_; }

 private:
  // Runs positions [begin, end) of `tokens` (cache mode) and returns the last token's logits.
  Status RunSpan(int64_t seq, const std::vector<int32_t>& tokens, int64_t begin, int64_t end,
                 bool want_logits, std::vector<float>* logits);

  ShardBackend* model_;
  BlockManager blocks_;
  PlanBuilder builder_;
  int64_t next_seq_ = 0;
  StepPlan plan_;
  std::vector<int32_t> payload_;  // the plan's wire form, reused
  int64_t last_plan_bytes_ = 0;
};

}  // namespace kvshard
