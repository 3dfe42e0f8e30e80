// kvshard client: talks to a running `kvshard serve` over Thrift (framed, binary).
//   generate  streams prompt + completion to stdout, exactly as `kvshard generate` prints them
//   ask       a question about a document file (the document is the shared, cacheable prefix;
//             as a chat turn when the server has a chat template)
//   chat      a conversation: one user turn per line of stdin (or --message), replies streamed
//   status | health | cancel
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSocket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "Kvshard.h"
#include "cluster/commands.h"

namespace kvshard {
namespace {

using apache::thrift::protocol::TBinaryProtocol;
using apache::thrift::transport::TFramedTransport;
using apache::thrift::transport::TSocket;

struct ClientFlags {
  std::string host = "127.0.0.1";
  int port = 9090;
  int timeout_ms = 60000;
};

struct RequestFlags {
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  int32_t max_tokens = 256;
  double temperature = 0.0;
  int32_t top_k = 0;
  double top_p = 1.0;
  int64_t seed = 0;
  std::vector<std::string> stop;
  std::string cache_salt;
  int64_t kv_budget = -1;  // -1: the server's default
  bool json = false;
  // ask
  std::string document;
  std::string question;
  bool no_chat = false;
  // chat (and ask, as a chat turn)
  std::string system;
  std::vector<std::string> messages;  // --message, repeatable: user turns sent one by one
  std::vector<rpc::ChatMessage> conversation;
};

class Connection {
 public:
  explicit Connection(const ClientFlags& f) {
    socket_ = std::make_shared<TSocket>(f.host, f.port);
    socket_->setConnTimeout(5000);
    socket_->setRecvTimeout(f.timeout_ms);
    socket_->setSendTimeout(f.timeout_ms);
    transport_ = std::make_shared<TFramedTransport>(socket_);
    client_ = std::make_unique<rpc::KvshardClient>(std::make_shared<TBinaryProtocol>(transport_));
    transport_->open();
  }
  ~Connection() {
    try {
      transport_->close();
    } catch (...) {
    }
  }
  rpc::KvshardClient& operator*() { return *client_; }
  rpc::KvshardClient* operator->() { return client_.get(); }

