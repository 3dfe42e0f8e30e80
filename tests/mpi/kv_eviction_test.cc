// KV eviction to a budget (SnapKV, plan/kv_eviction.h) end to end. Runs under `mpirun -np 4`:
// the world is split into grids (1x1, 1x2, 2x1, 2x2, 4x1), each runs the same requests, world
// rank 0 compares. What must hold:
//   - the logits of every sampling step equal a dense reference written here (its own forward
//     and its own implementation of the policy: for each layer and KV head, the positions the
//     window's queries attend to most, kept with the window; later tokens attend to those and to
//     each other) within 1e-4, with the f32 cache on the 1x1 grid;
//   - every grid gives the same tokens and logits (1e-4), also 4x1, where each KV head is
//     replicated over two head groups whose query heads score it together; f32 and int8 caches;
//   - the budget is never exceeded: after the prompt, the request holds at most the blocks of
//     budget + tokens since; it reports the positions kept; a prompt within the budget is
//     untouched (equal to no budget);
//   - a batch of evicting and plain requests, preempted for lack of blocks and sharing a prompt
//     through the prefix cache, gives each request the tokens it gets alone; no block leaks.
#include "plan/kv_eviction.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>

#include "coordinator/serving_engine.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "shard/rope_frequencies.h"
#include "shard/safetensors.h"
#include "shard/shard_model.h"
#include "shard/shard_worker.h"
#include "tests/mpi/mpi_test_util.h"
#include "transport/mpi_communicator.h"

namespace kvshard {
namespace {

constexpr int64_t kBlockSize = 4;  // positions of one logical block on every grid
constexpr int64_t kPrompt = 45, kBudget = 16, kNew = 20;

std::vector<int32_t> Prompt(int64_t n, int salt, int64_t vocab) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < n; ++i)
    p.push_back(static_cast<int32_t>((i * 37 + salt * 11 + 5) % vocab));
  return p;
}

struct Outcome {
  bool valid = true;
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  std::vector<std::vector<float>> plain_logits, within_logits;  // no budget; budget > prompt
  int64_t kept = -1, within_kept = -1;
  bool budget_held = true;  // every step's blocks within budget + tokens since
  std::vector<std::vector<int32_t>> batch;
  int64_t preemptions = 0;
};

void RunToEnd(ServingEngine& engine) {
  for (;;) {
    auto stepped = engine.Step();
    EXPECT_TRUE(stepped.ok()) << stepped.status().ToString();
    if (!stepped.ok() || !*stepped) break;
  }
}

