#include "coordinator/scheduler.h"

#include <algorithm>

#include "plan/kv_eviction.h"

namespace kvshard {

void Scheduler::Preempt(size_t index) {
  std::unique_ptr<Sequence> s = std::move(running_[index]);
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(index));
  blocks_->Free(s->id());
  s->computed = 0;
  s->evicted = false;
  s->shift = 0;
  ++s->preemptions;
  waiting_.push_front(std::move(s));
}

ScheduledChunk Scheduler::ChunkOf(Sequence* s, int64_t begin, int64_t n) {
  const int64_t total = static_cast<int64_t>(s->tokens.size());
  int64_t end = begin + n;
  bool evict = false;
  if (s->evicts() && !s->evicted && begin < s->evict_point()) {
    const int64_t at = s->evict_point(), window = SnapKvWindow(s->spec.kv_budget);
    if (end >= at) {
      end = at;
      evict = true;
    } else if (end > at - window) {
      end = std::max(begin, at - window);
    }
  }
  return {s, begin, end, end == total, evict};
}

std::vector<ScheduledChunk> Scheduler::Schedule(std::vector<Sequence*>* preempted) {
  std::vector<ScheduledChunk> out;
  int64_t budget = limits_.max_tokens_per_step;
  // Running sequences, oldest first; the youngest give way when blocks run out.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i].get();
    const int64_t total = static_cast<int64_t>(s->tokens.size());
    const ScheduledChunk c = ChunkOf(s, s->computed, std::min(total - s->computed, budget));
    if (c.end == c.begin) {  // waits for a budget that holds its observation window
      ++i;
      continue;
    }
    bool ok = blocks_->EnsureCapacity(s->id(), c.end - s->shift).ok();
    while (!ok && running_.size() > i + 1) {
      preempted->push_back(running_.back().get());
      Preempt(running_.size() - 1);
      ok = blocks_->EnsureCapacity(s->id(), c.end - s->shift).ok();
    }
    if (!ok) {
      // Only reachable for a sequence that is not the oldest: with everything younger gone and
      // nothing admitted, the oldest always fits (requests that cannot fit alone are refused).
      preempted->push_back(s);
      Preempt(i);
      break;
    }
    out.push_back(c);
    budget -= c.end - c.begin;
    ++i;
  }
  // Admission in arrival order (preempted sequences first), while blocks and budget last.
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < limits_.max_seqs) {
    Sequence* s = waiting_.front().get();
    const int64_t total = static_cast<int64_t>(s->tokens.size());
    // Share what the prefix cache holds (not in recompute mode); at least one token is left to
    // compute for the logits.
    const int64_t matched =
        s->spec.use_kv_cache && !s->spec.prompt_logprobs && !s->evicts()
            ? blocks_->MatchPrefix(s->id(), s->tokens.data(), total - 1, s->spec.cache_salt)
            : 0;
    const ScheduledChunk c = ChunkOf(s, matched, std::min(total - matched, budget));
    if (c.end == c.begin || !blocks_->EnsureCapacity(s->id(), c.end).ok()) {
      blocks_->Free(s->id());
      break;
    }
    s->computed = matched;
    if (!s->admitted_before) s->cached_tokens = std::min(matched, s->prompt_len());
    s->admitted_before = true;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    out.push_back(c);
    budget -= c.end - c.begin;
  }
  return out;
}

std::unique_ptr<Sequence> Scheduler::Remove(Sequence* seq) {
  std::unique_ptr<Sequence> out;
  auto same = [seq](const std::unique_ptr<Sequence>& p) { return p.get() == seq; };
  if (auto it = std::find_if(running_.begin(), running_.end(), same); it != running_.end()) {
    out = std::move(*it);
    running_.erase(it);
  } else if (auto w = std::find_if(waiting_.begin(), waiting_.end(), same); w != waiting_.end()) {
    out = std::move(*w);
    waiting_.erase(w);
  }
  if (out) blocks_->Free(out->id());
  return out;
}

}  // namespace kvshard
