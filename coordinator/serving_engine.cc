#include "coordinator/serving_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "coordinator/text_stream.h"
#include "plan/kv_eviction.h"
#include "transport/plan_broadcast.h"

namespace kvshard {
namespace {

constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopBytes = 256;

// The first position of a chunk whose logits the step returns: the last one to sample the next
// token, or (prompt_logprobs) every prompt position before the prompt's last.
int64_t LogitsFrom(const ScheduledChunk& c) {
  const int64_t from = c.want_logits ? c.end - 1 : c.end;
  if (c.seq->spec.prompt_logprobs && c.begin < c.seq->prompt_len() - 1) {
    return std::min(from, c.begin);
  }
  return from;
}

// log softmax(logits)[id], the sum in double.
float LogProbability(const float* logits, int64_t vocab, int32_t id) {
  float mx = logits[0];
  for (int64_t i = 1; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
  return static_cast<float>(static_cast<double>(logits[id] - mx) - std::log(sum));
}
constexpr size_t kMaxStopIds = 64;
constexpr size_t kMaxSaltBytes = 256;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

const char* RequestStateName(RequestState state) {
  switch (state) {
    case RequestState::kQueued: return "queued";
    case RequestState::kPrefill: return "prefill";
    case RequestState::kDecode: return "decode";
    case RequestState::kFinished: return "finished";
  }
  return "unknown";
}

ServingEngine::ServingEngine(ShardBackend* model, const Tokenizer* tokenizer,
                             ServingOptions options)
    : model_(model),
      tokenizer_(tokenizer),
      options_(options),
      kv_capacity_tokens_(model->request_capacity_tokens()),
      release_window_(model->config().streaming() ? model->config().stream_window
                                                  : model->config().KvReleaseWindow()),
      keep_tokens_(model->config().attention_sinks),
      eos_ids_(model->config().eos_token_ids),
      blocks_(model->num_blocks(), model->logical_block_size()),
      scheduler_(&blocks_,
                 {model->max_tokens_per_step(), std::min(options.max_seqs, model->max_seqs())}),
      builder_(model->max_seqs()) {
  RefreshSnapshot();
}

Status ServingEngine::Validate(const RequestSpec& r) const {
  const ModelConfig& c = model_->config();
  const int64_t P = static_cast<int64_t>(r.prompt.size());
  if (P == 0) return InvalidArgument("prompt: is empty; give at least one token");
  for (int64_t i = 0; i < P; ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= c.vocab_size) {
      return InvalidArgument(
          "prompt_ids: token id {} at index {} is outside the vocabulary [0, {})", r.prompt[i], i,
          c.vocab_size);
    }
  }
  // With attention sinks a sequence may run past the model's context (positions within the
  // cache stay inside it), up to what the block tables address.
  const int64_t context = c.MaxPositions();
  const char* what = c.streaming() ? "the attention-sink limit" : "the model's context";
  if (P > context) {
    return InvalidArgument("prompt: {} tokens exceed {} of {} tokens", P, what, context);
  }
  if (r.prompt_logprobs && r.max_tokens < 0) {
    return InvalidArgument("max_tokens: must be at least 0, got {}", r.max_tokens);
  }
  if (!r.prompt_logprobs && r.max_tokens <= 0) {
    return InvalidArgument("max_tokens: must be positive, got {}", r.max_tokens);
  }
  if (P + r.max_tokens > context) {
    return InvalidArgument(
        "max_tokens: prompt ({} tokens) + max_tokens ({}) exceed {} of {} tokens; at most {} new "
        "tokens fit",
        P, r.max_tokens, what, context, context - P);
  }
  KVS_RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));
  if (r.stop_ids.size() > kMaxStopIds) {
    return InvalidArgument("stop_ids: {} ids; at most {}", r.stop_ids.size(), kMaxStopIds);
  }
  for (int32_t id : r.stop_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return InvalidArgument("stop_ids: {} is outside the vocabulary [0, {})", id, c.vocab_size);
    }
  }
  if (!r.stop_strings.empty() && !tokenizer_) {
    return InvalidArgument("stop: stop strings need a tokenizer; this model has none");
  }
  if (r.stop_strings.size() > kMaxStopStrings) {
    return InvalidArgument("stop: {} strings; at most {}", r.stop_strings.size(), kMaxStopStrings);
  }
  for (const std::string& stop : r.stop_strings) {
    if (stop.size() > kMaxStopBytes) {
      return InvalidArgument("stop: a stop string of {} bytes; at most {}", stop.size(),
                             kMaxStopBytes);
    }
    if (!IsValidUtf8(stop)) return InvalidArgument("stop: not valid UTF-8");
  }
  if (r.cache_salt.size() > kMaxSaltBytes) {
    return InvalidArgument("cache_salt: {} bytes; at most {}", r.cache_salt.size(), kMaxSaltBytes);
  }
  if (r.kv_budget < 0) return InvalidArgument("kv_budget: must be at least 0, got {}", r.kv_budget);
  if (r.evict_at < 0 || r.evict_at > P) {
    return InvalidArgument("evict_at: {} is outside the prompt [0, {}]", r.evict_at, P);
  }
  const int64_t evict_point = r.evict_at > 0 ? r.evict_at : P;
  const bool evicts = r.kv_budget > 0 && evict_point > r.kv_budget;
  if (evicts) {  // a prompt within its budget is untouched, whatever the model
    KVS_RETURN_IF_ERROR(CheckKvBudget(r.kv_budget));
    if (!r.use_kv_cache) return InvalidArgument("kv_budget: needs the KV cache");
    const int64_t window = SnapKvWindow(r.kv_budget);
    if (window > model_->max_tokens_per_step()) {
      return InvalidArgument(
          "kv_budget: {} keeps an observation window of {} tokens, more than a step computes ({})",
          r.kv_budget, window, model_->max_tokens_per_step());
    }
  }
  // What the request holds at most: every position, or with sliding windows on every layer the
  // window behind a step's chunk (its blocks, and one more where they straddle a boundary), or
  // with KV eviction the larger of the prompt before it and the budget with what follows.
  int64_t held = P + r.max_tokens;
  if (evicts) held = std::max(evict_point, r.kv_budget + P + r.max_tokens - evict_point);
  if (release_window_ > 0 && r.use_kv_cache) {
    held = std::min(held, blocks_.BlocksFor(keep_tokens_) * blocks_.block_size() + release_window_ -
                              1 + model_->max_tokens_per_step() + blocks_.block_size());
  }
  if (held > kv_capacity_tokens_) {
    return OutOfRange(
        "prompt ({} tokens) + max_tokens ({}) need {} KV blocks of {} tokens, but the cluster's "
        "KV cache holds {} blocks = {} tokens for one request",
        P, r.max_tokens, blocks_.BlocksFor(held), blocks_.block_size(), blocks_.total_blocks(),
        kv_capacity_tokens_);
  }
  return Status::Ok();
}

