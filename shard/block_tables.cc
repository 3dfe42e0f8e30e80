#include "shard/block_tables.h"

#include <algorithm>
#include <new>

#include "plan/kv_eviction.h"

namespace kvshard {

StatusOr<BlockTables> BlockTables::Create(const BlockTableShape& shape) {
  if (shape.slots <= 0 || shape.stride <= 0) {
    return InvalidArgument("block tables need positive slots ({}) and stride ({})", shape.slots,
                           shape.stride);
  }
  const std::string why = shape.geometry.Check(
      shape.num_blocks, shape.stride * shape.geometry.block_size * shape.geometry.seq_shards);
  if (!why.empty()) return InvalidArgument("block tables: {}", why);
  if (shape.slots * shape.stride > (int64_t{1} << 31) - 1) {
    return InvalidArgument("{} table slots of {} blocks do not fit 32-bit offsets", shape.slots,
                           shape.stride);
  }
  BlockTables t;
  t.shape_ = shape;
  try {
    t.tables_.assign(shape.slots * shape.stride, 0);
    t.lengths_.assign(shape.slots, 0);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough memory for {} block tables of {} blocks", shape.slots,
                             shape.stride);
  }
  return t;
}

Status BlockTables::Apply(const StepPlan& plan, int64_t vocab_size, int64_t max_tokens) {
  if (plan.kind == StepPlan::Kind::kShutdown) return Status::Ok();
  const int64_t R = static_cast<int64_t>(plan.released_slots.size());
  const int64_t U = static_cast<int64_t>(plan.append_slots.size());
  const int64_t A = static_cast<int64_t>(plan.append_blocks.size());
  const int64_t T = plan.num_tokens(), S = plan.num_seqs();
  auto bad_slot = [&](int64_t s) { return s < 0 || s >= shape_.slots; };
  for (int32_t s : plan.released_slots) {
    if (bad_slot(s))
      return InvalidArgument("released table slot {} outside [0, {})", s, shape_.slots);
  }
  if (static_cast<int64_t>(plan.append_indptr.size()) != U + 1) {
    return InvalidArgument("step plan appends to {} tables with {} index pointers", U,
                           plan.append_indptr.size());
  }
  if (plan.append_indptr.front() != 0 || plan.append_indptr.back() != A) {
    return InvalidArgument("step plan append pointers do not span its {} blocks", A);
  }
  for (int32_t b : plan.append_blocks) {
    if (b < 0 || b >= shape_.num_blocks) {
      return InvalidArgument("KV block {} outside [0, {})", b, shape_.num_blocks);
    }
  }
  // A slot's length after this plan: released first, then appended (each slot once).
  auto released = [&](int32_t slot) {
    for (int32_t r : plan.released_slots) {
      if (r == slot) return true;
    }
    return false;
  };
  for (int64_t u = 0; u < U; ++u) {
    const int32_t slot = plan.append_slots[u];
    if (bad_slot(slot)) return InvalidArgument("table slot {} outside [0, {})", slot, shape_.slots);
    const int32_t n = plan.append_indptr[u + 1] - plan.append_indptr[u];
    if (n < 0) return InvalidArgument("step plan appends a negative count to slot {}", slot);
    const int64_t before = released(slot) ? 0 : lengths_[slot];
    if (before + n > shape_.stride) {
      return InvalidArgument("table slot {} would hold {} blocks; a table holds at most {}", slot,
                             before + n, shape_.stride);
    }
    for (int64_t w = 0; w < u; ++w) {
      if (plan.append_slots[w] == slot) {
        return InvalidArgument("step plan appends to table slot {} twice", slot);
      }
    }
  }
  if (R > shape_.slots || U > shape_.slots) {
    return InvalidArgument("step plan changes more tables than there are slots");
  }
  // The step itself.
  if (T == 0 || T > max_tokens) {
    return InvalidArgument("step plan has {} tokens; a step takes 1..{}", T, max_tokens);
  }
  if (static_cast<int64_t>(plan.positions.size()) != T) {
    return InvalidArgument("step plan has {} positions for {} tokens", plan.positions.size(), T);
  }
  if (plan.qo_indptr.size() < 2 || static_cast<int64_t>(plan.seq_slots.size()) != S) {
    return InvalidArgument("step plan has inconsistent sequence counts");
  }
  if (plan.qo_indptr.front() != 0 || plan.qo_indptr.back() != T) {
    return InvalidArgument("step plan index pointers do not span its tokens");
  }
  for (int32_t t : plan.tokens) {
    if (t < 0 || t >= vocab_size) {
      return InvalidArgument("token id {} is outside the vocabulary [0, {})", t, vocab_size);
    }
  }
  for (int64_t s = 0; s < S; ++s) {
    const int32_t slot = plan.seq_slots[s];
    if (bad_slot(slot)) return InvalidArgument("sequence {} names table slot {}", s, slot);
    const int32_t q0 = plan.qo_indptr[s], q1 = plan.qo_indptr[s + 1];
    if (q1 <= q0 || q1 > T) return InvalidArgument("sequence {} has no tokens", s);
    int64_t len = released(slot) ? 0 : lengths_[slot];
    for (int64_t u = 0; u < U; ++u) {
      if (plan.append_slots[u] == slot) len += plan.append_indptr[u + 1] - plan.append_indptr[u];
    }
    for (int32_t t = q0; t < q1; ++t) {
      const int64_t p = plan.positions[t];
      if (!shape_.geometry.CoversEverywhere(len, p)) {
        return InvalidArgument("position {} of sequence {} is not covered by its {} KV blocks", p,
                               s, len);
      }
    }
  }
  for (int32_t r : plan.logits_rows) {
    if (r < 0 || r >= T) return InvalidArgument("logits row {} outside [0, {})", r, T);
  }
  if (!plan.rope_offsets.empty()) {
    if (static_cast<int64_t>(plan.rope_offsets.size()) != S) {
      return InvalidArgument("step plan has {} RoPE offsets for {} sequences",
                             plan.rope_offsets.size(), S);
    }
    for (int64_t s = 0; s < S; ++s) {
      const int64_t off = plan.rope_offsets[s];
      if (off < 0 || plan.positions[plan.qo_indptr[s + 1] - 1] + off > kMaxKvPositions) {
        return InvalidArgument("sequence {} has RoPE offset {} out of range", s, off);
      }
    }
  }
  if (plan.evict_keep.size() != plan.evict_seqs.size()) {
    return InvalidArgument("step plan evicts {} sequences with {} budgets", plan.evict_seqs.size(),
                           plan.evict_keep.size());
  }
  for (size_t e = 0; e < plan.evict_seqs.size(); ++e) {
    const int32_t s = plan.evict_seqs[e];
    if (s < 0 || s >= S) return InvalidArgument("evicted sequence {} outside [0, {})", s, S);
    for (size_t f = 0; f < e; ++f) {
      if (plan.evict_seqs[f] == s) return InvalidArgument("sequence {} evicted twice", s);
    }
    const int64_t keep = plan.evict_keep[e], rows = plan.qo_indptr[s + 1] - plan.qo_indptr[s];
    const int64_t length = plan.positions[plan.qo_indptr[s + 1] - 1] + 1;
    if (keep < 1 || keep >= length || SnapKvWindow(keep) > rows ||
        (!plan.rope_offsets.empty() && plan.rope_offsets[s] != 0)) {
      return InvalidArgument("sequence {} cannot keep {} of {} positions from a chunk of {} tokens",
                             s, keep, length, rows);
    }
  }
  // Valid: apply.
  for (int32_t s : plan.released_slots) lengths_[s] = 0;
  for (int64_t u = 0; u < U; ++u) {
    const int32_t slot = plan.append_slots[u];
    int32_t* row = tables_.data() + slot * shape_.stride;
    for (int32_t i = plan.append_indptr[u]; i < plan.append_indptr[u + 1]; ++i) {
      row[lengths_[slot]++] = plan.append_blocks[i];
    }
  }
  return Status::Ok();
}

void BlockTables::Truncate(int64_t slot, int64_t blocks) {
  lengths_[slot] = std::min(lengths_[slot], blocks);
}

void BlockTables::RowOffsets(const StepPlan& plan, int32_t* offsets) const {
  const int64_t S = plan.num_seqs();
  for (int64_t s = 0; s < S; ++s)
    offsets[s] = static_cast<int32_t>(plan.seq_slots[s] * shape_.stride);
  offsets[S] = S == 0 ? 0 : offsets[S - 1] + static_cast<int32_t>(shape_.stride);
}

void BlockTables::Slots(const StepPlan& plan, int64_t* slots) const {
  for (int64_t s = 0; s < plan.num_seqs(); ++s) {
    const int32_t* row = tables_.data() + plan.seq_slots[s] * shape_.stride;
    for (int32_t t = plan.qo_indptr[s]; t < plan.qo_indptr[s + 1]; ++t) {
      const int64_t p = plan.positions[t];
      slots[t] = shape_.geometry.Owns(p) ? shape_.geometry.Slot(row, p) : -1;
    }
  }
}

}  // namespace kvshard
