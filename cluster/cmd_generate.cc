// kvshard generate: one prompt through the tensor-parallel shards, text on rank 0's stdout.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "cluster/commands.h"
#include "cluster/runtime.h"
#include "coordinator/chat_template.h"
#include "coordinator/serving_engine.h"
#include "coordinator/tokenizer.h"
#include "shard/shard_worker.h"

namespace kvshard {
namespace {

struct GenerateFlags {
  ShardFlags shard;
  std::string prompt;
  std::vector<int32_t> prompt_ids;  // instead of text: raw token ids
  int64_t max_tokens = 256;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool no_kv_cache = false;
  int64_t kv_budget = 0;      // KV eviction: prompt positions each KV head keeps (0: all)
  std::string chat;           // one user turn, rendered with the model's chat template
  std::string system;         // --system: the chat's system message
  std::string chat_template;  // --chat-template NAME: overrides the model's
};

// The request as rank 0 sees it: tokenised and checked before any shard sees it.
StatusOr<RequestSpec> MakeRequest(const GenerateFlags& f, const Tokenizer& tok) {
  RequestSpec r;
  const int given = !f.prompt.empty() + !f.prompt_ids.empty() + !f.chat.empty();
  if (given > 1) return InvalidArgument("give one of --prompt, --prompt-ids and --chat");
  if (!f.chat.empty()) {
    KVS_ASSIGN_OR_RETURN(const ChatTemplate tmpl,
                         LoadChatTemplate(f.shard.model_dir, f.chat_template));
    std::vector<ChatMessage> messages;
    if (!f.system.empty()) messages.push_back({"system", f.system});
    messages.push_back({"user", f.chat});
    KVS_ASSIGN_OR_RETURN(const std::string text, RenderChat(tmpl, messages, true));
    spdlog::debug("chat prompt ({} template from {}): {:?}", ChatFormatName(tmpl.format),
                  tmpl.source, text);
    r.prompt = EncodeChat(tok, tmpl.format, text);
    r.stop_ids = EndOfTurnIds(tok, tmpl.format);
  } else if (!f.system.empty() || !f.chat_template.empty()) {
    return InvalidArgument("--system and --chat-template go with --chat");
  } else if (!f.prompt_ids.empty()) {
    r.prompt = f.prompt_ids;
  } else {
    r.prompt = tok.Encode(f.prompt, /*add_bos=*/true);
  }
  r.max_tokens = f.max_tokens;
  r.sampling = {f.temperature, f.top_k, f.top_p, f.seed};
  r.use_kv_cache = !f.no_kv_cache;
  r.kv_budget = f.kv_budget;
  return r;
}

// The one request through the serving engine's path (it stops at the model's EOS ids).
Status RunRoot(const GenerateFlags& f, const Tokenizer* tok, ServingEngine& engine) {
  KVS_ASSIGN_OR_RETURN(RequestSpec request, MakeRequest(f, *tok));
  KVS_RETURN_IF_ERROR(engine.Validate(request));
  // The prompt as the tokenizer reads it back (a chat prints only the reply), then each new
  // token as soon as it is chosen (a stop id, such as an end-of-turn token, is not emitted).
  int32_t prev = -1;
  std::string text;
  for (int32_t id : request.prompt) {
    text += tok->DecodeToken(prev, id);
    prev = id;
  }
  if (f.chat.empty()) std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  auto on_token = [&](int32_t id) {
    const std::string piece = tok->DecodeToken(prev, id);
    prev = id;
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  KVS_ASSIGN_OR_RETURN(GenerationResult result, engine.Generate(request, on_token));
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const double per_token =
      result.decode_steps > 0 ? result.decode_seconds / result.decode_steps : 0.0;
  spdlog::info(
      "{} prompt + {} generated tokens ({}), prefill {:.1f} ms, decode {:.2f} ms/token; "
      "KV blocks free after: {}/{}",
      request.prompt.size(), result.tokens.size(), result.finish_reason,
      result.prefill_seconds * 1e3, per_token * 1e3, engine.blocks().free_blocks(),
      engine.blocks().total_blocks());
  if (result.kv_positions_kept >= 0) {
    spdlog::info("KV eviction: {} of {} prompt positions kept per KV head (--kv-budget {})",
                 result.kv_positions_kept, request.prompt.size(), request.kv_budget);
  }
  if (engine.blocks().free_blocks() != engine.blocks().total_blocks()) {
    return Internal("KV blocks leaked: {} of {} free after the request",
                    engine.blocks().free_blocks(), engine.blocks().total_blocks());
  }
  return Status::Ok();
}

int RunGenerate(const GenerateFlags& f) {
  MpiSession mpi;
  if (!mpi.ok()) return ReportFailure(Internal("MPI_Init failed"), 0);
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  auto rt = StartRuntime(f.shard);
  if (!rt.ok()) return ReportFailure(rt.status(), world_rank);
  if (!rt->is_root()) {
    const Status st = RunShardWorker(*rt->model);
    if (!st.ok()) spdlog::error("{}: {}", rt->comm->Where(rt->comm->rank()), st.ToString());
    return st.ok() ? 0 : 1;
  }
  auto tok = LoadTokenizerFromModelDir(f.shard.model_dir, rt->config.vocab_size);
  ServingEngine engine(rt->model.get(), tok.ok() ? tok->get() : nullptr, ServingOptions{});
  const Status st = tok.ok() ? RunRoot(f, tok->get(), engine) : tok.status();
  // Workers always get their shutdown, whatever happened to the request.
  const Status down = engine.Shutdown();
  if (!st.ok()) return ReportFailure(st, 0);
  if (!down.ok()) return ReportFailure(down, 0);
  return 0;
}

}  // namespace

void RegisterGenerate(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt (under mpirun: TP)");
  AddShardFlags(cmd, &flags->shard);
  cmd->add_option("--prompt", flags->prompt, "Prompt text (BOS is prepended)");
  cmd->add_option("--prompt-ids", flags->prompt_ids, "Prompt as comma-separated token ids")
      ->delimiter(',');
  cmd->add_option("--max-tokens", flags->max_tokens, "Tokens to generate at most");
  cmd->add_option("--temperature", flags->temperature, "0 = greedy");
  cmd->add_option("--top-k", flags->top_k, "Sample among the k most likely (0 = all)");
  cmd->add_option("--top-p", flags->top_p, "Nucleus sampling mass in (0, 1]");
  cmd->add_option("--seed", flags->seed, "Sampling seed");
  cmd->add_option("--kv-budget", flags->kv_budget,
                  "KV eviction (SnapKV): after prefill keep this many prompt positions per KV "
                  "head and layer, scored by the last prompt tokens' attention (0: keep all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--chat", flags->chat,
                  "One user message, rendered with the model's chat template; prints the reply");
  cmd->add_option("--system", flags->system, "With --chat: the system message");
  cmd->add_option("--chat-template", flags->chat_template,
                  "With --chat: llama3, chatml, llama2 or mistral instead of the model's template");
  cmd->add_flag("--no-kv-cache", flags->no_kv_cache,
                "Recompute the whole sequence every step (to measure what the cache buys)");
  cmd->callback([flags, exit_code] { *exit_code = RunGenerate(*flags); });
}

}  // namespace kvshard