Status ServingEngine::CheckKvBudget(int64_t budget) const {
  if (budget <= 0) return Status::Ok();
  const ModelConfig& c = model_->config();
  if (!model_->supports_kv_eviction()) {
    return InvalidArgument("kv_budget: this backend has no KV eviction");
  }
  if (c.streaming() || c.KvReleaseWindow() > 0 ||
      std::any_of(c.layer_window.begin(), c.layer_window.end(), [](int64_t w) { return w > 0; })) {
    return InvalidArgument("kv_budget: not with sliding-window attention or attention sinks");
  }
  return Status::Ok();
}

StatusOr<std::shared_ptr<RequestStream>> ServingEngine::Submit(RequestSpec spec) {
  KVS_RETURN_IF_ERROR(Validate(spec));
  for (int32_t eos : eos_ids_) {
    if (!spec.ignore_eos &&
        std::find(spec.stop_ids.begin(), spec.stop_ids.end(), eos) == spec.stop_ids.end()) {
      spec.stop_ids.push_back(eos);
    }
  }
  auto stream = std::make_shared<RequestStream>();
  stream->accepted = Clock::now();
  stream->prompt_tokens = static_cast<int64_t>(spec.prompt.size());
  if (spec.kv_budget > 0) {  // 0 until an evicting prompt is computed
    const int64_t point = spec.evict_at > 0 ? spec.evict_at : stream->prompt_tokens;
    stream->kv_positions_kept = point > spec.kv_budget ? 0 : point;
  }
  // The prompt as `kvshard generate` prints it.
  std::string prompt_text;
  int32_t prev = -1;
  for (size_t i = 0; tokenizer_ && i < spec.prompt.size(); ++i) {
    prompt_text += tokenizer_->DecodeToken(prev, spec.prompt[i]);
    prev = spec.prompt[i];
  }
  stream->prompt_text = SanitizeUtf8(prompt_text);
  auto seq = std::make_unique<Sequence>(stream, std::move(spec), tokenizer_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) {
      return Unavailable("not serving: {}", snapshot_.not_serving_reason.empty()
                                                ? "the server is shutting down"
                                                : snapshot_.not_serving_reason);
    }
    if (queued_ >= options_.max_queue) {
      return ResourceExhausted("overloaded: {} requests are queued (the limit); retry later",
                               queued_);
    }
    stream->id = next_id_++;
    ++queued_;
    ++snapshot_.requests_accepted;
    requests_[stream->id] = stream;
    inbox_.push_back(std::move(seq));
  }
  inbox_cv_.notify_one();
  return stream;
}