Outcome RunOnGrid(const std::string& model_dir, int groups, int shards, DType kv_dtype) {
  const int size = groups * shards;
  auto comm = GroupOf(size);
  auto config = LoadModelConfig(model_dir);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  Outcome out;
  if (!MakeTpLayout(*config, size, 0, shards).ok()) {
    out.valid = false;
    return out;
  }
  ShardOptions opt;
  opt.block_size = kBlockSize / shards;
  opt.seq_shards = shards;
  opt.kv_dtype = kv_dtype;
  opt.num_blocks = 24;           // 96 positions: the batch below preempts
  opt.max_tokens_per_step = 16;  // the 45-token prompt runs as 3 chunks
  auto model = ShardModel::Load(model_dir, *config, opt, comm->get());
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  if ((*comm)->rank() != 0) {
    const Status st = RunShardWorker(**model);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return out;
  }
  ServingEngine engine(model->get(), /*tokenizer=*/nullptr, ServingOptions{});
  const BlockManager& blocks = engine.blocks();
  RequestSpec req;
  req.prompt = Prompt(kPrompt, 0, config->vocab_size);
  req.max_tokens = kNew;
  req.ignore_eos = true;
  req.kv_budget = kBudget;
  // Step by step: the blocks held against the budget.
  auto stream = engine.Submit(req);
  EXPECT_TRUE(stream.ok()) << stream.status().ToString();
  if (!stream.ok()) return out;
  for (;;) {
    auto stepped = engine.Step();
    EXPECT_TRUE(stepped.ok()) << stepped.status().ToString();
    if (!stepped.ok() || !*stepped) break;
    std::lock_guard<std::mutex> lock((*stream)->mu);
    if ((*stream)->finished || (*stream)->tokens.empty()) continue;
    // The prompt is compressed; the last sampled token's KV is not computed yet.
    const int64_t entries = kBudget + static_cast<int64_t>((*stream)->tokens.size()) - 1;
    if (blocks.HeldBlocks((*stream)->id) > blocks.BlocksFor(entries)) out.budget_held = false;
  }
  {
    std::lock_guard<std::mutex> lock((*stream)->mu);
    EXPECT_TRUE((*stream)->finished);
    EXPECT_EQ((*stream)->finish_reason, "length") << (*stream)->error;
    out.tokens = (*stream)->tokens;
    out.kept = (*stream)->kv_positions_kept;
  }
  EXPECT_EQ(blocks.free_blocks(), blocks.total_blocks()) << "KV blocks leaked";
  auto traced = engine.Generate(req, nullptr, &out.logits);
  EXPECT_TRUE(traced.ok()) << traced.status().ToString();
  if (traced.ok()) {
    EXPECT_EQ(traced->tokens, out.tokens) << "the repeat differs";
  }
  // No budget, and a budget the prompt fits in (untouched).
  RequestSpec plain = req;
  plain.kv_budget = 0;
  EXPECT_TRUE(engine.Generate(plain, nullptr, &out.plain_logits).ok());
  RequestSpec within = req;
  within.kv_budget = kPrompt + 5;
  auto w = engine.Generate(within, nullptr, &out.within_logits);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  if (w.ok()) out.within_kept = w->kv_positions_kept;
  EXPECT_EQ(blocks.free_blocks(), blocks.total_blocks()) << "KV blocks leaked";

  // A batch: evicting requests (budgets 8 and 12) and plain ones, two of them on the same prompt
  // (the plain one's blocks enter the prefix cache; the evicting one must not use them, nor
  // change them for the plain one run later alone), more than the blocks hold at once.
  std::vector<RequestSpec> specs;
  for (int r = 0; r < 6; ++r) {
    RequestSpec spec;
    spec.prompt = Prompt(20 + 5 * r, r % 4, config->vocab_size);
    spec.max_tokens = 24;
    spec.ignore_eos = true;
    spec.kv_budget = r % 2 == 0 ? 8 + 2 * r : 0;
    specs.push_back(spec);
  }
  std::vector<std::shared_ptr<RequestStream>> batch;
  for (const RequestSpec& spec : specs) {
    auto st = engine.Submit(spec);
    EXPECT_TRUE(st.ok()) << st.status().ToString();
    if (st.ok()) batch.push_back(*st);
  }
  RunToEnd(engine);
  out.preemptions = engine.Snapshot().preemptions;
  for (size_t r = 0; r < batch.size(); ++r) {
    std::vector<int32_t> together;
    {
      std::lock_guard<std::mutex> lock(batch[r]->mu);
      together = batch[r]->tokens;
      EXPECT_EQ(batch[r]->kv_positions_kept,
                specs[r].kv_budget > 0
                    ? std::min<int64_t>(specs[r].kv_budget, specs[r].prompt.size())
                    : -1);
    }
    auto alone = engine.Generate(specs[r], nullptr);
    EXPECT_TRUE(alone.ok()) << alone.status().ToString();
    if (alone.ok()) {
      EXPECT_EQ(together, alone->tokens) << "batched request " << r << " != alone";
    }
    out.batch.push_back(together);
  }
  EXPECT_EQ(blocks.free_blocks(), blocks.total_blocks()) << "KV blocks leaked";
  EXPECT_TRUE(engine.Shutdown().ok());
  return out;
}

// --- The reference: a dense forward with the policy applied by masks. ---

// The positions KV head h keeps, from the window's queries q [L][H * hd] and the keys k
// [L][KVH * hd] (both rotated): the policy as plan/kv_eviction.h states it, in double.
std::vector<std::vector<int32_t>> ReferenceKept(const std::vector<float>& q,
                                                const std::vector<float>& k, int64_t H, int64_t KVH,
                                                int64_t hd, int64_t L, int64_t keep) {
  const int64_t w = SnapKvWindow(keep), prefix = L - w, g = H / KVH;
  std::vector<std::vector<int32_t>> kept(KVH);
  for (int64_t h = 0; h < KVH; ++h) {
    std::vector<double> score(prefix, 0.0);
    for (int64_t qh = h * g; qh < (h + 1) * g; ++qh) {
      for (int64_t t = prefix; t < L; ++t) {
        std::vector<double> s(t + 1);
        for (int64_t p = 0; p <= t; ++p) {
          double dot = 0;
          for (int64_t d = 0; d < hd; ++d) {
            dot += static_cast<double>(q[(t * H + qh) * hd + d]) * k[(p * KVH + h) * hd + d];
          }
          s[p] = dot / std::sqrt(static_cast<double>(hd));
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int64_t p = 0; p < prefix; ++p) score[p] += s[p] / sum;
      }
    }
    std::vector<std::pair<double, int32_t>> ranked;
    for (int64_t p = 0; p < prefix; ++p) {
      double pooled = 0;
      for (int64_t d = p - kSnapKvPool / 2; d <= p + kSnapKvPool / 2; ++d) {
        if (d >= 0 && d < prefix) pooled += score[d];
      }
      ranked.emplace_back(-pooled / kSnapKvPool, static_cast<int32_t>(p));
    }
    std::sort(ranked.begin(), ranked.end());
    for (int64_t i = 0; i < keep - w; ++i) kept[h].push_back(ranked[i].second);
    std::sort(kept[h].begin(), kept[h].end());
    for (int64_t p = prefix; p < L; ++p) kept[h].push_back(static_cast<int32_t>(p));
  }
  return kept;
}

