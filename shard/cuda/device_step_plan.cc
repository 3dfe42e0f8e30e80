#include "shard/cuda/device_step_plan.h"

#include <algorithm>
#include <cstring>

namespace kvshard::cuda {
namespace {

size_t Place(size_t* offset, size_t bytes) {
  const size_t at = *offset;
  *offset = (at + bytes + 255) / 256 * 256;
  return at;
}

}  // namespace

DevicePlanLayout DevicePlanLayout::Make(int64_t max_tokens) {
  DevicePlanLayout l;
  l.max_tokens = max_tokens;
  const size_t n = static_cast<size_t>(max_tokens);
  size_t at = 0;
  l.slots = Place(&at, n * sizeof(int64_t));
  l.tokens = Place(&at, n * sizeof(int32_t));
  l.positions = Place(&at, n * sizeof(int32_t));
  l.token_seq = Place(&at, n * sizeof(int32_t));
  l.tiles = Place(&at, (n + 1) * sizeof(int32_t));
  l.block_indptr = Place(&at, (n + 1) * sizeof(int32_t));
  l.logits_rows = Place(&at, n * sizeof(int32_t));
  l.bytes = at;
  return l;
}

DevicePlanView DevicePlanView::At(void* base, const DevicePlanLayout& l) {
  auto* b = static_cast<std::byte*>(base);
  return {
      reinterpret_cast<int64_t*>(b + l.slots),      reinterpret_cast<int32_t*>(b + l.tokens),
      reinterpret_cast<int32_t*>(b + l.positions),  reinterpret_cast<int32_t*>(b + l.token_seq),
      reinterpret_cast<int32_t*>(b + l.tiles),      reinterpret_cast<int32_t*>(b + l.block_indptr),
      reinterpret_cast<int32_t*>(b + l.logits_rows)};
}

int64_t DecodeBucket(int64_t seqs, int64_t max_tokens) {
  int64_t bucket = 1;
  while (bucket < seqs) bucket *= 2;
  return std::min(bucket, max_tokens);
}

StatusOr<StepShape> StagePlan(const StepPlan& plan, const BlockTables& tables,
                              const DevicePlanLayout& layout, const StageConfig& config,
                              void* host_base) {
  const int64_t T = plan.num_tokens(), S = plan.num_seqs(), bs = config.block_size;
  StepShape shape;
  shape.real_tokens = T;
  shape.decode = T == S;
  shape.padded = shape.decode && config.pad_decode;
  shape.tokens = shape.padded ? DecodeBucket(T, layout.max_tokens) : T;
  const int64_t pad = shape.tokens - T;
  if (T > layout.max_tokens || shape.tokens > layout.max_tokens) {
    return InvalidArgument("step of {} tokens exceeds the device workspace of {}", T,
                           layout.max_tokens);
  }
  const DevicePlanView v = DevicePlanView::At(host_base, layout);
  std::copy(plan.tokens.begin(), plan.tokens.end(), v.tokens);
  std::copy(plan.positions.begin(), plan.positions.end(), v.positions);
  tables.RowOffsets(plan, v.block_indptr);
  tables.Slots(plan, v.slots);
  for (int64_t s = 0; s < S; ++s) {
    for (int32_t t = plan.qo_indptr[s]; t < plan.qo_indptr[s + 1]; ++t) {
      v.token_seq[t] = static_cast<int32_t>(s);
    }
  }
  const int32_t scratch_row =
      static_cast<int32_t>(static_cast<int64_t>(config.scratch_slot) * tables.shape().stride);
  for (int64_t i = 0; i < pad; ++i) {  // padding: a one-token sequence on the scratch block
    const int64_t t = T + i, s = S + i;
    v.tokens[t] = 0;
    v.positions[t] = 0;
    v.token_seq[t] = static_cast<int32_t>(s);
    v.slots[t] = static_cast<int64_t>(config.scratch_block) * bs;
    v.block_indptr[s] = scratch_row;
  }

  if (shape.decode) {
    for (int64_t t = 0; t <= shape.tokens; ++t) v.tiles[t] = static_cast<int32_t>(t);
    shape.num_tiles = shape.tokens;
    shape.attention = PlanDecodeAttention(shape.tokens, config.kv_heads, config.group,
                                          config.head_dim, config.max_kv_blocks, config.sm_count);
  } else {
    shape.attention = PlanPrefillAttention(config.group, config.head_dim);
    const std::vector<int32_t> tiles =
        PlanAttentionTiles(plan.qo_indptr.data(), S, shape.attention.tile_tokens);
    std::copy(tiles.begin(), tiles.end(), v.tiles);
    shape.num_tiles = static_cast<int64_t>(tiles.size()) - 1;
  }

  // Logits: the requested rows, or every row of a padded step (its graph computes them all).
  const int64_t L = static_cast<int64_t>(plan.logits_rows.size());
  shape.result_rows.resize(L);
  if (shape.padded) {
    shape.rows = shape.tokens;
    for (int64_t t = 0; t < shape.tokens; ++t) v.logits_rows[t] = static_cast<int32_t>(t);
    std::copy(plan.logits_rows.begin(), plan.logits_rows.end(), shape.result_rows.begin());
  } else {
    shape.rows = L;
    std::copy(plan.logits_rows.begin(), plan.logits_rows.end(), v.logits_rows);
    for (int64_t i = 0; i < L; ++i) shape.result_rows[i] = static_cast<int32_t>(i);
  }
  shape.upload_bytes = layout.logits_rows + static_cast<size_t>(shape.rows) * sizeof(int32_t);
  return shape;
}

}  // namespace kvshard::cuda
