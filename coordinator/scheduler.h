// Continuous batching: which sequences run in the next step and how many tokens each computes.
//
// Every step the running sequences are served oldest first: a decoding sequence computes its one
// new token, a prefilling one a chunk of its prompt, all within a per-step token budget (so a
// long document never stalls the decoding of others for more than one chunk). Then waiting
// sequences are admitted in arrival order while the budget, the sequence limit and the free KV
// blocks allow; a new sequence first shares what the prefix cache holds of its prompt. When a
// running sequence cannot get the block it needs, the youngest running sequence is preempted: its
// blocks are freed and it goes back to the front of the queue, to be recomputed later from its
// prompt and the tokens it already generated (its sampler state is kept, so nothing it emitted
// changes). The oldest sequence is never preempted, so a request that fits the cache alone always
// finishes.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/block_manager.h"
#include "coordinator/request.h"
#include "coordinator/sampler.h"
#include "coordinator/text_stream.h"

namespace kvshard {

// The engine thread's state of one request.
struct Sequence {
  Sequence(std::shared_ptr<RequestStream> s, RequestSpec r, const Tokenizer* tokenizer)
      : stream(std::move(s)),
        spec(std::move(r)),
        tokens(spec.prompt),
        sampler(spec.sampling),
        text(tokenizer, spec.prompt.back(), spec.stop_strings) {}

  int64_t id() const { return stream->id; }
  int64_t prompt_len() const { return static_cast<int64_t>(spec.prompt.size()); }
  // KV eviction: the tokens whose KV is compressed once computed, and whether it happens.
  int64_t evict_point() const { return spec.evict_at > 0 ? spec.evict_at : prompt_len(); }
  bool evicts() const { return spec.kv_budget > 0 && evict_point() > spec.kv_budget; }

  std::shared_ptr<RequestStream> stream;
  RequestSpec spec;
  std::vector<int32_t> tokens;  // prompt + generated
  int64_t computed = 0;         // leading tokens whose KV is in the sequence's blocks
  // KV eviction: once evicted, the positions dropped; position p >= evict_point() is cached at
  // index p - shift (its blocks cover computed - shift entries).
  bool evicted = false;
  int64_t shift = 0;
  int64_t cached_tokens = 0;  // prompt tokens the prefix cache served (first admission)
  bool admitted_before = false;
  Sampler sampler;
  TextStream text;
  int64_t generated = 0;
  int64_t preemptions = 0;
  // spec.prompt_logprobs: log p(prompt[i + 1] | prompt[..i]) at [i], filled as prefill runs (a
  // preempted sequence's recompute writes the same entries again).
  std::vector<float> prompt_logprobs;
  Clock::time_point first_scheduled, first_token, last_token;
};

// One sequence's share of a step: positions [begin, end) of its tokens.
struct ScheduledChunk {
  Sequence* seq;
  int64_t begin;
  int64_t end;
  bool want_logits;    // end reaches the last known token: sample the next one
  bool evict = false;  // the chunk ends the sequence's evict_point(): compress its KV after it
};

struct SchedulerLimits {
  int64_t max_tokens_per_step = 512;
  int64_t max_seqs = 64;
};

class Scheduler {
 public:
  Scheduler(BlockManager* blocks, SchedulerLimits limits) : blocks_(blocks), limits_(limits) {}

  void Enqueue(std::unique_ptr<Sequence> seq) { waiting_.push_back(std::move(seq)); }
  // Plans the next step. Sequences preempted while planning are appended to `preempted` (they
  // are back in the queue).
  std::vector<ScheduledChunk> Schedule(std::vector<Sequence*>* preempted);
  // Takes a sequence out (finished or cancelled) and frees its blocks.
  std::unique_ptr<Sequence> Remove(Sequence* seq);

  const std::deque<std::unique_ptr<Sequence>>& waiting() const { return waiting_; }
  const std::vector<std::unique_ptr<Sequence>>& running() const { return running_; }
  bool idle() const { return waiting_.empty() && running_.empty(); }

 private:
  void Preempt(size_t index);
  // The chunk a sequence computes next from `begin` with `n` tokens of the step's budget: all n,
  // or for a sequence that still evicts, cut to end at its evict_point() exactly and so that the
  // chunk ending there holds the whole observation window. May be empty (begin: wait a step).
  static ScheduledChunk ChunkOf(Sequence* s, int64_t begin, int64_t n);

  BlockManager* blocks_;
  SchedulerLimits limits_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // oldest admission first
};

}  // namespace kvshard
