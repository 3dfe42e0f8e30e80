#include "coordinator/engine.h"

#include <algorithm>
#include <chrono>

#include "transport/plan_broadcast.h"

namespace kvshard {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Engine::Engine(ShardBackend* model)
    : model_(model),
      blocks_(model->num_blocks(), model->block_size()),
      builder_(model->max_seqs()) {}

Status Engine::Validate(const GenerationRequest& r) const {
  const ModelConfig& c = model_->config();
  if (r.prompt.empty()) return InvalidArgument("prompt: needs at least one token");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= c.vocab_size) {
      return InvalidArgument("prompt: token id {} at index {} is outside the vocabulary [0, {})",
                             r.prompt[i], i, c.vocab_size);
    }
  }
  const int64_t P = static_cast<int64_t>(r.prompt.size());
  if (P > c.max_seq_len) {
    return OutOfRange("prompt: {} tokens exceed the model's context of {} tokens", P,
                      c.max_seq_len);
  }
  if (r.max_tokens <= 0)
    return InvalidArgument("max_tokens must be positive, got {}", r.max_tokens);
  if (P + r.max_tokens > c.max_seq_len) {
    return OutOfRange(
        "max_tokens: prompt ({} tokens) + max_tokens ({}) exceed the model's context of {} "
        "tokens; at most {} new tokens fit",
        P, r.max_tokens, c.max_seq_len, c.max_seq_len - P);
  }
  KVS_RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));
  const int64_t need = blocks_.BlocksFor(P + r.max_tokens);
  if (need > blocks_.total_blocks()) {
    return OutOfRange(
        "prompt + max_tokens = {} tokens need {} KV blocks but the cache holds {} blocks ({} "
        "tokens)",
        P + r.max_tokens, need, blocks_.total_blocks(),
        blocks_.total_blocks() * blocks_.block_size());
  }
  return Status::Ok();
}

Status Engine::RunSpan(int64_t seq, const std::vector<int32_t>& tokens, int64_t begin, int64_t end,
                       bool want_logits, std::vector<float>* logits) {
  const int64_t chunk = model_->max_tokens_per_step();
  KVS_RETURN_IF_ERROR(blocks_.EnsureCapacity(seq, end));
  const std::vector<int32_t>& table = blocks_.Table(seq);
  // Chunked prefill: a long span runs as several steps of at most `chunk` tokens.
  for (int64_t b = begin; b < end; b += chunk) {
    const int64_t e = std::min(end, b + chunk);
    for (int64_t gone : blocks_.TakeReleased()) builder_.Release(gone);
    builder_.Begin(&plan_);
    KVS_RETURN_IF_ERROR(builder_.Add(&plan_, seq, table, blocks_.BlocksFor(e), tokens.data(), b, e,
                                     want_logits && e == end));
    last_plan_bytes_ = StepPlanWireBytes(plan_);
    KVS_RETURN_IF_ERROR(BroadcastStepPlan(model_->comm(), &plan_, 0, &payload_));
    KVS_RETURN_IF_ERROR(model_->Forward(plan_, logits));
  }
  return Status::Ok();
}

StatusOr<GenerationResult> Engine::Generate(const GenerationRequest& request,
                                            const std::function<void(int32_t)>& on_token,
                                            std::vector<std::vector<float>>* logits_trace) {
  KVS_RETURN_IF_ERROR(Validate(request));
  const int64_t seq = next_seq_++;
  const int64_t V = model_->config().vocab_size;
  Sampler sampler(request.sampling);
  std::vector<int32_t> tokens = request.prompt;
  std::vector<float> logits;
  GenerationResult result;
  result.finish_reason = "length";

  auto t0 = std::chrono::steady_clock::now();
  Status st = RunSpan(seq, tokens, 0, static_cast<int64_t>(tokens.size()), true, &logits);
  result.prefill_seconds = SecondsSince(t0);
  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; st.ok(); ++i) {
    if (logits_trace) logits_trace->push_back(logits);
    const int32_t next = sampler.Sample(logits.data(), V);
    if (std::find(request.stop_ids.begin(), request.stop_ids.end(), next) !=
        request.stop_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    result.tokens.push_back(next);
    if (on_token) on_token(next);
    if (i + 1 >= request.max_tokens) break;
    tokens.push_back(next);
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (request.use_kv_cache) {
      st = RunSpan(seq, tokens, n - 1, n, true, &logits);
    } else {
      // Recompute mode: forget the cache and run the whole sequence again.
      blocks_.Free(seq);
      st = RunSpan(seq, tokens, 0, n, true, &logits);
    }
    ++result.decode_steps;
  }
  result.decode_seconds = SecondsSince(t0);
  blocks_.Free(seq);
  if (!st.ok()) return st;
  return result;
}

Status Engine::Shutdown() {
  StepPlan stop;
  stop.kind = StepPlan::Kind::kShutdown;
  return BroadcastStepPlan(model_->comm(), &stop, 0, &payload_);
}

}  // namespace kvshard
