// The launch planning of the CUDA kernels, the sampling keys and the error reporting: plain host
// code, so these run (and must pass) on every machine, with or without a GPU.
#include "kernels/cuda/launch_config.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/cuda/cuda_check.h"
#include "kernels/cuda/sampling.h"
#include "transport/cuda/nccl_communicator.h"

namespace kvshard::cuda {
namespace {

TEST(LaunchConfig, SplitBlocksCoversEveryBlockOnceInOrder) {
  for (int64_t n = 0; n <= 40; ++n) {
    for (int64_t splits = 1; splits <= 70; ++splits) {
      int64_t next = 0;
      for (int64_t s = 0; s < splits; ++s) {
        const BlockRange r = SplitBlocks(n, splits, s);
        ASSERT_LE(r.begin, r.end);
        if (r.begin < r.end) {
          ASSERT_EQ(r.begin, next) << "n " << n << " splits " << splits << " split " << s;
          next = r.end;
        }
      }
      ASSERT_EQ(next, n) << "n " << n << " splits " << splits;
    }
  }
}

TEST(LaunchConfig, DecodeSplitsFillTheGpuWithinLimits) {
  // One sequence of 128K tokens on 132 SMs: split far along the KV.
  AttentionLaunch l = PlanDecodeAttention(1, 8, 4, 128, 8192, 132);
  EXPECT_GT(l.num_splits, 1);
  EXPECT_LE(l.num_splits, kAttentionMaxSplits);
  // A big batch already fills the GPU: no split, no merge.
  l = PlanDecodeAttention(256, 8, 4, 128, 8192, 132);
  EXPECT_EQ(l.num_splits, 1);
  // Never more splits than blocks.
  l = PlanDecodeAttention(1, 1, 1, 64, 2, 132);
  EXPECT_EQ(l.num_splits, 2);
  for (int64_t hd : {8, 64, 128, 256, 512}) {
    for (int64_t group : {1, 4, 8}) {
      if (group * hd > kAttentionMaxTileElems) continue;
      l = PlanDecodeAttention(3, 2, group, hd, 100, 108);
      EXPECT_EQ(l.tile_tokens, 1);
      EXPECT_GE(l.kv_tile, 1);
      EXPECT_LE(l.kv_tile, kAttentionMaxKvTile);
      EXPECT_LE(l.smem_bytes, kAttentionSmemBudget) << "hd " << hd << " group " << group;
      EXPECT_EQ(l.smem_bytes, AttentionSmemBytes(group, l.kv_tile, hd));
    }
  }
}

TEST(LaunchConfig, PrefillTilesFitAccumulatorsAndSharedMemory) {
  for (int64_t hd : {8, 16, 32, 64, 80, 96, 128, 256, 512}) {
    for (int64_t group : {1, 2, 4, 8, 16, 32}) {
      if (!AttentionSupported(group * 2, 2, hd, nullptr)) continue;
      const AttentionLaunch l = PlanPrefillAttention(group, hd);
      const int64_t rows = l.tile_tokens * group;
      EXPECT_GE(l.tile_tokens, 1);
      EXPECT_LE(l.tile_tokens, kAttentionMaxTileTokens);
      EXPECT_LE(rows * hd, kAttentionMaxTileElems) << "hd " << hd << " group " << group;
      EXPECT_GE(l.kv_tile, 1);
      EXPECT_LE(l.kv_tile, kAttentionMaxKvTile);
      EXPECT_EQ(l.num_splits, 1);
      EXPECT_EQ(l.smem_bytes, AttentionSmemBytes(rows, l.kv_tile, hd));
      EXPECT_LE(l.smem_bytes, kAttentionSmemBudget) << "hd " << hd << " group " << group;
    }
  }
}

TEST(LaunchConfig, SupportedHeadGeometries) {
  std::string why;
  EXPECT_TRUE(AttentionSupported(32, 8, 128, &why)) << why;  // Llama 3 8B
  EXPECT_TRUE(AttentionSupported(64, 8, 128, &why)) << why;  // Llama 3 70B
  EXPECT_TRUE(AttentionSupported(8, 8, 512, &why)) << why;
  EXPECT_TRUE(AttentionSupported(32, 2, 256, &why)) << why;
  EXPECT_FALSE(AttentionSupported(64, 1, 128, &why));
  EXPECT_NE(why.find("q_heads / kv_heads"), std::string::npos) << why;
  EXPECT_FALSE(AttentionSupported(6, 4, 64, &why));
  EXPECT_FALSE(AttentionSupported(1, 1, 8192, &why));
}

TEST(LaunchConfig, TilesStayWithinSequences) {
  const std::vector<int32_t> qo = {0, 5, 5, 12, 13};
  EXPECT_EQ(PlanAttentionTiles(qo.data(), 4, 4), (std::vector<int32_t>{0, 4, 5, 9, 12, 13}));
  EXPECT_EQ(PlanAttentionTiles(qo.data(), 4, 1).size(), 14u);
  EXPECT_EQ(PlanAttentionTiles(qo.data(), 0, 4), (std::vector<int32_t>{0}));
  const std::vector<int32_t> decode = {0, 1, 2, 3};
  EXPECT_EQ(PlanAttentionTiles(decode.data(), 3, 8), decode);
}

TEST(LaunchConfig, WorkspaceAndGridSizes) {
  EXPECT_EQ(AttentionWorkspaceFloats(4, 8, 128, 1), 0);
  EXPECT_EQ(AttentionWorkspaceFloats(4, 8, 128, 3), 4 * 8 * 3 * 129);
  EXPECT_EQ(ElementwiseBlocks(0), 1);
  EXPECT_EQ(ElementwiseBlocks(256), 1);
  EXPECT_EQ(ElementwiseBlocks(257), 2);
  EXPECT_EQ(ElementwiseBlocks(int64_t{1} << 40), kMaxElementwiseBlocks);
}

TEST(Sampling, UniformIsDeterministicAndInRange) {
  double sum = 0;
  for (uint64_t seed = 0; seed < 20000; ++seed) {
    const double u = SampleUniform(seed);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    ASSERT_EQ(u, SampleUniform(seed));
    sum += u;
  }
  EXPECT_NEAR(sum / 20000, 0.5, 0.01);
  EXPECT_NE(SampleUniform(1), SampleUniform(2));
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(Sampling, KeysOrderByProbabilityThenId) {
  EXPECT_GT(SamplingKey(Bits(0.5f), 7), SamplingKey(Bits(0.25f), 0));
  EXPECT_GT(SamplingKey(Bits(0.5f), 3), SamplingKey(Bits(0.5f), 4));
  EXPECT_GT(SamplingKey(Bits(1e-30f), 100), SamplingKey(Bits(0.0f), 0));
  EXPECT_EQ(SamplingKeyId(SamplingKey(Bits(0.125f), 128255)), 128255u);
  EXPECT_EQ(SamplingKeyId(SamplingKey(Bits(0.0f), 0)), 0u);
}

TEST(ErrorReporting, NamesTheCallAndWhere) {
  const Status st = CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc(&p, 1 << 40)", "x.cc", 12);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("cudaMalloc(&p, 1 << 40)"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("x.cc:12"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("rank"), std::string::npos) << st.message();
  EXPECT_TRUE(KVS_CUDA(cudaSuccess).ok());
  const Status blas = KVS_CUBLAS(CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_NE(blas.message().find("CUBLAS_STATUS_INVALID_VALUE"), std::string::npos)
      << blas.message();
  const Status nccl = KVS_NCCL(ncclInvalidArgument);
  EXPECT_EQ(nccl.code(), StatusCode::kUnavailable);
  EXPECT_NE(nccl.message().find("ncclInvalidArgument"), std::string::npos) << nccl.message();
}

TEST(ErrorReporting, DeviceCountNeverFails) {
  std::string why;
  const int n = UsableDeviceCount(&why);
  EXPECT_GE(n, 0);
  if (n == 0) {
    EXPECT_FALSE(why.empty());
  }
}

}  // namespace
}  // namespace kvshard::cuda
