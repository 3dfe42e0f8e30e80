// The CUDA paged attention over positions sharded across pools (plan/paged_kv.h) against its CPU
// twin, outputs and log-sum-exps, decode (with split-K) and prefill; and the merge of the shards'
// partials against one pool. Sequences end at the ownership edges and some shards hold nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/launch_config.h"
#include "kernels/cuda/paged_attention.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvshard::cuda {
namespace {

using testing::DeviceArray;
using testing::RandomNormal;

constexpr int64_t kBlock = 4, kQHeads = 8, kKvHeads = 2, kHeadDim = 16;
constexpr int64_t kRow = kKvHeads * kHeadDim;

struct Result {
  std::vector<float> cpu, cpu_lse, gpu, gpu_lse;
};

// Sequences of `lens` positions; this step's tokens are the last `fresh` of each (1: decode).
// K/V of position p of sequence s are the same on every shard (seeded by s), so the shards'
// outputs merge to the one-pool output.
Result Attend(const std::vector<int64_t>& lens, int64_t fresh, const PagedKvGeometry& geometry,
              int64_t forced_splits) {
  std::vector<int32_t> indptr = {0}, ids, token_seq, positions, qo = {0};
  std::vector<int64_t> slots;
  std::vector<float> k, v;
  int64_t blocks = 0;
  for (int64_t len : lens) blocks += geometry.BlocksFor(len);
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int64_t i = 0; i < geometry.BlocksFor(lens[s]); ++i) {
      ids.push_back(static_cast<int32_t>(blocks - 1 - static_cast<int64_t>(ids.size())));
    }
    indptr.push_back(static_cast<int32_t>(ids.size()));
    const std::vector<float> ks = RandomNormal(lens[s] * kRow, 100 + s);
    const std::vector<float> vs = RandomNormal(lens[s] * kRow, 200 + s);
    for (int64_t p = 0; p < lens[s]; ++p) {
      if (geometry.Owns(p)) {
        slots.push_back(geometry.Slot(ids.data() + indptr[s], p));
        k.insert(k.end(), ks.begin() + p * kRow, ks.begin() + (p + 1) * kRow);
        v.insert(v.end(), vs.begin() + p * kRow, vs.begin() + (p + 1) * kRow);
      }
    }
    for (int64_t p = std::max<int64_t>(0, lens[s] - fresh); p < lens[s]; ++p) {
      token_seq.push_back(static_cast<int32_t>(s));
      positions.push_back(static_cast<int32_t>(p));
    }
    qo.push_back(static_cast<int32_t>(positions.size()));
  }
  const int64_t tokens = static_cast<int64_t>(positions.size());
  const int64_t pool = (blocks + 1) * kBlock;
  DeviceArray<float> d_kc(std::vector<float>(pool * kRow, NAN));
  DeviceArray<float> d_vc(std::vector<float>(pool * kRow, NAN));
  if (!slots.empty()) {
    DeviceArray<float> d_k(k), d_v(v);
    DeviceArray<int64_t> d_slots(slots);
    KVS_TEST_CUDA(kv_append<float>(d_kc.get(), d_vc.get(), d_k.get(), d_v.get(), d_slots.get(),
                                   static_cast<int64_t>(slots.size()), kKvHeads, kHeadDim,
                                   nullptr));
  }
  const std::vector<float> kc = d_kc.ToHost(), vc = d_vc.ToHost();
  const std::vector<float> q = RandomNormal(tokens * kQHeads * kHeadDim, 7);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));

  Result r;
  r.cpu.resize(tokens * kQHeads * kHeadDim);
  r.cpu_lse.resize(tokens * kQHeads);
  const PagedKvView host_view{indptr.data(), ids.data(), geometry};
  ::kvshard::paged_attention<float>(r.cpu.data(), q.data(), kc.data(), vc.data(), host_view,
                                    token_seq.data(), positions.data(), tokens, kQHeads, kKvHeads,
                                    kHeadDim, scale, r.cpu_lse.data());

  const int64_t group = kQHeads / kKvHeads;
  AttentionLaunch launch;
  std::vector<int32_t> tiles;
  if (fresh == 1) {
    launch = PlanDecodeAttention(tokens, kKvHeads, group, kHeadDim, 64, 132);
    if (forced_splits > 0) launch.num_splits = forced_splits;
    tiles.resize(tokens + 1);
    std::iota(tiles.begin(), tiles.end(), 0);
  } else {
    launch = PlanPrefillAttention(group, kHeadDim);
    tiles = PlanAttentionTiles(qo.data(), static_cast<int64_t>(lens.size()), launch.tile_tokens);
  }
  DeviceArray<int32_t> d_indptr(indptr), d_ids(ids.empty() ? std::vector<int32_t>{0} : ids);
  DeviceArray<int32_t> d_tiles(tiles), d_seq(token_seq), d_pos(positions);
  DeviceArray<float> d_q(q), d_out(r.cpu.size()), d_lse(r.cpu_lse.size());
  DeviceArray<float> d_ws(
      std::max<int64_t>(1, AttentionWorkspaceFloats(tokens, kQHeads, kHeadDim, launch.num_splits)));
  const PagedKvView view{d_indptr.get(), d_ids.get(), geometry};
  KVS_TEST_CUDA(paged_attention<float>(d_out.get(), d_q.get(), d_kc.get(), d_vc.get(), view,
                                       d_tiles.get(), static_cast<int64_t>(tiles.size()) - 1,
                                       d_seq.get(), d_pos.get(), tokens, kQHeads, kKvHeads,
                                       kHeadDim, scale, launch, d_ws.get(), nullptr, d_lse.get()));
  KVS_TEST_CUDA(cudaDeviceSynchronize());
  r.gpu = d_out.ToHost();
  r.gpu_lse = d_lse.ToHost();
  return r;
}

