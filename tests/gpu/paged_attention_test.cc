// The CUDA paged attention against the CPU kernel (kernels/cpu/paged_attention.h) on the same
// stored cache: decode with split-K and its merge, prefill tiles with causal masking inside a
// tile, block boundaries (lengths 1, 15, 16, 17, 1000), GQA ratios 1, 4 and 8, odd block sizes,
// scrambled block tables, batches mixing sequences, and every cache dtype (int8 and fp8: codes
// and scales equal to the CPU kv_append's too).
#include "kernels/cuda/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>

#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/kv_append.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvshard::cuda {
namespace {

using testing::DeviceArray;
using testing::HostOf;
using testing::RandomNormal;

struct Geometry {
  int64_t q_heads, kv_heads, head_dim;
};

// One step's batch: sequences with `lens[s]` cached positions of which the last `new_tokens[s]`
// are this step's query tokens (1 for decode, more for a prefill chunk).
struct Batch {
  std::vector<int32_t> block_indptr, block_indices, token_seq, positions, qo_indptr;
  std::vector<int64_t> slots;  // slot of every cached position of every sequence, in order
  int64_t pool_blocks = 0;
  int64_t tokens() const { return static_cast<int64_t>(positions.size()); }
};

Batch MakeBatch(const std::vector<int64_t>& lens, const std::vector<int64_t>& new_tokens,
                int64_t block_size, uint32_t seed) {
  Batch b;
  std::mt19937 rng(seed);
  int64_t needed = 0;
  for (int64_t len : lens) needed += (len + block_size - 1) / block_size;
  // Blocks in a scrambled order with unused blocks in between, as a real pool looks.
  b.pool_blocks = 2 * needed + 3;
  std::vector<int32_t> ids(b.pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  b.block_indptr.push_back(0);
  b.qo_indptr.push_back(0);
  int64_t next = 0;
  for (size_t s = 0; s < lens.size(); ++s) {
    const int64_t nblocks = (lens[s] + block_size - 1) / block_size;
    for (int64_t i = 0; i < nblocks; ++i) b.block_indices.push_back(ids[next++]);
    b.block_indptr.push_back(static_cast<int32_t>(b.block_indices.size()));
    const int32_t* table = b.block_indices.data() + b.block_indptr[s];
    for (int64_t p = 0; p < lens[s]; ++p) {
      b.slots.push_back(static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size);
    }
    for (int64_t p = lens[s] - new_tokens[s]; p < lens[s]; ++p) {
      b.token_seq.push_back(static_cast<int32_t>(s));
      b.positions.push_back(static_cast<int32_t>(p));
    }
    b.qo_indptr.push_back(static_cast<int32_t>(b.positions.size()));
  }
  return b;
}

enum class Plan { kDecode, kPrefill };

// Runs the batch through both kernels and returns the largest absolute difference.
template <typename KV>
double MaxError(const Batch& b, const Geometry& g, int64_t block_size, Plan plan,
                int64_t forced_splits, uint32_t seed, int64_t window = 0, int64_t floor = 0) {
  using H = HostOf<KV>;
  const int64_t row = g.kv_heads * g.head_dim;
  const int64_t cached = static_cast<int64_t>(b.slots.size());
  const std::vector<float> k = RandomNormal(cached * row, seed);
  const std::vector<float> v = RandomNormal(cached * row, seed + 1);
  const std::vector<float> q = RandomNormal(b.tokens() * g.q_heads * g.head_dim, seed + 2);
  const float scale = 1.0f / std::sqrt(static_cast<float>(g.head_dim));

  // The cache is written by the GPU's kv_append (bit-identical to the CPU's, tested elsewhere)
  // and read back, so both kernels read exactly the same stored values. Unused slots hold NaN:
  // reading one would show.
  // Quantized caches: their codes and scales are the CPU kv_append's, bit for bit, and the
  // scales of unused slots are NaN.
  const int64_t pool_slots = b.pool_blocks * block_size;
  H fill{};
  if constexpr (!::kvshard::kQuantizedKv<H>) fill = from_f32<H>(NAN);
  DeviceArray<KV> d_kc(std::vector<H>(pool_slots * row, fill));
  DeviceArray<KV> d_vc(std::vector<H>(pool_slots * row, fill));
  DeviceArray<float> d_ks(std::vector<float>(pool_slots * g.kv_heads, NAN));
  DeviceArray<float> d_vs(std::vector<float>(pool_slots * g.kv_heads, NAN));
  DeviceArray<float> d_k(k), d_v(v), d_q(q);
  DeviceArray<int64_t> d_slots(b.slots);
  KVS_TEST_CUDA(kv_append<KV>(d_kc.get(), d_vc.get(), d_k.get(), d_v.get(), d_slots.get(), cached,
                              g.kv_heads, g.head_dim, nullptr, d_ks.get(), d_vs.get()));
  const std::vector<H> kc = d_kc.ToHost(), vc = d_vc.ToHost();
  const std::vector<float> ks = d_ks.ToHost(), vs = d_vs.ToHost();
  if constexpr (::kvshard::kQuantizedKv<H>) {
    std::vector<H> cpu_kc(pool_slots * row), cpu_vc(pool_slots * row);
    std::vector<float> cpu_ks(pool_slots * g.kv_heads, NAN), cpu_vs(pool_slots * g.kv_heads, NAN);
    ::kvshard::kv_append<H>(cpu_kc.data(), cpu_vc.data(), k.data(), v.data(), b.slots.data(),
                            cached, g.kv_heads, g.head_dim, cpu_ks.data(), cpu_vs.data());
    for (int64_t s : b.slots) {
      for (int64_t i = s * row; i < (s + 1) * row; ++i) {
        if (std::memcmp(&kc[i], &cpu_kc[i], sizeof(H)) != 0 ||
            std::memcmp(&vc[i], &cpu_vc[i], sizeof(H)) != 0) {
          ADD_FAILURE() << "GPU code != CPU code at element " << i;
          return INFINITY;
        }
      }
      for (int64_t h = s * g.kv_heads; h < (s + 1) * g.kv_heads; ++h) {
        if (ks[h] != cpu_ks[h] || vs[h] != cpu_vs[h]) {
          ADD_FAILURE() << "GPU scale != CPU scale at row " << h;
          return INFINITY;
        }
      }
    }
  }

  std::vector<float> want(b.tokens() * g.q_heads * g.head_dim);
  const PagedKvView host_view{b.block_indptr.data(), b.block_indices.data(), block_size};
  ::kvshard::paged_attention<H>(want.data(), q.data(), kc.data(), vc.data(), host_view,
                                b.token_seq.data(), b.positions.data(), b.tokens(), g.q_heads,
                                g.kv_heads, g.head_dim, scale, nullptr, ks.data(), vs.data(),
                                window, floor);

  const int64_t group = g.q_heads / g.kv_heads;
  AttentionLaunch launch;
  std::vector<int32_t> tiles;
  if (plan == Plan::kDecode) {
    int64_t max_blocks = 0;
    for (size_t s = 0; s + 1 < b.block_indptr.size(); ++s) {
      max_blocks = std::max<int64_t>(max_blocks, b.block_indptr[s + 1] - b.block_indptr[s]);
    }
    launch = PlanDecodeAttention(b.tokens(), g.kv_heads, group, g.head_dim, max_blocks, 132);
    if (forced_splits > 0) launch.num_splits = forced_splits;
    tiles.resize(b.tokens() + 1);
    std::iota(tiles.begin(), tiles.end(), 0);
  } else {
    launch = PlanPrefillAttention(group, g.head_dim);
    tiles = PlanAttentionTiles(b.qo_indptr.data(), static_cast<int64_t>(b.qo_indptr.size()) - 1,
                               launch.tile_tokens);
  }
  DeviceArray<int32_t> d_indptr(b.block_indptr), d_indices(b.block_indices);
  DeviceArray<int32_t> d_tiles(tiles), d_seq(b.token_seq), d_pos(b.positions);
  DeviceArray<float> d_out(want.size());
  DeviceArray<float> d_ws(std::max<int64_t>(
      1, AttentionWorkspaceFloats(b.tokens(), g.q_heads, g.head_dim, launch.num_splits)));
  const PagedKvView view{d_indptr.get(), d_indices.get(), block_size};
  KVS_TEST_CUDA(paged_attention<KV>(d_out.get(), d_q.get(), d_kc.get(), d_vc.get(), view,
                                    d_tiles.get(), static_cast<int64_t>(tiles.size()) - 1,
                                    d_seq.get(), d_pos.get(), b.tokens(), g.q_heads, g.kv_heads,
                                    g.head_dim, scale, launch, d_ws.get(), nullptr, nullptr,
                                    d_ks.get(), d_vs.get(), window, floor));
  KVS_TEST_CUDA(cudaDeviceSynchronize());
  const std::vector<float> got = d_out.ToHost();
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) return INFINITY;
    err = std::max(err, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  return err;
}

constexpr double kTolerance = 5e-5;  // f32 arithmetic in a different order; same stored KV

const Geometry kGeometries[] = {
    {4, 4, 16},   {8, 2, 32}, {8, 1, 8},  // the CPU test's shapes
    {16, 16, 64},                         // GQA 1
    {32, 8, 128},                         // GQA 4 (Llama 3 8B)
    {8, 1, 128},                          // GQA 8
};

TEST(CudaPagedAttention, DecodeMatchesCpuAtBlockBoundaries) {
  KVS_REQUIRE_GPU();
  for (int64_t len : {1, 15, 16, 17, 1000}) {
    for (const Geometry& g : kGeometries) {
      const Batch b = MakeBatch({len}, {1}, 16, static_cast<uint32_t>(len));
      const std::string what = "len " + std::to_string(len) + " heads " +
                               std::to_string(g.q_heads) + "/" + std::to_string(g.kv_heads) +
                               " head_dim " + std::to_string(g.head_dim);
      EXPECT_LT(MaxError<float>(b, g, 16, Plan::kDecode, 0, 1), kTolerance) << what;
      EXPECT_LT(MaxError<__half>(b, g, 16, Plan::kDecode, 0, 2), kTolerance) << "f16, " << what;
      EXPECT_LT(MaxError<__nv_bfloat16>(b, g, 16, Plan::kDecode, 0, 3), kTolerance)
          << "bf16, " << what;
      if (len == 17 || len == 1000) {
        EXPECT_LT(MaxError<int8_t>(b, g, 16, Plan::kDecode, 0, 4), kTolerance) << "int8, " << what;
        EXPECT_LT(MaxError<__nv_fp8_e4m3>(b, g, 16, Plan::kDecode, 0, 5), kTolerance)
            << "fp8, " << what;
      }
    }
  }
}

TEST(CudaPagedAttention, SplitKMergeIsExactForAnySplitCount) {
  KVS_REQUIRE_GPU();
  const Geometry g{32, 8, 128};
  for (int64_t splits : {1, 2, 3, 7, 63, 64}) {
    for (int64_t len : {1, 17, 1000}) {
      const Batch b = MakeBatch({len}, {1}, 16, 5);
      EXPECT_LT(MaxError<__nv_bfloat16>(b, g, 16, Plan::kDecode, splits, 4), kTolerance)
          << "splits " << splits << " len " << len;
    }
  }
}

TEST(CudaPagedAttention, DecodeBatchOfDifferentLengths) {
  KVS_REQUIRE_GPU();
  const Batch b = MakeBatch({1, 1000, 16, 17, 300, 15}, {1, 1, 1, 1, 1, 1}, 16, 6);
  for (const Geometry& g : kGeometries) {
    EXPECT_LT(MaxError<__half>(b, g, 16, Plan::kDecode, 0, 7), kTolerance)
        << "heads " << g.q_heads << "/" << g.kv_heads;
    EXPECT_LT(MaxError<float>(b, g, 16, Plan::kDecode, 5, 8), kTolerance)
        << "5 splits, heads " << g.q_heads << "/" << g.kv_heads;
  }
}

TEST(CudaPagedAttention, PrefillIsCausalWithinAndAcrossTiles) {
  KVS_REQUIRE_GPU();
  // A fresh prompt, a chunk on top of a cached prefix, and a decode token in one batch.
  const Batch b = MakeBatch({100, 1000, 33, 1}, {100, 77, 1, 1}, 16, 9);
  for (const Geometry& g : kGeometries) {
    const std::string what =
        "heads " + std::to_string(g.q_heads) + "/" + std::to_string(g.kv_heads);
    EXPECT_LT(MaxError<float>(b, g, 16, Plan::kPrefill, 0, 10), kTolerance) << what;
    EXPECT_LT(MaxError<__nv_bfloat16>(b, g, 16, Plan::kPrefill, 0, 11), kTolerance) << what;
    if (g.head_dim <= 32) {  // quantized prefill on the small geometries (the emulator is slow)
      EXPECT_LT(MaxError<int8_t>(b, g, 16, Plan::kPrefill, 0, 16), kTolerance) << "int8, " << what;
      EXPECT_LT(MaxError<__nv_fp8_e4m3>(b, g, 16, Plan::kPrefill, 0, 17), kTolerance)
          << "fp8, " << what;
    }
    // The decode plan is correct (if slow) for prefill too: every token its own tile.
    EXPECT_LT(MaxError<__half>(b, g, 16, Plan::kDecode, 3, 12), kTolerance) << what;
  }
}

TEST(CudaPagedAttention, SlidingWindowMatchesCpu) {
  KVS_REQUIRE_GPU();
  const Batch b = MakeBatch({100, 1000, 33, 1}, {100, 77, 1, 1}, 16, 21);
  // Windows inside one tile, across blocks, and past every sequence; the emulator runs these
  // slowly, so two geometries (GQA 4 at head size 32 and Llama 3 8B's) and int8 on one.
  for (int64_t window : {1, 17, 5000}) {
    for (const Geometry& g : {Geometry{8, 2, 32}, Geometry{32, 8, 128}}) {
      const std::string what = "window " + std::to_string(window) + " heads " +
                               std::to_string(g.q_heads) + "/" + std::to_string(g.kv_heads);
      EXPECT_LT(MaxError<float>(b, g, 16, Plan::kPrefill, 0, 22, window), kTolerance) << what;
      EXPECT_LT(MaxError<float>(b, g, 16, Plan::kDecode, 3, 23, window), kTolerance) << what;
      if (g.head_dim == 32) {
        EXPECT_LT(MaxError<int8_t>(b, g, 16, Plan::kPrefill, 0, 24, window), kTolerance)
            << "int8, " << what;
      }
    }
  }
}

TEST(CudaPagedAttention, FloorLeavesTheSinksOutAsOnTheCpu) {
  KVS_REQUIRE_GPU();
  // The window part of attention sinks: positions below the floor are not attended, with a
  // window (from max(floor, p - window + 1)) and without; the one-token sequence at position 0
  // reaches nothing above a floor of 4 (out = 0).
  const Batch b = MakeBatch({100, 1000, 33, 1}, {100, 77, 1, 1}, 16, 25);
  const Geometry g{8, 2, 32};
  for (const auto& [window, floor] : {std::pair<int64_t, int64_t>{17, 4}, {64, 20}, {0, 4}}) {
    const std::string what = "window " + std::to_string(window) + " floor " + std::to_string(floor);
    EXPECT_LT(MaxError<float>(b, g, 16, Plan::kPrefill, 0, 26, window, floor), kTolerance) << what;
    EXPECT_LT(MaxError<float>(b, g, 16, Plan::kDecode, 3, 27, window, floor), kTolerance) << what;
  }
  EXPECT_LT(MaxError<int8_t>(b, g, 16, Plan::kDecode, 0, 28, 17, 4), kTolerance) << "int8";
}

TEST(CudaPagedAttention, OddBlockSizes) {
  KVS_REQUIRE_GPU();
  for (int64_t bs : {1, 3, 7, 64}) {
    const Batch b = MakeBatch({100, 40}, {1, 40}, bs, 13);
    const Geometry g{4, 2, 8};
    EXPECT_LT(MaxError<float>(b, g, bs, Plan::kDecode, 0, 14), kTolerance) << "block size " << bs;
    EXPECT_LT(MaxError<float>(b, g, bs, Plan::kPrefill, 0, 15), kTolerance) << "block size " << bs;
  }
}

TEST(CudaPagedAttention, LargeHeadDims) {
  KVS_REQUIRE_GPU();
  for (const Geometry& g : {Geometry{16, 2, 256}, Geometry{8, 8, 512}, Geometry{8, 1, 512}}) {
    const Batch b = MakeBatch({70, 17}, {1, 17}, 16, 16);
    EXPECT_LT(MaxError<__nv_bfloat16>(b, g, 16, Plan::kDecode, 0, 17), kTolerance)
        << "head_dim " << g.head_dim;
    EXPECT_LT(MaxError<__nv_bfloat16>(b, g, 16, Plan::kPrefill, 0, 18), kTolerance)
        << "head_dim " << g.head_dim;
  }
}

TEST(CudaPagedAttention, RejectsPlansTheKernelCannotRun) {
  KVS_REQUIRE_GPU();
  AttentionLaunch launch = PlanPrefillAttention(8, 128);
  launch.tile_tokens *= 4;  // more rows than the accumulators hold
  const PagedKvView view{nullptr, nullptr, 16};
  float dummy = 0;
  const int32_t tiles_host = 0;
  EXPECT_EQ(
      paged_attention<float>(&dummy, &dummy, &dummy, &dummy, view, &tiles_host, 1, &tiles_host,
                             &tiles_host, 1, 64, 8, 128, 1.0f, launch, nullptr, nullptr),
      cudaErrorInvalidValue);
  launch = PlanDecodeAttention(1, 8, 8, 128, 100, 132);
  EXPECT_GT(launch.num_splits, 1);
  EXPECT_EQ(
      paged_attention<float>(&dummy, &dummy, &dummy, &dummy, view, &tiles_host, 1, &tiles_host,
                             &tiles_host, 1, 64, 8, 128, 1.0f, launch, nullptr, nullptr),
      cudaErrorInvalidValue)
      << "split-K without a workspace";
}

}  // namespace
}  // namespace kvshard::cuda
