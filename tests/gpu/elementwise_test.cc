// The element-wise CUDA kernels against their CPU twins (kernels/cpu): embedding, RMSNorm and the
// fused residual add + RMSNorm, RoPE (both pairings), SiLU·mul, conversion and KV append.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvshard::cuda {
namespace {

using testing::DeviceArray;
using testing::HostOf;
using testing::RandomNormal;
using testing::RelativeUlp;
using testing::RoundTo;
using testing::Widen;

// |got - want| within `ulps` units of the storage type To (relative) plus an absolute floor.
template <typename To>
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float rel_f32,
                 float abs_floor, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  const float rel = std::max(rel_f32, RelativeUlp<To>());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], rel * std::fabs(want[i]) + abs_floor) << what << " at " << i;
  }
}

template <typename T>
void CheckEmbedding(int64_t vocab, int64_t dim, int64_t tokens) {
  using H = HostOf<T>;
  const std::vector<H> table = RoundTo<H>(RandomNormal(vocab * dim, 1));
  std::vector<int32_t> ids(tokens);
  std::mt19937 rng(2);
  for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
  ids.back() = static_cast<int32_t>(vocab - 1);
  std::vector<float> want(tokens * dim);
  const std::vector<float> table_f32 = Widen(table);
  ::kvshard::embedding(want.data(), table_f32.data(), ids.data(), tokens, dim);
  DeviceArray<T> d_table(table);
  DeviceArray<int32_t> d_ids(ids);
  DeviceArray<float> d_out(tokens * dim);
  KVS_TEST_CUDA(embedding<T>(d_out.get(), d_table.get(), d_ids.get(), tokens, dim, nullptr));
  EXPECT_EQ(d_out.ToHost(), want);  // widening is exact
}

TEST(CudaEmbedding, MatchesCpu) {
  KVS_REQUIRE_GPU();
  for (int64_t dim : {1, 7, 64, 4096}) {
    CheckEmbedding<float>(50, dim, 9);
    CheckEmbedding<__half>(50, dim, 1);
    CheckEmbedding<__nv_bfloat16>(321, dim, 33);
  }
}

template <typename To>
void CheckRmsnorm(int64_t tokens, int64_t dim) {
  const std::vector<float> x = RandomNormal(tokens * dim, 3, 2.0f);
  const std::vector<float> delta = RandomNormal(tokens * dim, 4);
  const std::vector<float> w = RandomNormal(dim, 5);
  const float eps = 1e-5f;
  std::vector<float> want(tokens * dim);
  ::kvshard::rmsnorm(want.data(), x.data(), w.data(), tokens, dim, eps);
  DeviceArray<float> d_x(x), d_w(w), d_delta(delta);
  DeviceArray<To> d_out(tokens * dim);
  KVS_TEST_CUDA(rmsnorm<To>(d_out.get(), d_x.get(), d_w.get(), tokens, dim, eps, nullptr));
  ExpectClose<To>(Widen(d_out.ToHost()), want, 1e-5f, 1e-6f, "rmsnorm");

  // Fused: residual += delta, then the norm of the sum.
  std::vector<float> sum(tokens * dim);
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = x[i] + delta[i];
  ::kvshard::rmsnorm(want.data(), sum.data(), w.data(), tokens, dim, eps);
  KVS_TEST_CUDA(
      add_rmsnorm<To>(d_x.get(), d_delta.get(), d_out.get(), d_w.get(), tokens, dim, eps, nullptr));
  EXPECT_EQ(d_x.ToHost(), sum);
  ExpectClose<To>(Widen(d_out.ToHost()), want, 1e-5f, 1e-6f, "add_rmsnorm");
}

TEST(CudaRmsnorm, MatchesCpu) {
  KVS_REQUIRE_GPU();
  for (int64_t dim : {1, 5, 64, 257, 4096, 8192}) {
    CheckRmsnorm<float>(3, dim);
    CheckRmsnorm<__half>(1, dim);
    CheckRmsnorm<__nv_bfloat16>(17, dim);
  }
}