// Logits of rows [from, n) of `tokens` run densely; keep > 0: the prompt [0, L) is compressed to
// `keep` positions per KV head and layer for the rows from L on.
std::vector<std::vector<float>> DenseReference(const std::string& model_dir,
                                               const std::vector<int32_t>& tokens, int64_t L,
                                               int64_t keep, int64_t from) {
  auto config = LoadModelConfig(model_dir);
  auto layout = MakeTpLayout(*config, 1, 0);
  auto checkpoint = Checkpoint::Open(model_dir);
  auto weights = LoadShardWeights(**checkpoint, *config, *layout);
  EXPECT_TRUE(weights.ok()) << weights.status().ToString();
  const ModelConfig& c = *config;
  const int64_t n = static_cast<int64_t>(tokens.size()), dim = c.dim, hd = c.head_dim;
  const int64_t H = c.n_heads, KVH = c.n_kv_heads, g = H / KVH;
  const std::vector<float> inv_freq = RopeInverseFrequencies(c);
  auto f32 = [](const HostMatrix& m) { return static_cast<const float*>(m.data()); };
  std::vector<float> x(n * dim), xn(n * dim), q(n * H * hd), k(n * KVH * hd), v(n * KVH * hd);
  std::vector<float> att(n * H * hd), part(n * dim), gate(n * c.hidden_dim), up(n * c.hidden_dim);
  std::vector<int32_t> pos(n);
  std::iota(pos.begin(), pos.end(), 0);
  embedding(x.data(), f32(weights->embedding), tokens.data(), n, dim);
  for (const LayerWeights& lw : weights->layers) {
    rmsnorm(xn.data(), x.data(), lw.attn_norm.data(), n, dim, c.rms_norm_eps);
    matmul(q.data(), xn.data(), f32(lw.wq), n, dim, H * hd);
    matmul(k.data(), xn.data(), f32(lw.wk), n, dim, KVH * hd);
    matmul(v.data(), xn.data(), f32(lw.wv), n, dim, KVH * hd);
    rope(q.data(), pos.data(), inv_freq.data(), n, H, hd, RopePairing::kHalf);
    rope(k.data(), pos.data(), inv_freq.data(), n, KVH, hd, RopePairing::kHalf);
    std::vector<std::vector<char>> visible(KVH, std::vector<char>(L, 1));
    if (keep > 0 && L > keep) {
      const auto kept = ReferenceKept(q, k, H, KVH, hd, L, keep);
      for (int64_t h = 0; h < KVH; ++h) {
        std::fill(visible[h].begin(), visible[h].end(), 0);
        for (int32_t p : kept[h]) visible[h][p] = 1;
      }
    }
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t qh = 0; qh < H; ++qh) {
        const int64_t h = qh / g;
        std::vector<double> s(t + 1, -INFINITY);
        for (int64_t p = 0; p <= t; ++p) {
          if (t >= L && p < L && !visible[h][p]) continue;  // evicted for the rows after L
          double dot = 0;
          for (int64_t d = 0; d < hd; ++d)
            dot += q[(t * H + qh) * hd + d] * k[(p * KVH + h) * hd + d];
          s[p] = dot / std::sqrt(static_cast<double>(hd));
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int64_t d = 0; d < hd; ++d) {
          double o = 0;
          for (int64_t p = 0; p <= t; ++p) o += s[p] * v[(p * KVH + h) * hd + d];
          att[(t * H + qh) * hd + d] = static_cast<float>(o / sum);
        }
      }
    }
    matmul(part.data(), att.data(), f32(lw.wo), n, H * hd, dim);
    for (int64_t i = 0; i < n * dim; ++i) x[i] += part[i];
    rmsnorm(xn.data(), x.data(), lw.ffn_norm.data(), n, dim, c.rms_norm_eps);
    matmul(gate.data(), xn.data(), f32(lw.w_gate), n, dim, c.hidden_dim);
    matmul(up.data(), xn.data(), f32(lw.w_up), n, dim, c.hidden_dim);
    silu_mul(gate.data(), gate.data(), up.data(), n * c.hidden_dim);
    matmul(part.data(), gate.data(), f32(lw.w_down), n, c.hidden_dim, dim);
    for (int64_t i = 0; i < n * dim; ++i) x[i] += part[i];
  }
  rmsnorm(xn.data(), x.data(), weights->final_norm.data(), n, dim, c.rms_norm_eps);
  std::vector<std::vector<float>> logits;
  for (int64_t t = from; t < n; ++t) {
    std::vector<float> row(c.vocab_size);
    matmul(row.data(), xn.data() + t * dim, f32(weights->lm_head), 1, dim, c.vocab_size);
    logits.push_back(row);
  }
  return logits;
}