void ExpectSame(const Result& r, const char* what) {
  for (size_t i = 0; i < r.cpu.size(); ++i) {
    ASSERT_NEAR(r.gpu[i], r.cpu[i], 5e-5) << what << ", element " << i;
  }
  for (size_t i = 0; i < r.cpu_lse.size(); ++i) {
    if (std::isinf(r.cpu_lse[i])) {
      ASSERT_EQ(r.gpu_lse[i], r.cpu_lse[i]) << what << ", row " << i;
    } else {
      ASSERT_NEAR(r.gpu_lse[i], r.cpu_lse[i], 5e-5) << what << ", row " << i;
    }
  }
}

TEST(CudaSeqShardedAttention, MatchesCpuPerShardAndMergesToOnePool) {
  KVS_REQUIRE_GPU();
  for (int64_t S : {1, 2, 4}) {
    const std::vector<int64_t> lens = {1, S * kBlock - 1, S * kBlock, S * kBlock + 1, 3, 45};
    for (int64_t fresh : {int64_t{1}, int64_t{3}}) {
      const std::vector<int64_t> splits =
          fresh == 1 ? std::vector<int64_t>{1, 3} : std::vector<int64_t>{0};
      for (int64_t forced : splits) {
        std::vector<Result> shards;
        for (int64_t shard = 0; shard < S; ++shard) {
          shards.push_back(Attend(lens, fresh, PagedKvGeometry{kBlock, S, shard}, forced));
          ExpectSame(shards.back(), fresh == 1 ? "decode" : "prefill");
        }
        // The GPU shards' partials, merged, give the one-pool CPU result.
        const Result one = Attend(lens, fresh, PagedKvGeometry{kBlock, 1, 0}, forced);
        const int64_t rows = static_cast<int64_t>(one.cpu_lse.size());
        std::vector<float> po, pl;
        for (const Result& r : shards) {
          po.insert(po.end(), r.gpu.begin(), r.gpu.end());
          pl.insert(pl.end(), r.gpu_lse.begin(), r.gpu_lse.end());
        }
        std::vector<float> merged(one.cpu.size()), merged_lse(rows);
        ::kvshard::merge_attention(merged.data(), merged_lse.data(), po.data(), pl.data(), S, rows,
                                   kHeadDim);
        for (size_t i = 0; i < merged.size(); ++i) {
          ASSERT_NEAR(merged[i], one.cpu[i], 5e-5) << S << " shards, element " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvshard::cuda