TEST(CudaRmsnorm, InPlaceF32) {
  KVS_REQUIRE_GPU();
  const int64_t tokens = 4, dim = 300;
  const std::vector<float> x = RandomNormal(tokens * dim, 6), w = RandomNormal(dim, 7);
  std::vector<float> want(tokens * dim);
  ::kvshard::rmsnorm(want.data(), x.data(), w.data(), tokens, dim, 1e-6f);
  DeviceArray<float> d_x(x), d_w(w);
  KVS_TEST_CUDA(rmsnorm<float>(d_x.get(), d_x.get(), d_w.get(), tokens, dim, 1e-6f, nullptr));
  ExpectClose<float>(d_x.ToHost(), want, 1e-5f, 1e-6f, "in-place rmsnorm");
}

std::vector<float> InverseFrequencies(int64_t head_dim, double theta) {
  std::vector<float> f(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    f[i] = static_cast<float>(std::pow(theta, -2.0 * i / head_dim));
  }
  return f;
}

TEST(CudaRope, MatchesCpuForBothPairingsAndLongPositions) {
  KVS_REQUIRE_GPU();
  for (RopePairing pairing : {RopePairing::kHalf, RopePairing::kInterleaved}) {
    for (int64_t head_dim : {2, 8, 64, 128}) {
      const int64_t tokens = 7, heads = 5;
      const std::vector<int32_t> positions = {0, 1, 17, 4095, 131071, 500000, 1048575};
      const std::vector<float> inv_freq = InverseFrequencies(head_dim, 500000.0);
      std::vector<float> x = RandomNormal(tokens * heads * head_dim, 8);
      DeviceArray<float> d_x(x), d_f(inv_freq);
      DeviceArray<int32_t> d_pos(positions);
      ::kvshard::rope(x.data(), positions.data(), inv_freq.data(), tokens, heads, head_dim,
                      pairing);
      KVS_TEST_CUDA(
          rope(d_x.get(), d_pos.get(), d_f.get(), tokens, heads, head_dim, pairing, nullptr));
      ExpectClose<float>(d_x.ToHost(), x, 1e-5f, 1e-5f,
                         "rope head_dim " + std::to_string(head_dim));
    }
  }
}

TEST(CudaRope, AttentionSinkPositionsAsOnTheCpu) {
  KVS_REQUIRE_GPU();
  // Positions inside the sinks, inside the first window, at its edge and far past the context.
  const std::vector<int32_t> positions = {0, 3, 4, 15, 16, 17, 100, 8191, 1048575};
  const int64_t tokens = static_cast<int64_t>(positions.size());
  for (const auto& [sinks, window] : {std::pair<int64_t, int64_t>{4, 12}, {1, 1}, {16, 4096}}) {
    std::vector<int32_t> shift(tokens), last(tokens);
    ::kvshard::attention_sink_positions(shift.data(), last.data(), positions.data(), tokens, sinks,
                                        window);
    DeviceArray<int32_t> d_pos(positions), d_shift(tokens), d_last(tokens);
    KVS_TEST_CUDA(attention_sink_positions(d_shift.get(), d_last.get(), d_pos.get(), tokens, sinks,
                                           window, nullptr));
    EXPECT_EQ(d_shift.ToHost(), shift) << sinks << " sinks, window " << window;
    EXPECT_EQ(d_last.ToHost(), last) << sinks << " sinks, window " << window;
    // A query past the window is rotated back to its cache index: sinks + window - 1.
    EXPECT_EQ(positions.back() + shift.back(), sinks + window - 1);
    EXPECT_EQ(last.back(), sinks - 1);
  }
}