std::shared_ptr<RequestStream> ServingEngine::Find(int64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second;
}

StatusOr<bool> ServingEngine::Cancel(int64_t id) {
  std::shared_ptr<RequestStream> stream = Find(id);
  if (!stream) return NotFound("request {} is unknown (never submitted, or long finished)", id);
  {
    std::lock_guard<std::mutex> lock(stream->mu);
    if (stream->finished) return false;
    if (stream->cancel_requested.exchange(true)) return false;  // someone else cancelled it
  }
  inbox_cv_.notify_one();
  return true;
}

EngineSnapshot ServingEngine::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return snapshot_;
}

bool ServingEngine::AllDelivered() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, s] : requests_) {
    std::lock_guard<std::mutex> l(s->mu);
    if (!s->finished || !s->delivered) return false;
  }
  return true;
}

void ServingEngine::TakeInbox() {
  std::vector<std::unique_ptr<Sequence>> fresh;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fresh.swap(inbox_);
  }
  for (auto& s : fresh) scheduler_.Enqueue(std::move(s));
}

void ServingEngine::ApplyCancels() {
  std::vector<Sequence*> cancelled;
  for (const auto& s : scheduler_.running()) {
    if (s->stream->cancel_requested.load()) cancelled.push_back(s.get());
  }
  for (const auto& s : scheduler_.waiting()) {
    if (s->stream->cancel_requested.load()) cancelled.push_back(s.get());
  }
  for (Sequence* s : cancelled) Finish(s, "cancelled", "");
}

void ServingEngine::Publish(Sequence* seq, RequestState state) {
  RequestStream& st = *seq->stream;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    st.state = state;
    st.prefilled_tokens = std::min(seq->computed, seq->prompt_len());
    st.cached_tokens = seq->cached_tokens;
    st.preemptions = seq->preemptions;
    const int64_t have = static_cast<int64_t>(st.tokens.size());
    for (int64_t i = have; i < seq->generated; ++i) {
      st.tokens.push_back(seq->tokens[seq->prompt_len() + i]);
      st.text_end.push_back(seq->text.shown().size());
    }
    // The shown text only grows: copy what is new, not the whole text again.
    const std::string& shown = seq->text.shown();
    if (shown.size() > st.text.size()) st.text.append(shown, st.text.size());
  }
  st.cv.notify_all();
}

