#include "plan/step_plan.h"

#include <algorithm>

namespace kvshard {
namespace {

constexpr int32_t kMaxPlanEntries = 1 << 26;
constexpr int kFields = kStepPlanHeaderFields - 1;

// The fields in wire order (header[1 + i] is the size of field i).
template <typename Plan>
auto Fields(Plan& p) {
  return std::array{&p.released_slots, &p.append_slots, &p.append_indptr, &p.append_blocks,
                    &p.tokens,         &p.positions,    &p.qo_indptr,     &p.seq_slots,
                    &p.logits_rows,    &p.rope_offsets, &p.evict_seqs,    &p.evict_keep};
}

}  // namespace

void StepPlan::Clear() {
  kind = Kind::kForward;
  for (auto* f : Fields(*this)) f->clear();
}

StepPlanHeader StepPlanHeaderOf(const StepPlan& plan) {
  StepPlanHeader h{};
  h[0] = static_cast<int32_t>(plan.kind);
  const auto fields = Fields(plan);
  for (int i = 0; i < kFields; ++i) h[1 + i] = static_cast<int32_t>(fields[i]->size());
  return h;
}

Status ShapeStepPlan(const StepPlanHeader& h, StepPlan* plan, size_t* payload_ints) {
  if (h[0] < 0 || h[0] > 1) return Internal("received a corrupt step plan header");
  *payload_ints = 0;
  for (int i = 0; i < kFields; ++i) {
    if (h[1 + i] < 0 || h[1 + i] > kMaxPlanEntries) {
      return Internal("received a corrupt step plan header");
    }
    *payload_ints += static_cast<size_t>(h[1 + i]);
  }
  plan->kind = static_cast<StepPlan::Kind>(h[0]);
  const auto fields = Fields(*plan);
  for (int i = 0; i < kFields; ++i) fields[i]->resize(h[1 + i]);
  return Status::Ok();
}

void PackStepPlan(const StepPlan& plan, std::vector<int32_t>* payload) {
  payload->clear();
  for (const auto* f : Fields(plan)) payload->insert(payload->end(), f->begin(), f->end());
}

void UnpackStepPlan(const std::vector<int32_t>& payload, StepPlan* plan) {
  size_t off = 0;
  for (auto* f : Fields(*plan)) {
    std::copy(payload.begin() + off, payload.begin() + off + f->size(), f->begin());
    off += f->size();
  }
}

int64_t StepPlanWireBytes(const StepPlan& plan) {
  int64_t ints = kStepPlanHeaderFields;
  for (const auto* f : Fields(plan)) ints += static_cast<int64_t>(f->size());
  return ints * static_cast<int64_t>(sizeof(int32_t));
}

}  // namespace kvshard