 private:
  std::shared_ptr<TSocket> socket_;
  std::shared_ptr<TFramedTransport> transport_;
  std::unique_ptr<rpc::KvshardClient> client_;
};

void Write(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

rpc::GenerateRequest MakeRequest(const RequestFlags& f) {
  rpc::GenerateRequest r;
  if (!f.conversation.empty()) {
    r.__set_messages(f.conversation);
  } else if (!f.prompt_ids.empty()) {
    r.__set_prompt_ids(f.prompt_ids);
  } else {
    r.__set_prompt(f.prompt);
  }
  r.max_tokens = f.max_tokens;
  r.sampling.temperature = f.temperature;
  r.sampling.top_k = f.top_k;
  r.sampling.top_p = f.top_p;
  r.sampling.seed = f.seed;
  r.__isset.sampling = true;
  r.stop = f.stop;
  if (!f.cache_salt.empty()) r.__set_cache_salt(f.cache_salt);
  if (f.kv_budget >= 0) r.__set_kv_budget(static_cast<int32_t>(f.kv_budget));
  return r;
}

// Submits and streams: prompt text (when show_prompt), then the completion as it arrives;
// prefill progress of a long prompt goes to stderr. Returns the final result.
rpc::GenerateResponse Stream(Connection& c, const rpc::GenerateRequest& request, bool show_prompt) {
  const int64_t id = c->submit(request);
  int64_t cursor = 0;
  bool progress_shown = false;
  const bool tty = isatty(STDERR_FILENO);
  for (;;) {
    rpc::PollResponse p;
    c->poll(p, id, cursor, 1000);
    if (cursor == 0 && show_prompt && !p.prompt_text.empty()) Write(p.prompt_text);
    if (p.state == "prefill" && p.prompt_tokens >= 1024) {
      std::fprintf(stderr, "%sprefill %d/%d tokens%s", tty ? "\r" : "", p.prefilled_tokens,
                   p.prompt_tokens, tty ? "" : "\n");
      progress_shown = true;
    }
    if (!p.token_ids.empty() && progress_shown) {
      if (tty) std::fputc('\n', stderr);
      progress_shown = false;
    }
    Write(p.text);
    cursor = p.next_cursor;
    if (p.finished) return p.result;
    show_prompt = false;
  }
}

void Summary(const rpc::GenerateResponse& r) {
  std::fprintf(stderr,
               "request %lld: %d prompt tokens (%d cached) + %d generated (%s); queue %.1f ms, "
               "time to first token %.1f ms, %.2f ms/token\n",
               static_cast<long long>(r.request_id), r.prompt_tokens, r.cached_tokens,
               r.generated_tokens, r.finish_reason.c_str(), r.timings.queue_ms, r.timings.ttft_ms,
               r.timings.per_token_ms);
}

std::string JsonResult(const rpc::GenerateResponse& r) {
  nlohmann::json j = {{"request_id", r.request_id},
                      {"text", r.text},
                      {"finish_reason", r.finish_reason},
                      {"prompt_tokens", r.prompt_tokens},
                      {"cached_tokens", r.cached_tokens},
                      {"generated_tokens", r.generated_tokens},
                      {"queue_ms", r.timings.queue_ms},
                      {"ttft_ms", r.timings.ttft_ms},
                      {"per_token_ms", r.timings.per_token_ms},
                      {"total_ms", r.timings.total_ms},
                      {"preemptions", r.preemptions}};
  if (r.__isset.kv_positions_kept) j["kv_positions_kept"] = r.kv_positions_kept;
  return j.dump() + "\n";
}

int Finished(const rpc::GenerateResponse& r) {
  if (r.finish_reason == "error") {
    std::fprintf(stderr, "error: %s\n", r.error.c_str());
    return 1;
  }
  return 0;
}

// One request, as a JSON line (--json) or streamed with a summary on stderr.
int Run(Connection& c, const RequestFlags& f, bool show_prompt) {
  const rpc::GenerateRequest request = MakeRequest(f);
  if (f.json) {
    rpc::GenerateResponse r;
    c->generate(r, request);
    Write(JsonResult(r));
    return Finished(r);
  }
  const rpc::GenerateResponse r = Stream(c, request, show_prompt);
  Write("\n");
  Summary(r);
  return Finished(r);
}

int RunGenerate(Connection& c, const RequestFlags& f) { return Run(c, f, /*show_prompt=*/true); }

// The document is the shared prefix that the prefix cache reuses across questions.
int RunAsk(Connection& c, RequestFlags f) {
  std::ifstream in(f.document, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "error: cannot read --document %s\n", f.document.c_str());
    return 1;
  }
  std::stringstream text;
  text << in.rdbuf();
  f.prompt_ids.clear();
  rpc::ClusterStatus s;
  c->status(s);
  if (!f.no_chat && !s.chat_template.empty()) {
    // An instruct model: the document and the question as one user turn (the document first, so
    // that questions about it share the cached prefix).
    rpc::ChatMessage m;
    if (!f.system.empty()) {
      m.role = "system";
      m.content = f.system;
      f.conversation.push_back(m);
    }
    m.role = "user";
    m.content = text.str() + "\n\nQuestion: " + f.question;
    f.conversation.push_back(m);
  } else {
    f.prompt = text.str() + "\n\nQuestion: " + f.question + "\nAnswer:";
  }
  return Run(c, f, /*show_prompt=*/false);
}

// A conversation: each user turn (--message, else each line of stdin) is sent with the history
// so far, the reply streamed and kept in the history.
int RunChat(Connection& c, RequestFlags f) {
  if (!f.system.empty()) {
    rpc::ChatMessage m;
    m.role = "system";
    m.content = f.system;
    f.conversation.push_back(m);
  }
  const bool from_stdin = f.messages.empty();
  const bool tty = isatty(STDIN_FILENO);
  size_t next = 0;
  for (;;) {
    std::string line;
    if (from_stdin) {
      if (tty) std::fprintf(stderr, "> ");
      char buf[4096];
      if (std::fgets(buf, sizeof(buf), stdin) == nullptr) return 0;
      line = buf;
      while (!line.empty() && line.back() != '\n' && std::fgets(buf, sizeof(buf), stdin)) {
        line += buf;
      }
      if (!line.empty() && line.back() == '\n') line.pop_back();
      if (line.empty()) continue;
    } else {
      if (next == f.messages.size()) return 0;
      line = f.messages[next++];
    }
    rpc::ChatMessage user;
    user.role = "user";
    user.content = line;
    f.conversation.push_back(user);
    const rpc::GenerateRequest request = MakeRequest(f);
    rpc::GenerateResponse r;
    if (f.json) {
      c->generate(r, request);
      Write(JsonResult(r));
    } else {
      r = Stream(c, request, /*show_prompt=*/false);
      Write("\n");
    }
    if (const int rc = Finished(r); rc != 0) return rc;
    rpc::ChatMessage reply;
    reply.role = "assistant";
    reply.content = r.text;
    f.conversation.push_back(reply);
  }
}

int RunStatus(Connection& c) {
  rpc::ClusterStatus s;
  c->status(s);
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& r : s.ranks) {
    ranks.push_back({{"rank", r.rank},
                     {"host", r.host},
                     {"device", r.device},
                     {"q_heads", r.q_heads},
                     {"kv_heads", r.kv_heads},
                     {"head_group", r.head_group},
                     {"seq_shard", r.seq_shard},
                     {"weight_bytes", r.weight_bytes},
                     {"kv_bytes", r.kv_bytes},
                     {"kv_blocks_total", r.kv_blocks_total},
                     {"kv_blocks_used", r.kv_blocks_used},
                     {"kv_blocks_free", r.kv_blocks_free}});
  }
  nlohmann::json j = {{"model", s.model},
                      {"world_size", s.world_size},
                      {"layout", s.layout},
                      {"head_groups", s.head_groups},
                      {"seq_shards", s.seq_shards},
                      {"chat_template", s.chat_template},
                      {"max_context", s.max_context},
                      {"kv_capacity_tokens", s.kv_capacity_tokens},
                      {"block_size", s.block_size},
                      {"ranks", ranks},
                      {"queue_depth", s.queue_depth},
                      {"running", s.running},
                      {"tokens_per_second", s.tokens_per_second},
                      {"prefix_cache_hits", s.prefix_cache_hits},
                      {"prefix_cache_queries", s.prefix_cache_queries},
                      {"kv_blocks_cached", s.kv_blocks_cached},
                      {"requests_finished", s.requests_finished},
                      {"preemptions", s.preemptions}};
  Write(j.dump(2) + "\n");
  return 0;
}

int RunHealth(Connection& c) {
  rpc::Health h;
  c->health(h);
  Write(h.serving ? "serving\n" : "not serving: " + h.reason + "\n");
  return h.serving ? 0 : 1;
}

int Guarded(const ClientFlags& cf, const std::function<int(Connection&)>& body) {
  // Thrift prints its own diagnostics to stderr; the caught exception below says it once.
  apache::thrift::GlobalOutput.setOutputFunction([](const char*) {});
  try {
    Connection c(cf);
    return body(c);
  } catch (const rpc::KvshardError& e) {
    std::fprintf(stderr, "error: %s: %s\n", rpc::to_string(e.code).c_str(), e.message.c_str());
    return e.code == rpc::ErrorCode::OVERLOADED ? 3 : 2;
  } catch (const apache::thrift::TException& e) {
    std::fprintf(stderr, "error: server at %s:%d: %s\n", cf.host.c_str(), cf.port, e.what());
    return 1;
  }
}

void AddRequestFlags(CLI::App* cmd, RequestFlags* f) {
  cmd->add_option("--max-tokens", f->max_tokens, "Tokens to generate at most");
  cmd->add_option("--temperature", f->temperature, "0 = greedy");
  cmd->add_option("--top-k", f->top_k, "Sample among the k most likely (0 = all)");
  cmd->add_option("--top-p", f->top_p, "Nucleus sampling mass in (0, 1]");
  cmd->add_option("--seed", f->seed, "Sampling seed");
  cmd->add_option("--stop", f->stop, "Stop before this string (repeatable)");
  cmd->add_option("--cache-salt", f->cache_salt, "Prefix-cache isolation key (tenant)");
  cmd->add_option("--kv-budget", f->kv_budget,
                  "KV eviction: prompt positions each KV head keeps (0: all; default: the "
                  "server's)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  cmd->add_flag("--json", f->json, "Print one JSON line with the result and its timings");
}

}  // namespace

void RegisterClient(CLI::App& app, int* exit_code) {
  auto cf = std::make_shared<ClientFlags>();
  auto rf = std::make_shared<RequestFlags>();
  auto cancel_id = std::make_shared<int64_t>(0);
  CLI::App* client = app.add_subcommand("client", "Talk to a running kvshard server");
  client->add_option("--host", cf->host, "Server address");
  client->add_option("--port", cf->port, "Server port");
  client->add_option("--timeout-ms", cf->timeout_ms, "Socket timeout per call");
  client->require_subcommand(1);

  CLI::App* gen = client->add_subcommand("generate", "Stream a completion (prompt + completion)");
  gen->add_option("--prompt", rf->prompt, "Prompt text (BOS is prepended)");
  gen->add_option("--prompt-ids", rf->prompt_ids, "Prompt as comma-separated token ids")
      ->delimiter(',');
  AddRequestFlags(gen, rf.get());
  gen->callback(
      [=] { *exit_code = Guarded(*cf, [&](Connection& c) { return RunGenerate(c, *rf); }); });

  CLI::App* ask = client->add_subcommand("ask", "Ask a question about a document");
  ask->add_option("--document", rf->document, "Text file")->required();
  ask->add_option("--question", rf->question, "The question")->required();
  ask->add_option("--system", rf->system, "System message (instruct models)");
  ask->add_flag("--no-chat", rf->no_chat,
                "Send a plain prompt even when the server has a chat template");
  AddRequestFlags(ask, rf.get());
  ask->callback([=] { *exit_code = Guarded(*cf, [&](Connection& c) { return RunAsk(c, *rf); }); });

  CLI::App* chat = client->add_subcommand(
      "chat", "Chat with an instruct model: one user turn per line of stdin (or --message)");
  chat->add_option("--message", rf->messages, "A user turn (repeatable; instead of stdin)");
  chat->add_option("--system", rf->system, "System message");
  AddRequestFlags(chat, rf.get());
  chat->callback(
      [=] { *exit_code = Guarded(*cf, [&](Connection& c) { return RunChat(c, *rf); }); });

  client->add_subcommand("status", "Ranks, hosts, KV blocks, queue, tokens/s (JSON)")
      ->callback([=] { *exit_code = Guarded(*cf, RunStatus); });
  client->add_subcommand("health", "serving, or not serving and why (exit 1)")->callback([=] {
    *exit_code = Guarded(*cf, RunHealth);
  });
  CLI::App* cancel = client->add_subcommand("cancel", "Cancel a request by id");
  cancel->add_option("--id", *cancel_id, "Request id")->required();
  cancel->callback([=] {
    *exit_code = Guarded(*cf, [&](Connection& c) {
      const bool done = c->cancel(*cancel_id);
      Write(done ? "cancelled\n" : "already finished\n");
      return 0;
    });
  });
}

}  // namespace kvshard
