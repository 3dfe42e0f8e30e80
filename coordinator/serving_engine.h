// Rank 0's driver of the shards, the one request path: requests arrive from any thread
// (Submit/Cancel), the engine thread (the only one that talks to the other ranks) runs
// continuous-batching steps until told to stop (`kvshard serve`). `kvshard generate` and bench run
// the same steps for one request on their own thread (Generate).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/block_manager.h"
#include "coordinator/plan_builder.h"
#include "coordinator/request.h"
#include "coordinator/scheduler.h"
#include "coordinator/tokenizer.h"
#include "shard/shard_backend.h"

namespace kvshard {

struct ServingOptions {
  int64_t max_queue = 256;       // accepted but not yet running; beyond it Submit is Overloaded
  int64_t max_seqs = 64;         // sequences in one step
  double shutdown_grace_s = 10;  // on Stop: time in-flight requests get to finish
  int64_t keep_finished = 4096;  // finished requests kept for poll()
  double keep_finished_s = 300;
  // Tests only (KVSHARD_DEBUG_STEP_DELAY_MS): each step is slowed by this much, so that a test
  // can act while a request is queued, prefilling or decoding.
  int debug_step_delay_ms = 0;
};

// What status() and /metrics report; refreshed by the engine thread after every step.
struct EngineSnapshot {
  bool serving = true;
  std::string not_serving_reason;
  int64_t queue_depth = 0;
  int64_t running = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;
  int64_t kv_blocks_cached = 0;
  double tokens_per_second = 0;
  int64_t prefix_cache_hits = 0;
  int64_t prefix_cache_queries = 0;
  int64_t requests_finished = 0;
  int64_t requests_accepted = 0;
  int64_t preemptions = 0;
  int64_t generated_tokens = 0;
  double ttft_seconds_sum = 0;
  int64_t ttft_count = 0;
};

// One request run to its end by Generate.
struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids, the stop id excluded
  std::string finish_reason;    // "stop" or "length"
  double prefill_seconds = 0;   // the steps up to the first sampled token
  double decode_seconds = 0;    // every later step
  int64_t decode_steps = 0;     // sampling steps after the first
  // RequestSpec::prompt_logprobs: log p(prompt[i + 1] | prompt[..i]) for i < prompt size - 1.
  std::vector<float> prompt_logprobs;
  int64_t kv_positions_kept = -1;  // RequestStream::kv_positions_kept
};

class ServingEngine {
 public:
  // `model` is rank 0's shard; its communicator reaches every worker. `tokenizer` may be null
  // (models without one: benchmarks, tests); requests then have no text and no stop strings.
  ServingEngine(ShardBackend* model, const Tokenizer* tokenizer, ServingOptions options);

  // --- any thread ---
  // The one check of a request, before any rank sees it. InvalidArgument "FIELD: why" for a bad
  // field (ids outside the vocabulary, prompt or generation beyond the model's context, sampling
  // parameters, stop lists); OutOfRange when prompt + max_tokens can never fit the KV cache.
  Status Validate(const RequestSpec& spec) const;
  // Whether this model and backend can evict KV to `budget` (> 0): InvalidArgument "kv_budget:
  // why" when not (a backend without eviction, sliding windows, attention sinks).
  Status CheckKvBudget(int64_t budget) const;
  // Validates and queues. ResourceExhausted when the queue is full (overloaded), Unavailable
  // when not serving.
  StatusOr<std::shared_ptr<RequestStream>> Submit(RequestSpec spec);
  // nullptr for an unknown (or long forgotten) id.
  std::shared_ptr<RequestStream> Find(int64_t id) const;
  // True when this call cancels the request; false when it had already ended. NotFound if unknown.
  StatusOr<bool> Cancel(int64_t id);
  EngineSnapshot Snapshot() const;
  // True when every finished request's end has reached its client (or the client is gone): at
  // shutdown the server lingers until then, so no client loses its last answer.
  bool AllDelivered() const;
  int64_t kv_capacity_tokens() const { return kv_capacity_tokens_; }
  // Asks the loop to stop: no new requests, in-flight ones get the grace period, then are
  // cancelled. Async-signal-safe (an atomic store).
  void RequestStop() {
    stop_requested_.store(true);
    // A healthy step takes milliseconds; if one hangs now, a rank died (mpirun sends the same
    // signal when it tears the job down), and the clients must hear so before the job ends.
    model_->comm().ShortenDeadlines(1.0);
  }

  // --- the engine thread ---
  // Runs until RequestStop() and the drain that follows, or until a step fails (then every
  // in-flight request ends with an error and the error is returned).
  Status Run();
  // One scheduling step; false when there was nothing to do.
  StatusOr<bool> Step();
  // Runs one request to its end on the calling thread (instead of Run): Submit, then Step until
  // it finishes. on_token (may be empty) sees each generated id as soon as its step is done.
  // logits_trace, when given, receives the logits of every sampling step (for tests).
  StatusOr<GenerationResult> Generate(RequestSpec spec,
                                      const std::function<void(int32_t)>& on_token,
                                      std::vector<std::vector<float>>* logits_trace = nullptr);
  // Tells every worker to leave its loop; the last plan of a job.
  Status Shutdown();
  const BlockManager& blocks() const { return blocks_; }
  // Bytes broadcast for the last step plan (for a decode step: independent of the context).
  int64_t last_plan_bytes() const { return last_plan_bytes_; }

 private:
  void TakeInbox();
  void ApplyCancels();
  void Finish(Sequence* seq, const std::string& reason, const std::string& error);
  void FinishAll(const std::string& reason, const std::string& error);
  void Publish(Sequence* seq, RequestState state);
  void RefreshSnapshot();
  void ForgetOldRequests();

  ShardBackend* model_;
  const Tokenizer* tokenizer_;
  ServingOptions options_;
  int64_t kv_capacity_tokens_;
  // ModelConfig::KvReleaseWindow: > 0 when every layer slides, so a sequence's blocks before its
  // window are released as it runs (its KV memory is bounded by the window, not the context).
  int64_t release_window_;
  int64_t keep_tokens_;  // attention sinks: the leading positions whose blocks are never released
  std::vector<int32_t> eos_ids_;

  // Engine thread only.
  BlockManager blocks_;
  Scheduler scheduler_;
  PlanBuilder builder_;
  StepPlan plan_;
  std::vector<int32_t> payload_;                                   // the plan's wire form, reused
  std::vector<float> logits_;                                      // f32 [rows, vocab]
  std::deque<std::pair<Clock::time_point, int64_t>> token_times_;  // for tokens/s
  std::atomic<bool> stop_requested_{false};
  int64_t generated_total_ = 0;
  int64_t last_plan_bytes_ = 0;
  // Generate's test hook: the logits of every sampling step of request `trace_id_`.
  int64_t trace_id_ = 0;
  std::vector<std::vector<float>>* trace_ = nullptr;

  // Shared with the handler threads.
  mutable std::mutex mu_;
  std::condition_variable inbox_cv_;
  std::vector<std::unique_ptr<Sequence>> inbox_;
  int64_t queued_ = 0;  // inbox + waiting: what the queue bound counts
  int64_t next_id_ = 1;
  bool accepting_ = true;
  std::map<int64_t, std::shared_ptr<RequestStream>> requests_;  // live and recently finished
  EngineSnapshot snapshot_;
};

}  // namespace kvshard