void ServingEngine::Finish(Sequence* seq, const std::string& reason, const std::string& error) {
  RequestStream& st = *seq->stream;
  seq->text.Finish();
  Publish(seq, RequestState::kFinished);
  const Clock::time_point now = Clock::now();
  {
    std::lock_guard<std::mutex> lock(st.mu);
    st.finished = true;
    st.prompt_logprobs = std::move(seq->prompt_logprobs);
    st.finish_reason = st.cancel_requested.load() && reason != "error" ? "cancelled" : reason;
    st.error = error;
    st.finished_at = now;
    RequestTimings& t = st.timings;
    t.total_ms = Ms(now - st.accepted);
    if (seq->admitted_before) t.queue_ms = Ms(seq->first_scheduled - st.accepted);
    if (seq->generated > 0) t.ttft_ms = Ms(seq->first_token - st.accepted);
    if (seq->generated > 1) {
      t.per_token_ms =
          Ms(seq->last_token - seq->first_token) / static_cast<double>(seq->generated - 1);
    }
  }
  st.cv.notify_all();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++snapshot_.requests_finished;
    if (seq->generated > 0) {
      snapshot_.ttft_seconds_sum += Ms(seq->first_token - st.accepted) / 1e3;
      ++snapshot_.ttft_count;
    }
  }
  scheduler_.Remove(seq);
}

void ServingEngine::FinishAll(const std::string& reason, const std::string& error) {
  TakeInbox();
  std::vector<Sequence*> all;
  for (const auto& s : scheduler_.running()) all.push_back(s.get());
  for (const auto& s : scheduler_.waiting()) all.push_back(s.get());
  for (Sequence* s : all) Finish(s, reason, error);
  RefreshSnapshot();
}

StatusOr<bool> ServingEngine::Step() {
  TakeInbox();
  ApplyCancels();
  std::vector<Sequence*> preempted;
  std::vector<ScheduledChunk> chunks = scheduler_.Schedule(&preempted);
  for (Sequence* s : preempted) {
    spdlog::debug("request {} preempted (KV cache full); it will be recomputed", s->id());
    Publish(s, RequestState::kQueued);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The bound counts requests never admitted; preempted ones were admitted already.
    int64_t fresh = 0;
    for (const auto& w : scheduler_.waiting()) fresh += w->admitted_before ? 0 : 1;
    queued_ = static_cast<int64_t>(inbox_.size()) + fresh;
    snapshot_.preemptions += static_cast<int64_t>(preempted.size());
  }
  if (chunks.empty()) {
    RefreshSnapshot();
    return false;
  }
  const Clock::time_point start = Clock::now();
  for (int64_t gone : blocks_.TakeReleased()) builder_.Release(gone);
  builder_.Begin(&plan_);
  for (const ScheduledChunk& c : chunks) {
    Sequence* s = c.seq;
    if (s->first_scheduled == Clock::time_point{}) s->first_scheduled = start;
    if (c.evict) {
      plan_.evict_seqs.push_back(static_cast<int32_t>(plan_.num_seqs()));
      plan_.evict_keep.push_back(static_cast<int32_t>(s->spec.kv_budget));
    }
    KVS_RETURN_IF_ERROR(builder_.Add(&plan_, s->id(), blocks_.Table(s->id()),
                                     blocks_.BlocksFor(c.end - s->shift), s->tokens.data(), c.begin,
                                     c.end, LogitsFrom(c), s->shift));
  }
  last_plan_bytes_ = StepPlanWireBytes(plan_);
  KVS_RETURN_IF_ERROR(BroadcastStepPlan(model_->comm(), &plan_, 0, &payload_));
  KVS_RETURN_IF_ERROR(model_->Forward(plan_, &logits_));
  if (options_.debug_step_delay_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(options_.debug_step_delay_ms));
  }

  const Clock::time_point now = Clock::now();
  const int64_t V = model_->config().vocab_size;
  int64_t row = 0, sampled = 0;
  for (const ScheduledChunk& c : chunks) {
    Sequence* s = c.seq;
    s->computed = c.end;
    if (c.evict) {  // every rank compacted the prompt's KV into the first blocks
      const int64_t keep = s->spec.kv_budget;
      blocks_.Truncate(s->id(), blocks_.BlocksFor(keep));
      builder_.Truncate(s->id(), blocks_.BlocksFor(keep));
      s->evicted = true;
      s->shift = c.end - keep;
      std::lock_guard<std::mutex> lock(s->stream->mu);
      s->stream->kv_positions_kept = keep;
    }
    if (s->spec.use_kv_cache && !s->evicts()) {
      blocks_.CommitFullBlocks(s->id(), s->tokens.data(), s->computed, s->spec.cache_salt);
      // Sliding windows on every layer: the next token at `computed` sees positions from
      // computed - window + 1 on; the blocks wholly before them go back to the pool now.
      if (release_window_ > 0) {
        blocks_.ReleaseBefore(s->id(), s->computed - release_window_ + 1, keep_tokens_);
      }
    }
    // Prompt positions before the last: the log-probability of the prompt's next token.
    for (int64_t p = LogitsFrom(c); p < c.end - (c.want_logits ? 1 : 0); ++p) {
      const int64_t next = p + 1;
      if (next < s->prompt_len()) {
        s->prompt_logprobs.resize(s->prompt_len() - 1);
        s->prompt_logprobs[p] = LogProbability(logits_.data() + row * V, V, s->tokens[next]);
      }
      ++row;
    }
    if (!c.want_logits) {
      Publish(s, RequestState::kPrefill);
      continue;
    }
    if (trace_ && s->id() == trace_id_) {
      trace_->emplace_back(logits_.data() + row * V, logits_.data() + (row + 1) * V);
    }
    if (s->spec.max_tokens == 0) {  // prompt_logprobs alone: the prompt was the request
      ++row;
      Finish(s, "length", "");
      continue;
    }
    const int32_t next = s->sampler.Sample(logits_.data() + row * V, V);
    ++row;
    const auto& stops = s->spec.stop_ids;
    if (std::find(stops.begin(), stops.end(), next) != stops.end()) {
      Finish(s, "stop", "");
      continue;
    }
    s->tokens.push_back(next);
    ++s->generated;
    ++sampled;
    if (s->generated == 1) s->first_token = now;
    s->last_token = now;
    const bool stop_string = s->text.Append(next);
    if (stop_string) {
      Finish(s, "stop", "");
    } else if (s->generated >= s->spec.max_tokens) {
      Finish(s, "length", "");
    } else {
      Publish(s, RequestState::kDecode);
      if (!s->spec.use_kv_cache) {
        // Recompute mode: forget the KV; the next steps run the whole sequence again.
        blocks_.Free(s->id());
        s->computed = 0;
      }
    }
  }
  if (sampled > 0) token_times_.emplace_back(now, sampled);
  generated_total_ += sampled;
  RefreshSnapshot();
  return true;
}

