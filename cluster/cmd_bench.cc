// kvshard bench: decode speed against the memory-bandwidth ceiling measured in the same run.
//
// A decode step must read every weight of every rank once plus the KV cache of the context, so
// its floor is decode_bytes_per_token / mem_read_gbs. The ceiling is a streaming read on the same
// number of threads (every rank reading at once), measured here, not quoted. Prefill is compared
// with the compute ceiling measured the same way (kernels/cpu/compute_peak.h): prefill_gflops
// (PrefillFlop / the prefill's seconds) over peak_gflops is prefill_fraction.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "cluster/commands.h"
#include "cluster/runtime.h"
#include "coordinator/serving_engine.h"
#include "kernels/cpu/compute_peak.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/stream_read.h"
#include "shard/shard_worker.h"
#ifdef KVSHARD_HAVE_CUDA
#include "kernels/cuda/copy_bandwidth.h"
#endif

namespace kvshard {
namespace {

struct BenchFlags {
  ShardFlags shard;
  int64_t context = 512;
  int64_t gen = 32;
  bool json = false;
  bool compare_no_cache = false;
  int64_t no_cache_steps = 4;
  int64_t read_buffer_mib = 1024;
  int64_t warmup_tokens = 512;  // one untimed request first (0: none)
};

struct Totals {
  double weights_bytes = 0;        // every rank's weights in memory
  double decode_weight_bytes = 0;  // what a decode step reads of them
  double kv_bytes_per_token = 0;   // the cluster's KV bytes for one token (replicas included;
                                   // each token lives on one seq shard of every head group)
  double read_gbs = 0;             // all ranks at once: host read (CPU) or device copy (GPU) GB/s
  double kv_bytes_max_rank = 0;    // the largest rank's KV pool
  double weights_max_rank = 0;     // the largest rank's weights
  double peak_gflops = 0;          // CPU ranks: the f32 FMA probe, every rank at once, summed
  double bf16_peak_gflops = 0;     // the bf16 dot-product probe likewise; 0 without one
  double amx_peak_gflops = 0;      // the AMX bf16 tile probe likewise; 0 without AMX
};

// Runs on every rank at once, before rank 0 starts driving steps.
StatusOr<Totals> MeasureTotals(Runtime& rt, int64_t buffer_bytes) {
  KVS_RETURN_IF_ERROR(rt.comm->Barrier());
  // The ceiling where the weights live: a host streaming read on CPU ranks, a device-to-device
  // copy on GPU ranks (every rank measuring its own memory at once, summed).
  double ceiling = 0;
  Status local = Status::Ok();
  if (rt.device) {
#ifdef KVSHARD_HAVE_CUDA
    auto gbs = cuda::MeasureDeviceCopyGbs(static_cast<size_t>(buffer_bytes), 5);
    if (gbs.ok()) ceiling = *gbs;
    local = gbs.ok() ? Status::Ok() : gbs.status();
#endif
  } else {
    ceiling = measure_read_bandwidth_gbs(buffer_bytes, rt.threads, 3);
  }
  KVS_RETURN_IF_ERROR(AgreeOnStatus(*rt.comm, local));
  // The compute ceilings on CPU ranks, every rank probing at once as it reads at once above.
  double peaks[3] = {0, 0, 0};
  if (!rt.device) {
    KVS_RETURN_IF_ERROR(rt.comm->Barrier());
    peaks[0] = measure_fma_peak_gflops(rt.threads, 3);
    peaks[1] = measure_bf16_dot_peak_gflops(rt.threads, 3).value_or(0.0);
    peaks[2] = measure_amx_bf16_peak_gflops(rt.threads, 3).value_or(0.0);
  }
  KVS_RETURN_IF_ERROR(rt.comm->AllReduceSumDouble(peaks, 3));
  // A rank's KV bytes per token are for the tokens it holds: 1 / seq_shards of them.
  const double shards = static_cast<double>(rt.model->layout().seq_shards);
  double v[4] = {static_cast<double>(rt.model->weight_bytes()),
                 static_cast<double>(rt.model->decode_read_bytes()),
                 static_cast<double>(rt.model->kv_bytes_per_token()) / shards, ceiling};
  KVS_RETURN_IF_ERROR(rt.comm->AllReduceSumDouble(v, 4));
  // The largest rank, by the same sum over a vector that only one rank fills per entry.
  std::vector<double> per_rank(2 * rt.comm->size(), 0.0);
  per_rank[2 * rt.comm->rank()] = static_cast<double>(rt.model->kv_bytes());
  per_rank[2 * rt.comm->rank() + 1] = static_cast<double>(rt.model->weight_bytes());
  KVS_RETURN_IF_ERROR(rt.comm->AllReduceSumDouble(per_rank.data(), per_rank.size()));
  Totals t{v[0], v[1], v[2], v[3]};
  t.peak_gflops = peaks[0];
  t.bf16_peak_gflops = peaks[1];
  t.amx_peak_gflops = peaks[2];
  for (int r = 0; r < rt.comm->size(); ++r) {
    t.kv_bytes_max_rank = std::max(t.kv_bytes_max_rank, per_rank[2 * r]);
    t.weights_max_rank = std::max(t.weights_max_rank, per_rank[2 * r + 1]);
  }
  return t;
}

// FLOP of prefilling `prompt` tokens (a multiply-add is 2): every projection of every token, the
// causal attention (token p scores and sums p + 1 positions: 4 * head_dim FLOP each per head),
// and the output head for the last token's logits. The same whatever the layout.
double PrefillFlop(const ModelConfig& c, int64_t prompt) {
  const double q = static_cast<double>(c.n_heads * c.head_dim);
  const double kv = static_cast<double>(c.n_kv_heads * c.head_dim);
  const double dim = static_cast<double>(c.dim), ffn = static_cast<double>(c.hidden_dim);
  const double per_token = 2.0 * c.n_layers * (dim * (q + 2 * kv) + q * dim + 3 * dim * ffn);
  const double p = static_cast<double>(prompt);
  const double attention = 4.0 * c.n_layers * q * p * (p + 1) / 2;
  return per_token * p + attention + 2.0 * c.vocab_size * dim;
}

std::vector<int32_t> RandomPrompt(int64_t n, int64_t vocab, uint32_t seed = 1234) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(3, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> p(n);
  for (auto& t : p) t = pick(rng);
  return p;
}

Status RunRoot(const BenchFlags& f, Runtime& rt, ServingEngine& engine, const Totals& totals) {
  if (f.warmup_tokens > 0) {
    // Untimed: the first request pays for the OpenMP team, the kernels' scratch and packing
    // buffers and the first touch of the KV pool's pages. Other tokens than the timed prompt's,
    // so the prefix cache gives the timed request nothing.
    RequestSpec warm;
    warm.prompt = RandomPrompt(std::min(f.warmup_tokens, f.context), rt.config.vocab_size, 99);
    warm.max_tokens = 2;
    warm.ignore_eos = true;
    KVS_RETURN_IF_ERROR(engine.Generate(warm, nullptr).status());
  }
  RequestSpec req;
  req.prompt = RandomPrompt(f.context, rt.config.vocab_size);
  req.max_tokens = f.gen;
  req.ignore_eos = true;  // every run times all --gen tokens
  KVS_ASSIGN_OR_RETURN(GenerationResult cached, engine.Generate(req, nullptr));
  if (cached.decode_steps == 0) return InvalidArgument("--gen must be at least 2 to time decode");
  const double step_s = cached.decode_seconds / cached.decode_steps;
  const int64_t plan_bytes = engine.last_plan_bytes();  // of the last decode step
  // KV read per step grows with the sequence; the mean context over the timed steps.
  const double mean_ctx = f.context + (cached.decode_steps + 1) / 2.0;
  const double decode_bytes = totals.decode_weight_bytes + mean_ctx * totals.kv_bytes_per_token;
  const double prefill_gflops = PrefillFlop(rt.config, f.context) / cached.prefill_seconds / 1e9;
  nlohmann::json out = {
      {"model", f.shard.model_dir},
      {"device", rt.device_name},
      {"isa", simd::Isa()},
      {"gemm", matmul_gemm_description()},
      {"tp", rt.comm->size()},
      {"head_groups", rt.model->layout().head_groups},
      {"seq_shards", rt.model->layout().seq_shards},
      {"max_context_tokens", engine.kv_capacity_tokens()},
      {"kv_bytes_per_rank", totals.kv_bytes_max_rank},
      {"weights_bytes_per_rank", totals.weights_max_rank},
      {"threads", rt.threads * rt.comm->size()},
      {"threads_per_rank", rt.threads},
      {"context", f.context},
      {"gen", f.gen},
      {"kv_dtype", f.shard.kv_dtype},
      {"weight_dtype", rt.model->weight_dtype()},
      {"gemm_dtype", f.shard.gemm_dtype},
      {"prefill_tokens_per_s", f.context / cached.prefill_seconds},
      {"prefill_gflops", prefill_gflops},
      {"decode_tokens_per_s", 1.0 / step_s},
      {"decode_ms_per_token", step_s * 1e3},
      {"weights_bytes", totals.weights_bytes},
      {"kv_bytes_per_token", totals.kv_bytes_per_token},
      {"kv_replicas", rt.model->layout().kv_replicas},
      {"decode_bytes_per_token", decode_bytes},
      {rt.device ? "device_copy_gbs" : "mem_read_gbs", totals.read_gbs},
      {"achieved_gbs", decode_bytes / step_s / 1e9},
      {"bandwidth_fraction", decode_bytes / step_s / (totals.read_gbs * 1e9)},
      {"plan_bytes_per_decode_step", plan_bytes},
  };
  if (!rt.device) {
    out["peak_gflops"] = totals.peak_gflops;
    out["prefill_fraction"] = prefill_gflops / totals.peak_gflops;
    if (totals.bf16_peak_gflops > 0) {
      out["bf16_peak_gflops"] = totals.bf16_peak_gflops;
      out["prefill_bf16_fraction"] = prefill_gflops / totals.bf16_peak_gflops;
    } else {
      out["bf16_peak_gflops"] = nullptr;  // no bf16 dot-product instruction in this build
    }
    if (totals.amx_peak_gflops > 0) {
      out["amx_bf16_peak_gflops"] = totals.amx_peak_gflops;
      out["prefill_amx_fraction"] = prefill_gflops / totals.amx_peak_gflops;
    } else {
      out["amx_bf16_peak_gflops"] = nullptr;  // no AMX-BF16, or the kernel refused the tiles
    }
  }
  if (!rt.device && f.shard.gemm_dtype == "bf16") {
    out["gemm_bf16"] = gemm_bf16_description();  // the path of products with bf16 inputs
  }
  if (f.compare_no_cache) {
    RequestSpec nc = req;
    nc.use_kv_cache = false;
    nc.max_tokens = std::max<int64_t>(2, f.no_cache_steps + 1);
    KVS_ASSIGN_OR_RETURN(GenerationResult recompute, engine.Generate(nc, nullptr));
    const double nc_step = recompute.decode_seconds / recompute.decode_steps;
    out["no_cache_decode_tokens_per_s"] = 1.0 / nc_step;
    out["kv_cache_speedup"] = nc_step / step_s;
  }
  if (engine.blocks().free_blocks() != engine.blocks().total_blocks()) {
    return Internal("KV blocks leaked during the benchmark");
  }
  if (f.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%s\n", out.dump(2).c_str());
  }
  return Status::Ok();
}

int RunBench(const BenchFlags& f) {
  MpiSession mpi;
  if (!mpi.ok()) return ReportFailure(Internal("MPI_Init failed"), 0);
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  auto rt = StartRuntime(f.shard, f.context + f.gen);  // (--kv-memory, when given, rules)
  if (!rt.ok()) return ReportFailure(rt.status(), world_rank);
  auto totals = MeasureTotals(*rt, f.read_buffer_mib << 20);
  if (!totals.ok()) return ReportFailure(totals.status(), world_rank);
  if (!rt->is_root()) {
    const Status st = RunShardWorker(*rt->model);
    return st.ok() ? 0 : 1;
  }
  ServingEngine engine(rt->model.get(), /*tokenizer=*/nullptr, ServingOptions{});
  const Status st = RunRoot(f, *rt, engine, *totals);
  const Status down = engine.Shutdown();
  if (!st.ok()) return ReportFailure(st, 0);
  return down.ok() ? 0 : ReportFailure(down, 0);
}

}  // namespace

void RegisterBench(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure decode against the memory ceiling");
  AddShardFlags(cmd, &f->shard);
  cmd->add_option("--context", f->context, "Prompt tokens before decoding")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--gen", f->gen, "Tokens to generate (timed: all but the first)")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_flag("--json", f->json, "One JSON object on one line");
  cmd->add_flag("--compare-no-cache", f->compare_no_cache,
                "Also time recompute-everything decode at the same context");
  cmd->add_option("--no-cache-steps", f->no_cache_steps, "Recompute steps to time");
  cmd->add_option("--read-buffer-mib", f->read_buffer_mib, "Size of the bandwidth probe buffer");
  cmd->add_option("--warmup-tokens", f->warmup_tokens,
                  "Prompt tokens of one untimed request run first (at most --context; 0: none)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  cmd->callback([f, exit_code] { *exit_code = RunBench(*f); });
}

}  // namespace kvshard
