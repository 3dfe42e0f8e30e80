#include "shard/step_inputs.h"

#include <algorithm>

namespace kvshard {
namespace {

size_t Place(size_t* offset, size_t bytes) {
  const size_t at = *offset;
  *offset = (at + bytes + 255) / 256 * 256;
  return at;
}

}  // namespace

StepInputsLayout StepInputsLayout::Make(int64_t max_tokens) {
  StepInputsLayout l;
  l.max_tokens = max_tokens;
  const size_t n = static_cast<size_t>(max_tokens);
  size_t at = 0;
  l.slots = Place(&at, n * sizeof(int64_t));
  l.tokens = Place(&at, n * sizeof(int32_t));
  l.positions = Place(&at, n * sizeof(int32_t));
  l.rope_positions = Place(&at, n * sizeof(int32_t));
  l.token_seq = Place(&at, n * sizeof(int32_t));
  l.tiles = Place(&at, (n + 1) * sizeof(int32_t));
  l.block_indptr = Place(&at, (n + 1) * sizeof(int32_t));
  l.logits_rows = Place(&at, n * sizeof(int32_t));
  l.bytes = at;
  return l;
}

StepInputs StepInputs::At(void* base, const StepInputsLayout& l) {
  auto* b = static_cast<std::byte*>(base);
  return {reinterpret_cast<int64_t*>(b + l.slots),
          reinterpret_cast<int32_t*>(b + l.tokens),
          reinterpret_cast<int32_t*>(b + l.positions),
          reinterpret_cast<int32_t*>(b + l.rope_positions),
          reinterpret_cast<int32_t*>(b + l.token_seq),
          reinterpret_cast<int32_t*>(b + l.tiles),
          reinterpret_cast<int32_t*>(b + l.block_indptr),
          reinterpret_cast<int32_t*>(b + l.logits_rows)};
}

int64_t DecodeBucket(int64_t seqs, int64_t max_tokens) {
  int64_t bucket = 1;
  while (bucket < seqs) bucket *= 2;
  return std::min(bucket, max_tokens);
}

Status StageStepInputs(const StepPlan& plan, const BlockTables& tables,
                       const StepInputsLayout& layout, const StepPadding& padding, void* host_base,
                       StagedStep* out) {
  const int64_t T = plan.num_tokens(), S = plan.num_seqs();
  StagedStep& step = *out;
  step.real_tokens = T;
  step.decode = T == S;
  step.padded = step.decode && padding.pad_decode;
  step.tokens = step.padded ? DecodeBucket(T, layout.max_tokens) : T;
  const int64_t pad = step.tokens - T;
  if (T > layout.max_tokens || step.tokens > layout.max_tokens) {
    return InvalidArgument("step of {} tokens exceeds the workspace of {}", T, layout.max_tokens);
  }
  const StepInputs v = StepInputs::At(host_base, layout);
  std::copy(plan.tokens.begin(), plan.tokens.end(), v.tokens);
  std::copy(plan.positions.begin(), plan.positions.end(), v.positions);
  tables.RowOffsets(plan, v.block_indptr);
  tables.Slots(plan, v.slots);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t off = plan.rope_offsets.empty() ? 0 : plan.rope_offsets[s];
    for (int32_t t = plan.qo_indptr[s]; t < plan.qo_indptr[s + 1]; ++t) {
      v.token_seq[t] = static_cast<int32_t>(s);
      v.rope_positions[t] = plan.positions[t] + off;
    }
  }
  const int32_t scratch_row =
      static_cast<int32_t>(static_cast<int64_t>(padding.scratch_slot) * tables.shape().stride);
  for (int64_t i = 0; i < pad; ++i) {  // padding: a one-token sequence on the scratch block
    const int64_t t = T + i, s = S + i;
    v.tokens[t] = 0;
    v.positions[t] = 0;
    v.rope_positions[t] = 0;
    v.token_seq[t] = static_cast<int32_t>(s);
    v.slots[t] = tables.shape().geometry.SlotOf(padding.scratch_block, 0);
    v.block_indptr[s] = scratch_row;
  }

  // Logits: the requested rows, or every row of a padded step (its graph computes them all).
  const int64_t L = static_cast<int64_t>(plan.logits_rows.size());
  step.result_rows.resize(L);
  if (step.padded) {
    step.rows = step.tokens;
    for (int64_t t = 0; t < step.tokens; ++t) v.logits_rows[t] = static_cast<int32_t>(t);
    std::copy(plan.logits_rows.begin(), plan.logits_rows.end(), step.result_rows.begin());
  } else {
    step.rows = L;
    std::copy(plan.logits_rows.begin(), plan.logits_rows.end(), v.logits_rows);
    for (int64_t i = 0; i < L; ++i) step.result_rows[i] = static_cast<int32_t>(i);
  }
  step.upload_bytes = layout.logits_rows + static_cast<size_t>(step.rows) * sizeof(int32_t);
  return Status::Ok();
}

}  // namespace kvshard