class KvEviction : public ::testing::TestWithParam<DType> {};

TEST_P(KvEviction, KeepsTheReferencePolicysPositionsOnEveryGrid) {
  int world_rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  ASSERT_EQ(world, 4) << "run under mpirun -np 4";
  const DType kv = GetParam();
  const std::string dir = TestModelDir("gqa");
  const Outcome ref = RunOnGrid(dir, 1, 1, kv);
  const std::vector<std::pair<int, int>> grids = {{1, 2}, {2, 1}, {2, 2}, {4, 1}};
  std::vector<Outcome> others;
  for (const auto& [g, s] : grids) others.push_back(RunOnGrid(dir, g, s, kv));
  if (world_rank != 0) return;
  const std::string what = std::string("gqa, ") + KvDTypeName(kv) + " cache";
  ASSERT_EQ(ref.tokens.size(), static_cast<size_t>(kNew)) << what;
  EXPECT_EQ(ref.kept, kBudget) << what;
  EXPECT_TRUE(ref.budget_held) << what << ": blocks beyond the budget";
  EXPECT_EQ(ref.within_kept, kPrompt) << what;
  EXPECT_LT(RelativeDiff(ref.plain_logits, ref.within_logits), 1e-6)
      << what << ": a prompt within the budget changed";
  // The budget matters: keeping 16 of 45 positions changes the logits.
  EXPECT_GT(RelativeDiff(ref.logits, ref.plain_logits), 1e-3) << what << ": eviction did nothing";
  EXPECT_GT(ref.preemptions, 0) << what << ": the batch should preempt";
  for (size_t i = 0; i < grids.size(); ++i) {
    const Outcome& o = others[i];
    const std::string grid =
        what + ", grid " + std::to_string(grids[i].first) + "x" + std::to_string(grids[i].second);
    ASSERT_TRUE(o.valid) << grid << " should split this model";
    EXPECT_EQ(o.tokens, ref.tokens) << grid;
    EXPECT_LT(RelativeDiff(ref.logits, o.logits), 1e-4) << grid;
    EXPECT_EQ(o.kept, kBudget) << grid;
    EXPECT_TRUE(o.budget_held) << grid << ": blocks beyond the budget";
    EXPECT_EQ(o.batch, ref.batch) << grid << ": batched";
  }
  if (kv != DType::kF32) return;
  // The dense reference of the same tokens: prompt + generated (the last one is not fed back).
  std::vector<int32_t> all = Prompt(kPrompt, 0, 320);
  all.insert(all.end(), ref.tokens.begin(), ref.tokens.end() - 1);
  const auto dense = DenseReference(dir, all, kPrompt, kBudget, kPrompt - 1);
  const auto dense_plain = DenseReference(dir, all, kPrompt, 0, kPrompt - 1);
  const double diff = RelativeDiff(dense, ref.logits);
  std::printf("[ info ] %s: logits vs the dense reference %.2e (no eviction: %.2e apart)\n",
              what.c_str(), diff, RelativeDiff(dense_plain, ref.logits));
  EXPECT_LT(diff, 1e-4) << what << ": the engine's eviction differs from the reference policy";
}

INSTANTIATE_TEST_SUITE_P(KvDTypes, KvEviction, ::testing::Values(DType::kF32, DType::kI8));

}  // namespace
}  // namespace kvshard
