// kvshard serve: under mpirun, rank 0 runs the Thrift server and the engine loop, every other
// rank runs its shard. SIGTERM/SIGINT on rank 0 stops cleanly: no new requests, in-flight ones get
// the grace period, then every rank leaves and exits 0.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cluster/commands.h"
#include "cluster/runtime.h"
#include "coordinator/chat_template.h"
#include "coordinator/rpc/metrics_http.h"
#include "coordinator/rpc/server.h"
#include "coordinator/rpc/service.h"
#include "coordinator/serving_engine.h"
#include "coordinator/tokenizer.h"
#include "shard/shard_worker.h"
#include "transport/plan_broadcast.h"

namespace kvshard {
namespace {

struct ServeFlags {
  ShardFlags shard;
  LivenessOptions liveness;
  RpcServerOptions rpc;
  ServingOptions serving;
  int64_t kv_budget = 0;  // the kv_budget of requests that name none
  int metrics_port = 0;
  std::string pid_file;
  std::string chat_template;  // overrides the model's (llama3, chatml, llama2, mistral)
};

// Without --kv-blocks, the pool holds this many sequences of the model's whole context.
constexpr int64_t kDefaultServeSequences = 8;

std::atomic<ServingEngine*> g_engine{nullptr};

// Ends the whole job after a failure that left collectives pending (a rank gone or stuck): a
// clean MPI_Finalize would wait for them forever. MPI_Abort has mpirun kill every rank; the
// alarm ends this process even if the abort itself cannot reach mpirun (a host cut off).
[[noreturn]] void AbortJob(int code) {
  alarm(5);
  MPI_Abort(MPI_COMM_WORLD, code);
  _exit(code);
}

void OnStopSignal(int) {
  if (ServingEngine* e = g_engine.load()) e->RequestStop();
}

// Every rank's host, heads and KV bytes, on rank 0 (for status() and /metrics).
StatusOr<ClusterInfo> GatherClusterInfo(Runtime& rt, const ServeFlags& f) {
  const TpLayout& l = rt.model->layout();
  nlohmann::json mine = {{"host", rt.comm->Where(rt.comm->rank())},
                         {"kv_bytes", rt.model->kv_bytes()},
                         {"q_heads", l.q_heads},
                         {"kv_heads", l.kv_heads},
                         {"head_group", l.group},
                         {"seq_shard", l.shard},
                         {"weight_bytes", rt.model->weight_bytes()}};
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  mine["host"] = host;
  mine["device"] = rt.device_name;
  KVS_ASSIGN_OR_RETURN(std::vector<std::string> all, rt.comm->GatherStrings(mine.dump(), 0));
  ClusterInfo info;
  info.model = f.shard.model_dir;
  info.layout = l.seq_shards == 1
                    ? fmt::format("tp={}", l.tp)
                    : fmt::format("{}x{} (head groups x seq shards)", l.head_groups, l.seq_shards);
  info.head_groups = l.head_groups;
  info.seq_shards = l.seq_shards;
  info.block_size = static_cast<int32_t>(rt.model->block_size());
  // What a request's prompt + max_tokens may reach: the model's context, or with attention sinks
  // the positions the block tables address (Validate's bound).
  info.max_context = static_cast<int32_t>(rt.config.MaxPositions());
  info.default_kv_budget = f.kv_budget;
  for (size_t r = 0; r < all.size(); ++r) {
    const nlohmann::json j = nlohmann::json::parse(all[r], nullptr, false);
    if (j.is_discarded()) return Internal("rank {} sent unreadable start-up information", r);
    RankInfo ri;
    ri.rank = static_cast<int>(r);
    ri.host = j.value("host", "");
    ri.kv_bytes = j.value("kv_bytes", int64_t{0});
    ri.device = j.value("device", "cpu");
    ri.q_heads = j.value("q_heads", 0);
    ri.kv_heads = j.value("kv_heads", 0);
    ri.head_group = j.value("head_group", 0);
    ri.seq_shard = j.value("seq_shard", 0);
    ri.weight_bytes = j.value("weight_bytes", int64_t{0});
    info.ranks.push_back(ri);
  }
  return info;
}

Status ServeRoot(const ServeFlags& f, Runtime& rt, ClusterInfo info) {
  KVS_ASSIGN_OR_RETURN(auto tokenizer,
                       LoadTokenizerFromModelDir(f.shard.model_dir, rt.config.vocab_size));
  // The chat template for requests with messages: the model's, or --chat-template's. A model
  // without one (or with one of another family) still serves prompts; messages are refused.
  auto chat = LoadChatTemplate(f.shard.model_dir, f.chat_template);
  if (chat.ok()) {
    info.chat = *chat;
    spdlog::info("chat template: {} (from {})", ChatFormatName(chat->format), chat->source);
  } else if (!f.chat_template.empty()) {
    return chat.status();
  } else {
    spdlog::info("no chat template: requests with messages are refused ({})",
                 chat.status().message());
  }
  ServingOptions serving = f.serving;
  if (const char* delay = std::getenv("KVSHARD_DEBUG_STEP_DELAY_MS")) {
    serving.debug_step_delay_ms = std::atoi(delay);
    spdlog::warn("KVSHARD_DEBUG_STEP_DELAY_MS: every step sleeps {} ms (tests only)",
                 serving.debug_step_delay_ms);
  }
  ServingEngine engine(rt.model.get(), tokenizer.get(), serving);
  if (const Status st = engine.CheckKvBudget(f.kv_budget); !st.ok()) {
    return InvalidArgument("--kv-budget {}: {}", f.kv_budget, st.message());
  }
  auto factory = std::make_shared<HandlerFactory>(&engine, tokenizer.get(), info);
  KVS_ASSIGN_OR_RETURN(auto rpc, RpcServer::Start(factory, f.rpc));
  std::unique_ptr<MetricsServer> metrics;
  if (f.metrics_port > 0) {
    KVS_ASSIGN_OR_RETURN(metrics, MetricsServer::Start(&engine, info, f.rpc.host, f.metrics_port));
  }
  if (!f.pid_file.empty()) {
    std::ofstream(f.pid_file) << getpid() << "\n";
  }
  g_engine.store(&engine);
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  spdlog::info("ready: {} ranks, KV capacity {} tokens per request, queue bound {}",
               info.ranks.size(), engine.kv_capacity_tokens(), f.serving.max_queue);
  const Status st = engine.Run();
  g_engine.store(nullptr);
  if (!st.ok()) {
    // Let clients read why their requests failed; then the job ends (non-zero, every rank).
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (!engine.AllDelivered() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    rpc->Stop();
    if (metrics) metrics->Stop();
    return st;
  }
  // Let clients collect the ends of their requests before the connections close.
  const auto linger_end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!engine.AllDelivered() && std::chrono::steady_clock::now() < linger_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  rpc->Stop();
  if (metrics) metrics->Stop();
  const EngineSnapshot s = engine.Snapshot();
  spdlog::info("stopped: {} requests finished, KV blocks free {}/{}", s.requests_finished,
               s.kv_blocks_free, s.kv_blocks_total);
  return st;
}

int RunServe(const ServeFlags& f) {
  MpiSession mpi;
  if (!mpi.ok()) return ReportFailure(Internal("MPI_Init failed"), 0);
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  // The KV pool: by default room for several sequences of the whole context.
  int64_t kv_tokens = 0;
  if (f.shard.kv_blocks == 0) {
    auto config = LoadModelConfig(f.shard.model_dir);
    if (config.ok()) kv_tokens = kDefaultServeSequences * config->max_seq_len;
  }
  ShardFlags shard = f.shard;
  shard.max_seqs = f.serving.max_seqs;  // a table slot on every rank for each running sequence
  auto rt = StartRuntime(shard, kv_tokens);
  if (!rt.ok()) return ReportFailure(rt.status(), world_rank);
  auto info = GatherClusterInfo(*rt, f);
  if (!info.ok()) return ReportFailure(info.status(), world_rank);
  // Deadlines and heartbeats from here on. Shards give collectives twice rank 0's deadline, so
  // that when a rank fails, rank 0 is the one that notices first and tells the clients.
  const Status live = rt->comm->EnableLiveness(f.liveness, rt->is_root() ? 1.0 : 2.0);
  if (!live.ok()) return ReportFailure(live, world_rank);
  if (!rt->is_root()) {
    // Shards stop when rank 0 says so; a signal from mpirun alone must not cut a drain short.
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    const Status st = RunShardWorker(*rt->model);
    if (st.ok()) return 0;
    spdlog::error("{}: {}", rt->comm->Where(rt->comm->rank()), st.ToString());
    AbortJob(1);
  }
  const Status st = ServeRoot(f, *rt, *info);
  if (!st.ok()) {
    spdlog::error("not serving: {}", st.ToString());
    AbortJob(1);
  }
  const Status down = BroadcastShutdown(*rt->comm);
  if (!down.ok()) {
    spdlog::error("shutdown: {}", down.ToString());
    AbortJob(1);
  }
  // The clean end, for a supervisor that cannot trust mpirun's exit status (kvshard-launch runs
  // mpirun in recovery mode, whose status stays 0 after an abort).
  if (!f.pid_file.empty()) std::ofstream(f.pid_file + ".clean") << "0\n";
  return 0;
}

}  // namespace

void RegisterServe(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ServeFlags>();
  flags->shard.kv_blocks = 0;
  CLI::App* cmd =
      app.add_subcommand("serve", "Serve the model over Thrift (run under mpirun; rank 0 listens)");
  AddShardFlags(cmd, &flags->shard);
  cmd->add_option("--host", flags->rpc.host, "Address to bind (default 127.0.0.1)");
  cmd->add_option("--port", flags->rpc.port, "Thrift port")->check(CLI::Range(1, 65535));
  cmd->add_option("--max-connections", flags->rpc.max_connections, "Concurrent connections")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--idle-timeout-ms", flags->rpc.idle_timeout_ms,
                  "Drop a connection silent this long (mid-frame or between calls)")
      ->check(CLI::Range(100, 3600000));
  cmd->add_option("--max-queue", flags->serving.max_queue,
                  "Requests waiting to run; beyond it submit/generate answer OVERLOADED")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--kv-budget", flags->kv_budget,
                  "KV eviction (SnapKV): prompt positions each KV head keeps, for requests that "
                  "name no kv_budget (0: keep all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-seqs", flags->serving.max_seqs, "Sequences batched in one step")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--shutdown-grace-s", flags->serving.shutdown_grace_s,
                  "On SIGTERM/SIGINT: seconds in-flight requests get before they are cancelled")
      ->check(CLI::Range(0.0, 3600.0));
  cmd->add_option("--metrics-port", flags->metrics_port,
                  "Prometheus /metrics on this port (0 = off)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--chat-template", flags->chat_template,
                  "Chat template for requests with messages: llama3, chatml, llama2 or mistral "
                  "(default: the model's)");
  cmd->add_option("--pid-file", flags->pid_file,
                  "Rank 0 writes its pid here once serving, and FILE.clean after a clean stop");
  cmd->add_option("--step-timeout-s", flags->liveness.step_timeout_s,
                  "A collective (all-reduce, plan broadcast, gather) that takes longer fails the "
                  "server: a rank is gone or stuck")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--heartbeat-interval-s", flags->liveness.heartbeat_interval_s,
                  "Heartbeats between rank 0 and every shard")
      ->check(CLI::Range(0.01, 60.0));
  cmd->add_option("--heartbeat-timeout-s", flags->liveness.heartbeat_timeout_s,
                  "Silence after which a rank is declared gone")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->callback([flags, exit_code] { *exit_code = RunServe(*flags); });
}

}  // namespace kvshard
