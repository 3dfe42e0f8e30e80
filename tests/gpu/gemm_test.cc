// The cuBLAS linear layer against the CPU matmul (kernels/cpu/matmul.h) on the same rounded
// inputs: f32, f16 and bf16 inputs, f32 accumulation, odd shapes, decode (1 token) and prefill.
#include "kernels/cuda/gemm.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cpu/matmul.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvshard::cuda {
namespace {

using testing::DeviceArray;
using testing::HostOf;
using testing::RandomNormal;
using testing::RoundTo;
using testing::Widen;

template <typename T>
void CheckMatmul(const CublasHandle& handle, int64_t tokens, int64_t in, int64_t out,
                 bool accumulate) {
  using H = HostOf<T>;
  const std::vector<H> x = RoundTo<H>(RandomNormal(tokens * in, 1));
  const std::vector<H> w = RoundTo<H>(RandomNormal(out * in, 2, 1.0f / std::sqrt(in)));
  const std::vector<float> x32 = Widen(x), w32 = Widen(w);
  const std::vector<float> init = RandomNormal(tokens * out, 3);
  std::vector<float> want = init;
  if (accumulate) {
    ::kvshard::matmul_accumulate(want.data(), x32.data(), w32.data(), tokens, in, out);
  } else {
    ::kvshard::matmul(want.data(), x32.data(), w32.data(), tokens, in, out);
  }
  DeviceArray<T> d_x(x), d_w(w);
  DeviceArray<float> d_out(init);
  KVS_TEST_CUBLAS(
      matmul<T>(handle, d_out.get(), d_x.get(), d_w.get(), tokens, in, out, accumulate, nullptr));
  const std::vector<float> got = d_out.ToHost();
  // Products of 16-bit inputs are exact in f32; what differs is the order of the f32 sums, so
  // the error scales with the sum of the terms' magnitudes.
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t n = 0; n < out; ++n) {
      double magnitude = 0;
      for (int64_t k = 0; k < in; ++k) magnitude += std::fabs(x32[t * in + k] * w32[n * in + k]);
      const double tol = 2e-6 * magnitude + 1e-5 * (std::fabs(init[t * out + n]) + 1);
      ASSERT_NEAR(got[t * out + n], want[t * out + n], tol)
          << "tokens " << tokens << " in " << in << " out " << out << " at (" << t << ", " << n
          << ")";
    }
  }
}

struct Shape {
  int64_t tokens, in, out;
};

TEST(CudaGemm, MatchesCpuMatmul) {
  KVS_REQUIRE_GPU();
  auto handle = CublasHandle::Create();
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  for (const Shape& s : {Shape{1, 64, 50}, Shape{3, 96, 130}, Shape{17, 128, 1},
                         Shape{64, 4096, 256}, Shape{5, 1000, 77}, Shape{1, 4096, 4096}}) {
    for (bool accumulate : {false, true}) {
      CheckMatmul<float>(**handle, s.tokens, s.in, s.out, accumulate);
      CheckMatmul<__half>(**handle, s.tokens, s.in, s.out, accumulate);
      CheckMatmul<__nv_bfloat16>(**handle, s.tokens, s.in, s.out, accumulate);
    }
  }
}

TEST(CudaGemm, RejectsSizesCublasCannotTake) {
  KVS_REQUIRE_GPU();
  auto handle = CublasHandle::Create(0);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  EXPECT_EQ(matmul<float>(**handle, nullptr, nullptr, nullptr, 0, 10, 10, false, nullptr),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(
      matmul<float>(**handle, nullptr, nullptr, nullptr, int64_t{1} << 32, 10, 10, false, nullptr),
      CUBLAS_STATUS_INVALID_VALUE);
}

}  // namespace
}  // namespace kvshard::cuda