StatusOr<GenerationResult> ServingEngine::Generate(RequestSpec spec,
                                                   const std::function<void(int32_t)>& on_token,
                                                   std::vector<std::vector<float>>* logits_trace) {
  KVS_ASSIGN_OR_RETURN(std::shared_ptr<RequestStream> stream, Submit(std::move(spec)));
  trace_id_ = stream->id;
  trace_ = logits_trace;
  GenerationResult result;
  std::vector<int32_t> fresh;  // ids generated by the last step
  int64_t samples = 0;
  bool finished = false;
  Status st = Status::Ok();
  while (!finished) {
    const Clock::time_point t0 = Clock::now();
    StatusOr<bool> did = Step();
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!did.ok()) {
      st = did.status();
      break;
    }
    fresh.clear();
    {
      std::lock_guard<std::mutex> lock(stream->mu);
      fresh.assign(stream->tokens.begin() + static_cast<std::ptrdiff_t>(result.tokens.size()),
                   stream->tokens.end());
      finished = stream->finished;
      if (finished) result.finish_reason = stream->finish_reason;
    }
    if (!*did && !finished) {
      st = Internal("request {} made no progress (nothing to schedule)", stream->id);
      break;
    }
    // A step samples this request at most once: the first sample ends the prefill.
    (samples == 0 ? result.prefill_seconds : result.decode_seconds) += seconds;
    if (!fresh.empty() || finished) ++samples;
    for (int32_t id : fresh) {
      result.tokens.push_back(id);
      if (on_token) on_token(id);
    }
  }
  trace_ = nullptr;
  if (!st.ok()) FinishAll("error", st.message());  // frees the request's blocks
  {
    std::lock_guard<std::mutex> lock(mu_);
    requests_.erase(stream->id);
  }
  if (!st.ok()) return st;
  result.decode_steps = std::max<int64_t>(samples - 1, 0);
  {
    std::lock_guard<std::mutex> lock(stream->mu);
    result.prompt_logprobs = std::move(stream->prompt_logprobs);
    result.kv_positions_kept = stream->kv_positions_kept;
  }
  return result;
}

