#include "coordinator/rpc/service.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <thrift/transport/TSocket.h>

#include <algorithm>
#include <mutex>

#include "coordinator/rpc/limits.h"
#include "coordinator/text_stream.h"

namespace kvshard {
namespace {

using rpc::ErrorCode;

[[noreturn]] void Throw(const Status& status, int64_t kv_capacity_tokens) {
  throw ToRpcError(status, kv_capacity_tokens);
}

// True when the peer has closed its end (or the socket broke).
bool PeerGone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  char byte;
  return (p.revents & POLLIN) && recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

void FillResult(const RequestStream& s, rpc::GenerateResponse* out) {
  out->request_id = s.id;
  out->prompt_text = s.prompt_text;
  out->text = s.text;
  out->token_ids.assign(s.tokens.begin(), s.tokens.end());
  out->finish_reason = s.finish_reason;
  out->prompt_tokens = static_cast<int32_t>(s.prompt_tokens);
  out->cached_tokens = static_cast<int32_t>(s.cached_tokens);
  out->generated_tokens = static_cast<int32_t>(s.tokens.size());
  out->timings.queue_ms = s.timings.queue_ms;
  out->timings.ttft_ms = s.timings.ttft_ms;
  out->timings.per_token_ms = s.timings.per_token_ms;
  out->timings.total_ms = s.timings.total_ms;
  out->error = s.error;
  out->preemptions = static_cast<int32_t>(s.preemptions);
  if (s.kv_positions_kept >= 0) {
    out->kv_positions_kept = static_cast<int32_t>(s.kv_positions_kept);
    out->__isset.kv_positions_kept = true;
  }
}

class ConnectionHandler : public rpc::KvshardIf {
 public:
  ConnectionHandler(ServingEngine* engine, const Tokenizer* tokenizer, const ClusterInfo* info,
                    int fd)
      : engine_(engine), tokenizer_(tokenizer), info_(info), fd_(fd) {}

  void generate(rpc::GenerateResponse& out, const rpc::GenerateRequest& request) override {
    std::shared_ptr<RequestStream> s = Accept(request);
    std::unique_lock<std::mutex> lock(s->mu);
    while (!s->finished) {
      s->cv.wait_for(lock, std::chrono::milliseconds(100));
      if (!s->finished && PeerGone(fd_)) {
        lock.unlock();
        (void)engine_->Cancel(s->id);
        lock.lock();
      }
    }
    FillResult(*s, &out);
    s->delivered = true;
    const bool failed = s->finish_reason == "error";
    // The engine takes its own lock before a request's (AllDelivered, ForgetOldRequests): never
    // ask it anything while holding the request's lock.
    lock.unlock();
    if (failed && !engine_->Snapshot().serving) {
      // The cluster failed under this request: the declared NOT_SERVING error, with the why.
      Throw(Unavailable("{}", out.error), 0);
    }
  }

  int64_t submit(const rpc::GenerateRequest& request) override { return Accept(request)->id; }

  void poll(rpc::PollResponse& out, const int64_t id, const int64_t cursor,
            const int32_t wait_ms) override {
    std::shared_ptr<RequestStream> s = engine_->Find(id);
    if (!s) Throw(NotFound("request_id: {} is unknown (never submitted, or long finished)", id), 0);
    const int32_t wait = std::clamp(wait_ms, 0, rpc_limits::kMaxPollWaitMs);
    std::unique_lock<std::mutex> lock(s->mu);
    const int64_t have = static_cast<int64_t>(s->tokens.size());
    if (cursor < 0 || cursor > have) {
      Throw(InvalidArgument("cursor: {} is outside [0, {}] (the tokens produced so far)", cursor,
                            have),
            0);
    }
    s->cv.wait_for(lock, std::chrono::milliseconds(wait),
                   [&] { return s->finished || static_cast<int64_t>(s->tokens.size()) > cursor; });
    const int64_t n = static_cast<int64_t>(s->tokens.size());
    const size_t from = cursor == 0 ? 0 : s->text_end[cursor - 1];
    const size_t to = s->finished ? s->text.size() : (n == 0 ? 0 : s->text_end[n - 1]);
    out.request_id = id;
    out.token_ids.assign(s->tokens.begin() + cursor, s->tokens.end());
    out.text = s->text.substr(from, to - from);
    out.next_cursor = n;
    out.finished = s->finished;
    out.state = RequestStateName(s->state);
    out.prompt_tokens = static_cast<int32_t>(s->prompt_tokens);
    out.prefilled_tokens = static_cast<int32_t>(s->prefilled_tokens);
    out.prompt_text = cursor == 0 ? s->prompt_text : "";
    if (s->finished) {
      FillResult(*s, &out.result);
      out.__isset.result = true;
      s->delivered = true;
    }
  }

