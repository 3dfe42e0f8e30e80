// kvshard perplexity: teacher-forced perplexity of a text through the serving engine's own steps
// (any layout, any KV option), so what a KV option costs in quality is measured, not assumed.
//
// The text is tokenized once; windows of --context tokens (BOS first when the tokenizer adds one)
// slide over it by --stride tokens, each window one request whose prompt log-probabilities come
// from its prefill (RequestSpec::prompt_logprobs), and each token is scored once, in the first
// window that reaches it: with the window's tokens before it as its context (at least
// context - stride of them after the first window). perplexity = exp(mean negative log-likelihood).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cluster/commands.h"
#include "cluster/runtime.h"
#include "coordinator/serving_engine.h"
#include "coordinator/tokenizer.h"
#include "shard/shard_worker.h"

namespace kvshard {
namespace {

struct PerplexityFlags {
  ShardFlags shard;
  std::string text_file;
  int64_t context = 0;       // 0: the model's context (or the whole text when shorter)
  int64_t stride = 0;        // 0: half the context
  int64_t limit_tokens = 0;  // > 0: only the text's first tokens
  int64_t kv_budget = 0;     // > 0: each window's unscored prefix is compressed to it (SnapKV)
  bool json = false;
};

StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("--text {}: cannot open", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return DataLoss("--text {}: read failed", path);
  return ss.str();
}

// The windows over n text tokens: [begin, end) of the text in each, and from which text position
// its scored tokens start (they end at `end`).
struct Window {
  int64_t begin, end, score_from;
};

std::vector<Window> Windows(int64_t n, int64_t text_per_window, int64_t stride, bool bos) {
  std::vector<Window> out;
  // Without BOS a window's first token has nothing to be predicted from.
  int64_t scored = bos ? 0 : 1;
  int64_t end = std::min(n, text_per_window);
  for (;;) {
    const int64_t begin = std::max<int64_t>(0, end - text_per_window);
    out.push_back({begin, end, scored});
    scored = end;
    if (end == n) break;
    end = std::min(n, end + stride);
  }
  return out;
}

Status RunRoot(const PerplexityFlags& f, const Runtime& rt, const Tokenizer& tok,
               ServingEngine& engine) {
  KVS_ASSIGN_OR_RETURN(const std::string text, ReadText(f.text_file));
  std::vector<int32_t> ids = tok.Encode(text, /*add_bos=*/false);
  const std::vector<int32_t> with_bos = tok.Encode("a", true), without = tok.Encode("a", false);
  const bool bos = with_bos.size() > without.size();
  if (f.limit_tokens > 0 && static_cast<int64_t>(ids.size()) > f.limit_tokens) {
    ids.resize(f.limit_tokens);
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < 2) return InvalidArgument("--text {}: {} tokens; at least 2 are needed", f.text_file, n);
  const int64_t model_context = rt.config.max_seq_len;
  const int64_t context =
      f.context > 0 ? f.context : std::min<int64_t>(model_context, n + (bos ? 1 : 0));
  if (context > model_context) {
    return InvalidArgument("--context {} exceeds the model's context of {} tokens", context,
                           model_context);
  }
  if (context < 2) return InvalidArgument("--context {}: at least 2 tokens", context);
  const int64_t stride = f.stride > 0 ? f.stride : std::max<int64_t>(1, context / 2);
  if (stride > context - 1) {
    return InvalidArgument("--stride {} must be at most --context - 1 = {}", stride, context - 1);
  }
  if (f.kv_budget > 0 && stride > context - 2) {
    return InvalidArgument(
        "--kv-budget needs a prefix to compress before the scored tokens: --stride {} must be at "
        "most --context - 2 = {}",
        stride, context - 2);
  }
  const int64_t per_window = context - (bos ? 1 : 0);
  const std::vector<Window> windows = Windows(n, per_window, stride, bos);

  double nll = 0;
  int64_t scored = 0;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t evicted = 0, kept_min = -1;
  for (Window w : windows) {
    RequestSpec r;
    if (bos) r.prompt.push_back(tok.bos_id());
    r.prompt.insert(r.prompt.end(), ids.begin() + w.begin, ids.begin() + w.end);
    r.max_tokens = 0;
    r.prompt_logprobs = true;
    const int64_t off = bos ? 1 : 0;  // prompt index of text position p: p - begin + off
    if (f.kv_budget > 0) {
      // Every window (the first too) scores only its last `stride` tokens, each predicted after
      // the prompt before the first of them was computed and compressed to the budget (the
      // row that predicts the first scored token is the first after the eviction): the tokens
      // scored are the same for any budget, and one of the whole context evicts nothing.
      w.score_from = std::max(w.score_from, w.end - stride);
      r.kv_budget = f.kv_budget;
      r.evict_at = w.score_from - w.begin + off - 1;
      if (r.evict_at < 1) return Internal("window [{}, {}) has no prefix", w.begin, w.end);
    }
    KVS_ASSIGN_OR_RETURN(const GenerationResult result, engine.Generate(r, nullptr));
    if (r.kv_budget > 0 && r.evict_at > r.kv_budget) {
      ++evicted;
      kept_min =
          kept_min < 0 ? result.kv_positions_kept : std::min(kept_min, result.kv_positions_kept);
    }
    for (int64_t p = w.score_from; p < w.end; ++p) {
      const int64_t at = p - w.begin + off - 1;  // prompt_logprobs[i]: prompt[i + 1]
      if (at < 0 || at >= static_cast<int64_t>(result.prompt_logprobs.size())) {
        return Internal("window [{}, {}) has no log-probability for text position {}", w.begin,
                        w.end, p);
      }
      nll -= result.prompt_logprobs[at];
      ++scored;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (engine.blocks().free_blocks() != engine.blocks().total_blocks()) {
    return Internal("KV blocks leaked: {} of {} free", engine.blocks().free_blocks(),
                    engine.blocks().total_blocks());
  }
  const double mean = nll / static_cast<double>(scored);
  const double ppl = std::exp(mean);
  int64_t computed = 0;
  for (const Window& w : windows) computed += w.end - w.begin + (bos ? 1 : 0);
  if (f.json) {
    nlohmann::json out = {{"perplexity", ppl},
                          {"nll_mean", mean},
                          {"tokens", scored},
                          {"text_tokens", n},
                          {"kv_dtype", rt.kv_dtype},
                          {"sliding_window", rt.config.KvReleaseWindow()},
                          {"attention_sinks", rt.config.attention_sinks},
                          {"stream_window", rt.config.stream_window},
                          {"kv_budget", f.kv_budget},
                          {"evicted_windows", evicted},
                          {"kv_positions_kept_min", kept_min},
                          {"context", context},
                          {"stride", stride},
                          {"windows", static_cast<int64_t>(windows.size())},
                          {"seconds", seconds},
                          {"tokens_per_s", static_cast<double>(computed) / seconds},
                          {"model", f.shard.model_dir},
                          {"text", f.text_file},
                          {"tp", rt.model->layout().tp},
                          {"seq_shards", rt.model->layout().seq_shards}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf(
        "perplexity %.4f over %lld tokens (%zu windows of %lld, stride %lld; KV cache %s), "
        "%.1f s\n",
        ppl, static_cast<long long>(scored), windows.size(), static_cast<long long>(context),
        static_cast<long long>(stride), rt.kv_dtype.c_str(), seconds);
  }
  return Status::Ok();
}

int RunPerplexity(const PerplexityFlags& f) {
  MpiSession mpi;
  if (!mpi.ok()) return ReportFailure(Internal("MPI_Init failed"), 0);
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  auto rt = StartRuntime(f.shard, f.context);
  if (!rt.ok()) return ReportFailure(rt.status(), world_rank);
  if (!rt->is_root()) {
    const Status st = RunShardWorker(*rt->model);
    if (!st.ok()) spdlog::error("{}: {}", rt->comm->Where(rt->comm->rank()), st.ToString());
    return st.ok() ? 0 : 1;
  }
  auto tok = LoadTokenizerFromModelDir(f.shard.model_dir, rt->config.vocab_size);
  ServingEngine engine(rt->model.get(), tok.ok() ? tok->get() : nullptr, ServingOptions{});
  const Status st = tok.ok() ? RunRoot(f, *rt, **tok, engine) : tok.status();
  const Status down = engine.Shutdown();  // workers always get their shutdown
  if (!st.ok()) return ReportFailure(st, 0);
  if (!down.ok()) return ReportFailure(down, 0);
  return 0;
}

}  // namespace

void RegisterPerplexity(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<PerplexityFlags>();
  CLI::App* cmd = app.add_subcommand(
      "perplexity", "Teacher-forced perplexity of a text file (under mpirun: any layout)");
  AddShardFlags(cmd, &f->shard);
  cmd->add_option("--text", f->text_file, "The text file (UTF-8)")->required();
  cmd->add_option("--context", f->context,
                  "Tokens per window, BOS included (default: the model's context)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 30));
  cmd->add_option("--stride", f->stride,
                  "Tokens each window moves on (default: half the context; at most context - 1)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--kv-budget", f->kv_budget,
                  "KV eviction (SnapKV): each window scores its last --stride tokens after its "
                  "prefix's KV is compressed to this many positions per KV head")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--limit-tokens", f->limit_tokens, "Score only the text's first N tokens")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 40));
  cmd->add_flag("--json", f->json,
                "One JSON object: perplexity, tokens, kv_dtype, context, stride, windows, ...");
  cmd->callback([f, exit_code] { *exit_code = RunPerplexity(*f); });
}

}  // namespace kvshard
