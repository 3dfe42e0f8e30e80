// KV eviction's pass over one layer of one sequence (the policy: kernels/cpu/kv_eviction.h; the
// plan: plan/kv_eviction.h), on host arrays, for every backend: the CPU runs it on its pool, the
// CUDA backend on a host copy of the sequence's blocks. Every rank scores its query heads'
// observation window against its own positions; the window rows' softmax denominators are merged
// within the group (one all-gather of [max, sum] per row), each rank sums its positions'
// probabilities per KV head, one all-gather over the whole world brings every rank every
// position's score (a replicated KV head's query heads span head groups: their sums are added in
// group order), snapkv_pick chooses, and the kept rows move to their new cache indices
// 0..keep-1 (within the group, through one all-gather when the positions are sharded: a row's
// new index may live on another shard). Every collective's size is the same on every rank.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/status.h"
#include "plan/paged_kv.h"
#include "plan/step_plan.h"
#include "shard/model_config.h"
#include "shard/tp_layout.h"
#include "transport/communicator.h"

namespace kvshard {

// One layer of a KV pool in host memory. k, v: KV [slots, kv_heads, head_dim] with KV a CPU
// cache element type (float, f16_t, bf16_t, int8_t, fp8_e4m3_t); k_scale, v_scale: f32 [slots,
// kv_heads], the rows' scales for the quantized ones (null otherwise).
template <typename KV>
struct HostKvLayer {
  KV* k = nullptr;
  KV* v = nullptr;
  float* k_scale = nullptr;
  float* v_scale = nullptr;
};

// The sequence whose prompt is compressed: its table of local blocks in the pool, the positions
// cached (its prompt, ending with the observation window), and the positions kept per KV head.
struct EvictedSequence {
  const int32_t* table = nullptr;
  int64_t length = 0;
  int64_t keep = 0;
};

// The observation windows' queries of a step's evicted sequences, copied by every layer's
// attention as the step runs and read by the pass after it: f32 [E][layers][most rows][q_width]
// (post-RoPE, this rank's query heads).
class EvictionQueries {
 public:
  // Sized for `plan`'s evicted sequences (none: empty); ResourceExhausted without the memory.
  Status Prepare(const StepPlan& plan, int64_t layers, int64_t q_width);
  size_t size() const { return windows_.size(); }
  bool empty() const { return windows_.empty(); }
  // Evicted sequence e's window in the step: its first token row and its rows.
  std::pair<int64_t, int64_t> window(size_t e) const { return windows_[e]; }
  // Where sequence e's queries of `layer` are kept.
  float* at(size_t e, int64_t layer) {
    return q_.data() + (static_cast<int64_t>(e) * layers_ + layer) * most_rows_ * q_width_;
  }

 private:
  std::vector<std::pair<int64_t, int64_t>> windows_;
  int64_t layers_ = 0, most_rows_ = 0, q_width_ = 0;
  std::vector<float> q_;
};

// Every head group's first KV head (to add up a replicated KV head's scores across groups).
StatusOr<std::vector<int64_t>> HeadGroupFirstKvHeads(const ModelConfig& c, const TpLayout& l);

// Scores `seq`'s prompt positions in one layer by its observation window's queries q (f32 [w,
// q_heads, head_dim], w = SnapKvWindow(keep), this rank's heads: EvictionQueries::at) and moves
// each local KV head's kept rows to cache indices 0..keep-1. The caller truncates the sequence's
// table.
template <typename KV>
Status EvictLayer(Communicator& comm, const ModelConfig& c, const TpLayout& l,
                  const std::vector<int64_t>& group_kv0, const PagedKvGeometry& geo,
                  const EvictedSequence& seq, const float* q, HostKvLayer<KV> pool);

}  // namespace kvshard
