// One serving request as the handler threads and the engine thread share it. The engine thread
// is the only writer of everything under `mu` except cancel_requested; handler threads read a
// consistent snapshot under the lock and wait on `cv` for news.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "coordinator/sampler.h"

namespace kvshard {

using Clock = std::chrono::steady_clock;

// A request after tokenisation and validation: everything the engine needs, nothing of Thrift.
struct RequestSpec {
  std::vector<int32_t> prompt;  // token ids, BOS included when wanted
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;          // generation ends at any of these (the id not emitted)
  std::vector<std::string> stop_strings;  // or before any of these strings
  std::string cache_salt;                 // prefix-cache tenant; equal salts may share blocks
  // false: recompute the whole sequence every step (to measure what the cache buys); such a
  // sequence neither uses nor fills the prefix cache.
  bool use_kv_cache = true;
  bool ignore_eos = false;  // the model's EOS ids do not end generation (benchmarks, tests)
  // Also return the log-probability of every prompt token after the first, given those before
  // it (teacher forcing: `kvshard perplexity`), from the logits of the prefill steps. Such a
  // request computes its whole prompt (no prefix-cache hits: cached positions have no logits),
  // and may have max_tokens 0 (it ends when its prompt is computed).
  bool prompt_logprobs = false;
  // KV eviction (SnapKV, plan/kv_eviction.h): > 0 compresses the KV of the prompt (of its first
  // evict_at tokens when evict_at > 0) to kv_budget positions per KV head and layer once it is
  // computed; the tokens after it are cached in full. A prompt within the budget is untouched.
  // Such a request neither uses nor fills the prefix cache.
  int64_t kv_budget = 0;
  int64_t evict_at = 0;  // `kvshard perplexity`: compress this prefix, score the tokens after it
};

enum class RequestState { kQueued, kPrefill, kDecode, kFinished };
const char* RequestStateName(RequestState state);

struct RequestTimings {
  double queue_ms = 0;
  double ttft_ms = 0;
  double per_token_ms = 0;
  double total_ms = 0;
};

struct RequestStream {
  int64_t id = 0;
  Clock::time_point accepted;
  std::atomic<bool> cancel_requested{false};

  mutable std::mutex mu;
  std::condition_variable cv;
  // Guarded by mu.
  RequestState state = RequestState::kQueued;
  std::string prompt_text;  // valid UTF-8
  int64_t prompt_tokens = 0;
  int64_t prefilled_tokens = 0;  // prompt tokens whose KV is computed
  int64_t cached_tokens = 0;     // of those, served from the prefix cache
  std::vector<int32_t> tokens;   // generated ids
  std::vector<size_t> text_end;  // [tokens.size()] length of `text` once token i was added
  std::string text;              // shown completion text, valid UTF-8
  bool finished = false;
  bool delivered = false;     // a client has seen the end (or is gone)
  std::string finish_reason;  // "stop", "length", "cancelled", "error"
  std::string error;          // why, for "error"
  int64_t preemptions = 0;
  // kv_budget > 0: the prompt positions each KV head keeps (the budget once evicted, the whole
  // prompt when it fits the budget; 0 before its prompt is computed); -1 without a budget.
  int64_t kv_positions_kept = -1;
  std::vector<float> prompt_logprobs;  // spec.prompt_logprobs: [prompt_tokens - 1], when finished
  RequestTimings timings;
  Clock::time_point finished_at;
};

}  // namespace kvshard