Status ServingEngine::Shutdown() { return BroadcastShutdown(model_->comm()); }

void ServingEngine::RefreshSnapshot() {
  const Clock::time_point now = Clock::now();
  constexpr double kWindowS = 5.0;
  while (!token_times_.empty() &&
         std::chrono::duration<double>(now - token_times_.front().first).count() > kWindowS) {
    token_times_.pop_front();
  }
  int64_t recent = 0;
  for (const auto& [t, n] : token_times_) recent += n;
  std::lock_guard<std::mutex> lock(mu_);
  snapshot_.queue_depth = queued_;
  snapshot_.running = static_cast<int64_t>(scheduler_.running().size());
  snapshot_.kv_blocks_total = blocks_.total_blocks();
  snapshot_.kv_blocks_free = blocks_.free_blocks();
  snapshot_.kv_blocks_cached = blocks_.cached_blocks();
  snapshot_.prefix_cache_hits = blocks_.cache_hits();
  snapshot_.prefix_cache_queries = blocks_.cache_queries();
  snapshot_.tokens_per_second = static_cast<double>(recent) / kWindowS;
  snapshot_.generated_tokens = generated_total_;
}

void ServingEngine::ForgetOldRequests() {
  const Clock::time_point now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  int64_t finished = 0;
  for (const auto& [id, s] : requests_) {
    std::lock_guard<std::mutex> l(s->mu);
    if (s->finished) ++finished;
  }
  for (auto it = requests_.begin(); it != requests_.end();) {
    bool drop = false;
    {
      std::lock_guard<std::mutex> l(it->second->mu);
      drop = it->second->finished &&
             (finished > options_.keep_finished ||
              std::chrono::duration<double>(now - it->second->finished_at).count() >
                  options_.keep_finished_s);
    }
    if (drop) {
      --finished;
      it = requests_.erase(it);
    } else {
      ++it;
    }
  }
}

Status ServingEngine::Run() {
  bool draining = false;
  Clock::time_point deadline, last_forget = Clock::now();
  for (;;) {
    const Clock::time_point now = Clock::now();
    if (stop_requested_.load() && !draining) {
      draining = true;
      deadline = now + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(options_.shutdown_grace_s));
      std::lock_guard<std::mutex> lock(mu_);
      accepting_ = false;
      snapshot_.serving = false;
      snapshot_.not_serving_reason = "the server is shutting down";
      spdlog::info("shutting down: {} requests in flight get {:.1f} s to finish",
                   queued_ + static_cast<int64_t>(scheduler_.running().size()),
                   options_.shutdown_grace_s);
    }
    if (draining) {
      TakeInbox();
      if (scheduler_.idle()) break;
      if (now >= deadline) {
        FinishAll("cancelled", "the server shut down before the request finished");
        break;
      }
    }
    // A shard that stopped beating fails the server now, busy or idle.
    Status alive = model_->comm().CheckLiveness();
    StatusOr<bool> did = alive.ok() ? Step() : StatusOr<bool>(alive);
    if (!did.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        accepting_ = false;
        snapshot_.serving = false;
        snapshot_.not_serving_reason = did.status().message();
      }
      spdlog::error("not serving: {}", did.status().message());
      FinishAll("error", "not serving: " + did.status().message());
      return did.status();
    }
    if (!*did) {
      std::unique_lock<std::mutex> lock(mu_);
      inbox_cv_.wait_for(lock, std::chrono::milliseconds(20),
                         [&] { return !inbox_.empty() || stop_requested_.load(); });
    }
    if (now - last_forget > std::chrono::seconds(1)) {
      ForgetOldRequests();
      last_forget = now;
    }
  }
  RefreshSnapshot();
  return Status::Ok();
}

}  // namespace kvshard
