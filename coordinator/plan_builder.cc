#include "coordinator/plan_builder.h"

#include <algorithm>

namespace kvshard {

PlanBuilder::PlanBuilder(int64_t slots) {
  for (int64_t s = slots - 1; s >= 0; --s) free_slots_.push_back(static_cast<int32_t>(s));
}

void PlanBuilder::Begin(StepPlan* plan) {
  plan->Clear();
  // Slots released before this plan may be reused in it: the ranks empty them first.
  free_slots_.insert(free_slots_.end(), released_.begin(), released_.end());
  plan->released_slots.swap(released_);
  released_.clear();
  plan->append_indptr.push_back(0);
  plan->qo_indptr.push_back(0);
}

Status PlanBuilder::Add(StepPlan* plan, int64_t seq, const std::vector<int32_t>& table,
                        int64_t blocks_needed, const int32_t* tokens, int64_t begin, int64_t end,
                        int64_t logits_from, int64_t shift) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) {
    if (free_slots_.empty()) {
      return ResourceExhausted("every block table slot is taken ({} sequences running)",
                               seqs_.size());
    }
    it = seqs_.emplace(seq, Entry{free_slots_.back(), 0}).first;
    free_slots_.pop_back();
  }
  Entry& e = it->second;
  if (blocks_needed > static_cast<int64_t>(table.size())) {
    return Internal("sequence {} needs {} KV blocks but its table has {}", seq, blocks_needed,
                    table.size());
  }
  if (blocks_needed > e.sent) {
    plan->append_slots.push_back(e.slot);
    plan->append_blocks.insert(plan->append_blocks.end(), table.begin() + e.sent,
                               table.begin() + blocks_needed);
    plan->append_indptr.push_back(static_cast<int32_t>(plan->append_blocks.size()));
    e.sent = blocks_needed;
  }
  for (int64_t p = begin; p < end; ++p) {
    plan->tokens.push_back(tokens[p]);
    plan->positions.push_back(static_cast<int32_t>(p - shift));
  }
  // RoPE offsets only once a sequence of the step has one (the earlier ones' are 0).
  if (shift != 0 || !plan->rope_offsets.empty()) {
    plan->rope_offsets.resize(plan->seq_slots.size(), 0);
    plan->rope_offsets.push_back(static_cast<int32_t>(shift));
  }
  plan->qo_indptr.push_back(static_cast<int32_t>(plan->tokens.size()));
  plan->seq_slots.push_back(e.slot);
  const int64_t first = static_cast<int64_t>(plan->tokens.size()) - (end - begin);
  for (int64_t p = std::max(logits_from, begin); p < end; ++p) {
    plan->logits_rows.push_back(static_cast<int32_t>(first + (p - begin)));
  }
  return Status::Ok();
}

void PlanBuilder::Truncate(int64_t seq, int64_t blocks) {
  auto it = seqs_.find(seq);
  if (it != seqs_.end()) it->second.sent = std::min(it->second.sent, blocks);
}

void PlanBuilder::Release(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  released_.push_back(it->second.slot);  // free again from the next plan on
  seqs_.erase(it);
}

}  // namespace kvshard