  bool cancel(const int64_t id) override {
    StatusOr<bool> r = engine_->Cancel(id);
    if (!r.ok()) Throw(r.status(), 0);
    return *r;
  }

  void health(rpc::Health& out) override {
    const EngineSnapshot s = engine_->Snapshot();
    out.serving = s.serving;
    out.reason = s.not_serving_reason;
  }

  void status(rpc::ClusterStatus& out) override {
    const EngineSnapshot s = engine_->Snapshot();
    out.world_size = static_cast<int32_t>(info_->ranks.size());
    out.layout = info_->layout;
    for (const RankInfo& r : info_->ranks) {
      rpc::RankStatus rs;
      rs.rank = r.rank;
      rs.host = r.host;
      rs.device = r.device;
      // Every rank's pool has the same blocks, addressed by the same tables.
      rs.kv_blocks_total = s.kv_blocks_total;
      rs.kv_blocks_free = s.kv_blocks_free;
      rs.kv_blocks_used = s.kv_blocks_total - s.kv_blocks_free;
      rs.kv_bytes = r.kv_bytes;
      rs.q_heads = r.q_heads;
      rs.kv_heads = r.kv_heads;
      rs.head_group = r.head_group;
      rs.seq_shard = r.seq_shard;
      rs.weight_bytes = r.weight_bytes;
      out.ranks.push_back(rs);
    }
    out.queue_depth = static_cast<int32_t>(s.queue_depth);
    out.running = static_cast<int32_t>(s.running);
    out.tokens_per_second = s.tokens_per_second;
    out.prefix_cache_hits = s.prefix_cache_hits;
    out.prefix_cache_queries = s.prefix_cache_queries;
    out.kv_blocks_cached = s.kv_blocks_cached;
    out.block_size = info_->block_size;
    out.requests_finished = s.requests_finished;
    out.preemptions = s.preemptions;
    out.model = info_->model;
    out.max_context = info_->max_context;
    out.kv_capacity_tokens = engine_->kv_capacity_tokens();
    out.head_groups = info_->head_groups;
    out.seq_shards = info_->seq_shards;
    out.chat_template = info_->chat ? ChatFormatName(info_->chat->format) : "";
  }

  // The connection is gone: whatever it started and did not see finish is cancelled.
  void Disconnected() {
    std::lock_guard<std::mutex> lock(mu_);
    for (int64_t id : owned_) {
      StatusOr<bool> r = engine_->Cancel(id);
      if (r.ok() && *r) spdlog::info("request {} cancelled: its client disconnected", id);
      if (auto s = engine_->Find(id)) {
        std::lock_guard<std::mutex> l(s->mu);
        s->delivered = true;  // nobody is left to tell
      }
    }
    owned_.clear();
  }

 private:
  std::shared_ptr<RequestStream> Accept(const rpc::GenerateRequest& request) {
    StatusOr<RequestSpec> spec = ToRequestSpec(
        request, *tokenizer_, info_->chat ? &*info_->chat : nullptr, info_->default_kv_budget);
    if (!spec.ok()) Throw(spec.status(), engine_->kv_capacity_tokens());
    StatusOr<std::shared_ptr<RequestStream>> s = engine_->Submit(std::move(*spec));
    if (!s.ok()) Throw(s.status(), engine_->kv_capacity_tokens());
    std::lock_guard<std::mutex> lock(mu_);
    // Forget ids of requests that ended, so a long-lived connection's list stays short.
    std::erase_if(owned_, [this](int64_t id) {
      auto r = engine_->Find(id);
      if (!r) return true;
      std::lock_guard<std::mutex> l(r->mu);
      return r->finished;
    });
    owned_.push_back((*s)->id);
    return *s;
  }

