#include "transport/step_plan.h"

#include <array>

namespace kvshard {
namespace {

constexpr int kHeaderFields = 6;
constexpr int32_t kMaxPlanEntries = 1 << 26;

}  // namespace

Status ValidateStepPlan(const StepPlan& plan, int64_t vocab_size, int64_t num_blocks,
                        int64_t block_size, int64_t max_tokens) {
  if (plan.kind == StepPlan::Kind::kShutdown) return Status::Ok();
  const int64_t T = plan.num_tokens();
  if (T == 0 || T > max_tokens) {
    return InvalidArgument("step plan has {} tokens; a step takes 1..{}", T, max_tokens);
  }
  if (static_cast<int64_t>(plan.positions.size()) != T) {
    return InvalidArgument("step plan has {} positions for {} tokens", plan.positions.size(), T);
  }
  if (plan.qo_indptr.size() < 2 || plan.block_indptr.size() != plan.qo_indptr.size()) {
    return InvalidArgument("step plan has inconsistent sequence counts");
  }
  if (plan.qo_indptr.front() != 0 || plan.qo_indptr.back() != T || plan.block_indptr.front() != 0 ||
      plan.block_indptr.back() != static_cast<int32_t>(plan.block_indices.size())) {
    return InvalidArgument("step plan index pointers do not span its tokens and blocks");
  }
  for (int32_t t : plan.tokens) {
    if (t < 0 || t >= vocab_size) {
      return InvalidArgument("token id {} is outside the vocabulary [0, {})", t, vocab_size);
    }
  }
  for (int32_t b : plan.block_indices) {
    if (b < 0 || b >= num_blocks)
      return InvalidArgument("KV block {} outside [0, {})", b, num_blocks);
  }
  for (int64_t s = 0; s + 1 < static_cast<int64_t>(plan.qo_indptr.size()); ++s) {
    const int32_t q0 = plan.qo_indptr[s], q1 = plan.qo_indptr[s + 1];
    const int32_t b0 = plan.block_indptr[s], b1 = plan.block_indptr[s + 1];
    if (q1 <= q0 || b1 < b0) return InvalidArgument("sequence {} has no tokens", s);
    for (int32_t t = q0; t < q1; ++t) {
      const int64_t p = plan.positions[t];
      if (p < 0 || p / block_size >= b1 - b0) {
        return InvalidArgument("position {} of sequence {} is not covered by its {} KV blocks", p,
                               s, b1 - b0);
      }
    }
  }
  for (int32_t r : plan.logits_rows) {
    if (r < 0 || r >= T) return InvalidArgument("logits row {} outside [0, {})", r, T);
  }
  return Status::Ok();
}

Status BroadcastStepPlan(Communicator& comm, StepPlan* plan, int root) {
  std::array<int32_t, kHeaderFields> header{};
  const bool sender = comm.rank() == root;
  if (sender) {
    header = {static_cast<int32_t>(plan->kind),
              static_cast<int32_t>(plan->tokens.size()),
              static_cast<int32_t>(plan->qo_indptr.size()),
              static_cast<int32_t>(plan->block_indices.size()),
              static_cast<int32_t>(plan->logits_rows.size()),
              0};
  }
  KVS_RETURN_IF_ERROR(comm.BroadcastIdle(header.data(), sizeof(header), root));
  const int32_t T = header[1], S1 = header[2], nnz = header[3], L = header[4];
  if (header[0] < 0 || header[0] > 1 || T < 0 || S1 < 0 || nnz < 0 || L < 0 ||
      T > kMaxPlanEntries || S1 > kMaxPlanEntries || nnz > kMaxPlanEntries || L > kMaxPlanEntries) {
    return Internal("received a corrupt step plan header");
  }
  std::vector<std::vector<int32_t>*> fields = {&plan->tokens,        &plan->positions,
                                               &plan->qo_indptr,     &plan->block_indptr,
                                               &plan->block_indices, &plan->logits_rows};
  const std::array<int32_t, 6> sizes = {T, T, S1, S1, nnz, L};
  std::vector<int32_t> payload;
  size_t total = 0;
  for (int32_t n : sizes) total += n;
  if (sender) {
    payload.reserve(total);
    for (auto* f : fields) payload.insert(payload.end(), f->begin(), f->end());
    if (payload.size() != total) return Internal("step plan fields have inconsistent sizes");
  } else {
    payload.resize(total);
  }
  KVS_RETURN_IF_ERROR(comm.Broadcast(payload.data(), total * sizeof(int32_t), root));
  if (!sender) {
    plan->kind = static_cast<StepPlan::Kind>(header[0]);
    size_t off = 0;
    for (size_t i = 0; i < fields.size(); ++i) {
      fields[i]->assign(payload.begin() + off, payload.begin() + off + sizes[i]);
      off += sizes[i];
    }
  }
  return Status::Ok();
}

}  // namespace kvshard