template <typename To>
void CheckSiluMul(int64_t n) {
  const std::vector<float> gate = RandomNormal(n, 9, 4.0f), up = RandomNormal(n, 10);
  std::vector<float> want(n);
  ::kvshard::silu_mul(want.data(), gate.data(), up.data(), n);
  DeviceArray<float> d_gate(gate), d_up(up);
  DeviceArray<To> d_out(n);
  KVS_TEST_CUDA(silu_mul<To>(d_out.get(), d_gate.get(), d_up.get(), n, nullptr));
  ExpectClose<To>(Widen(d_out.ToHost()), want, 1e-5f, 1e-6f, "silu_mul");
}

TEST(CudaSiluMul, MatchesCpu) {
  KVS_REQUIRE_GPU();
  for (int64_t n : {1, 255, 256, 257, 14336 * 3 + 1}) {
    CheckSiluMul<float>(n);
    CheckSiluMul<__half>(n);
    CheckSiluMul<__nv_bfloat16>(n);
  }
}

template <typename To>
void CheckConvert(int64_t n) {
  std::vector<float> in = RandomNormal(n, 11, 3.0f);
  // Values that exercise rounding at the edges: tiny (subnormal in f16), huge (inf in f16).
  if (n > 4) {
    in[0] = 1e-6f;
    in[1] = -3e-8f;
    in[2] = 7e4f;
    in[3] = 1.0f + 1.0f / 256;  // a bf16 tie: rounds to even
  }
  DeviceArray<float> d_in(in);
  DeviceArray<To> d_out(n);
  KVS_TEST_CUDA(convert_from_f32<To>(d_out.get(), d_in.get(), n, nullptr));
  const std::vector<HostOf<To>> got = d_out.ToHost();
  const std::vector<HostOf<To>> want = RoundTo<HostOf<To>>(in);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(got[i])), 0)
        << "element " << i << " = " << in[i];
  }
}

TEST(CudaConvert, BitIdenticalToCpuRounding) {
  KVS_REQUIRE_GPU();
  for (int64_t n : {1, 100, 70001}) {
    CheckConvert<float>(n);
    CheckConvert<__half>(n);
    CheckConvert<__nv_bfloat16>(n);
  }
}

template <typename KV>
void CheckKvAppend(int64_t tokens, int64_t kv_heads, int64_t head_dim, int64_t pool_slots) {
  using H = HostOf<KV>;
  const int64_t row = kv_heads * head_dim;
  const std::vector<float> k = RandomNormal(tokens * row, 12), v = RandomNormal(tokens * row, 13);
  std::vector<int64_t> slots(pool_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), std::mt19937(14));
  slots.resize(tokens);
  std::vector<H> k_want(pool_slots * row, from_f32<H>(0.5f)), v_want = k_want;
  ::kvshard::kv_append<H>(k_want.data(), v_want.data(), k.data(), v.data(), slots.data(), tokens,
                          kv_heads, head_dim);
  DeviceArray<KV> d_kc(std::vector<H>(pool_slots * row, from_f32<H>(0.5f)));
  DeviceArray<KV> d_vc(std::vector<H>(pool_slots * row, from_f32<H>(0.5f)));
  DeviceArray<float> d_k(k), d_v(v);
  DeviceArray<int64_t> d_slots(slots);
  KVS_TEST_CUDA(kv_append<KV>(d_kc.get(), d_vc.get(), d_k.get(), d_v.get(), d_slots.get(), tokens,
                              kv_heads, head_dim, nullptr));
  const std::vector<H> k_got = d_kc.ToHost(), v_got = d_vc.ToHost();
  ASSERT_EQ(std::memcmp(k_got.data(), k_want.data(), k_got.size() * sizeof(H)), 0);
  ASSERT_EQ(std::memcmp(v_got.data(), v_want.data(), v_got.size() * sizeof(H)), 0);
}

TEST(CudaKvAppend, BitIdenticalToCpu) {
  KVS_REQUIRE_GPU();
  CheckKvAppend<float>(1, 1, 8, 16);
  CheckKvAppend<float>(37, 2, 64, 64);
  CheckKvAppend<__half>(17, 8, 128, 48);
  CheckKvAppend<__nv_bfloat16>(1000, 4, 32, 1024);
}

}  // namespace
}  // namespace kvshard::cuda