  ServingEngine* engine_;
  const Tokenizer* tokenizer_;
  const ClusterInfo* info_;
  int fd_;
  std::mutex mu_;
  std::vector<int64_t> owned_;
};

}  // namespace

StatusOr<RequestSpec> ToRequestSpec(const rpc::GenerateRequest& r, const Tokenizer& tokenizer,
                                    const ChatTemplate* chat, int64_t default_kv_budget) {
  RequestSpec spec;
  if (r.__isset.prompt + r.__isset.prompt_ids + r.__isset.messages > 1) {
    return InvalidArgument("prompt: give one of prompt, prompt_ids and messages");
  }
  if (r.__isset.messages) {
    if (chat == nullptr) {
      return InvalidArgument(
          "messages: this model has no chat template (start the server with --chat-template "
          "llama3|chatml|llama2|mistral)");
    }
    if (r.messages.size() > rpc_limits::kMaxChatMessages) {
      return InvalidArgument("messages: {} messages; at most {}", r.messages.size(),
                             rpc_limits::kMaxChatMessages);
    }
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i < r.messages.size(); ++i) {
      if (!IsValidUtf8(r.messages[i].content) || !IsValidUtf8(r.messages[i].role)) {
        return InvalidArgument("messages: message {} is not valid UTF-8", i);
      }
      messages.push_back({r.messages[i].role, r.messages[i].content});
    }
    auto text = RenderChat(*chat, messages, /*add_generation_prompt=*/true);
    if (!text.ok()) return text.status();  // "messages: ..." or "messages[i]: ..."
    spec.prompt = EncodeChat(tokenizer, chat->format, *text);
    const std::vector<int32_t> eot = EndOfTurnIds(tokenizer, chat->format);
    spec.stop_ids.insert(spec.stop_ids.end(), eot.begin(), eot.end());
  } else if (r.__isset.prompt) {
    if (r.prompt.empty()) return InvalidArgument("prompt: is empty");
    if (!IsValidUtf8(r.prompt)) return InvalidArgument("prompt: is not valid UTF-8");
    spec.prompt = tokenizer.Encode(r.prompt, /*add_bos=*/true);
  } else if (r.__isset.prompt_ids) {
    if (r.prompt_ids.empty()) return InvalidArgument("prompt_ids: is empty");
    spec.prompt.assign(r.prompt_ids.begin(), r.prompt_ids.end());
  } else {
    return InvalidArgument("prompt: missing; give prompt (text) or prompt_ids");
  }
  spec.max_tokens = r.max_tokens;
  spec.sampling.temperature = static_cast<float>(r.sampling.temperature);
  spec.sampling.top_k = r.sampling.top_k;
  spec.sampling.top_p = static_cast<float>(r.sampling.top_p);
  spec.sampling.seed = static_cast<uint64_t>(r.sampling.seed);
  if (std::isnan(r.sampling.top_p)) spec.sampling.top_p = 0;  // refused below as outside (0, 1]
  spec.stop_strings = r.stop;
  spec.stop_ids.insert(spec.stop_ids.end(), r.stop_ids.begin(), r.stop_ids.end());
  if (r.__isset.cache_salt) spec.cache_salt = r.cache_salt;
  spec.kv_budget = r.__isset.kv_budget ? r.kv_budget : default_kv_budget;
  return spec;
}

rpc::KvshardError ToRpcError(const Status& status, int64_t kv_capacity_tokens) {
  rpc::KvshardError e;
  e.message = status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument: {
      e.code = ErrorCode::INVALID_REQUEST;
      const size_t colon = status.message().find(": ");
      if (colon != std::string::npos) {
        e.field = status.message().substr(0, colon);
        e.__isset.field = true;
      }
      break;
    }
    case StatusCode::kOutOfRange:
      e.code = ErrorCode::TOO_LONG;
      e.limit = kv_capacity_tokens;
      e.__isset.limit = true;
      break;
    case StatusCode::kResourceExhausted: e.code = ErrorCode::OVERLOADED; break;
    case StatusCode::kUnavailable: e.code = ErrorCode::NOT_SERVING; break;
    case StatusCode::kNotFound: e.code = ErrorCode::NOT_FOUND; break;
    default: e.code = ErrorCode::INTERNAL;
  }
  return e;
}

rpc::KvshardIf* HandlerFactory::getHandler(const apache::thrift::TConnectionInfo& connection) {
  int fd = -1;
  if (auto socket =
          std::dynamic_pointer_cast<apache::thrift::transport::TSocket>(connection.transport)) {
    fd = socket->getSocketFD();
  }
  return new ConnectionHandler(engine_, tokenizer_, &info_, fd);
}

void HandlerFactory::releaseHandler(rpc::KvshardIf* handler) {
  auto* h = static_cast<ConnectionHandler*>(handler);
  h->Disconnected();
  delete h;
}

}  // namespace kvshard
