// The CPU emulator of the CUDA execution model checks itself: the semantics the kernels rely on
// (shared memory, barriers, warp shuffles, graph capture and replay) and the mistakes it must
// turn into errors rather than wrong answers or hangs (divergent barriers, traps, bad launches,
// copies outside an allocation or in the wrong direction, synchronous calls during a capture).
// Built into the emulated test binary only.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "tests/emu/emu_state.h"
#include "tests/gpu/gpu_test_util.h"

namespace kvshard::cuda {
namespace {

using testing::DeviceArray;

// Clears the sticky error a test provoked, so later tests in the same process start clean.
struct ClearSticky {
  ~ClearSticky() { emu::ClearStickyErrorForTests(); }
};

template <bool kBarrier>
__global__ void ReverseInBlock(int* out, const int* in) {
  KVS_SHARED(int, tile, 256);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  tile[threadIdx.x] = in[i];
  if (kBarrier) __syncthreads();
  out[i] = tile[blockDim.x - 1 - threadIdx.x];
}

std::vector<int> Reverse(bool barrier) {
  std::vector<int> in(3 * 256);
  std::iota(in.begin(), in.end(), 1);
  DeviceArray<int> d_in(in), d_out(in.size());
  if (barrier) {
    KVS_LAUNCH(3, 256, 0, nullptr, ReverseInBlock<true>)(d_out.get(), d_in.get());
  } else {
    KVS_LAUNCH(3, 256, 0, nullptr, ReverseInBlock<false>)(d_out.get(), d_in.get());
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  return d_out.ToHost();
}

TEST(CudaEmulator, SharedMemoryNeedsTheBarrier) {
  const std::vector<int> with = Reverse(true);
  for (int b = 0; b < 3; ++b) {
    for (int t = 0; t < 256; ++t) ASSERT_EQ(with[b * 256 + t], b * 256 + (255 - t) + 1);
  }
  // Without the barrier a thread reads its partner's slot before the partner wrote it.
  EXPECT_NE(Reverse(false), with);
}

__global__ void FirstBlockWritesShared(int* out) {
  KVS_SHARED(int, value, 1);
  if (blockIdx.x == 0 && threadIdx.x == 0) value[0] = 42;
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = value[0];
}

TEST(CudaEmulator, StaticSharedMemoryIsPoisonedForEveryBlock) {
  DeviceArray<int> out(std::vector<int>(4, 0));
  KVS_LAUNCH(4, 32, 0, nullptr, FirstBlockWritesShared)(out.get());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<int> host = out.ToHost();
  // Blocks run in either order (KVSHARD_EMU_ORDER); a block that did not write reads the poison,
  // never the value block 0 left.
  EXPECT_EQ(host[0], 42);
  for (int b = 1; b < 4; ++b) EXPECT_EQ(host[b], -1) << "block " << b;
}

__global__ void WarpSums(float* out, const float* in) {
  const float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  out[blockIdx.x * blockDim.x + threadIdx.x] = warp_sum(v) + 1000.0f * block_sum(v);
}

TEST(CudaEmulator, ShufflesAndBlockReductions) {
  std::vector<float> in(2 * 96);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 7);
  DeviceArray<float> d_in(in), d_out(in.size());
  KVS_LAUNCH(2, 96, 0, nullptr, WarpSums)(d_out.get(), d_in.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> out = d_out.ToHost();
  for (int b = 0; b < 2; ++b) {
    float block = 0;
    for (int t = 0; t < 96; ++t) block += in[b * 96 + t];
    for (int t = 0; t < 96; ++t) {
      float warp = 0;
      for (int l = 0; l < 32; ++l) warp += in[b * 96 + t / 32 * 32 + l];
      EXPECT_EQ(out[b * 96 + t], warp + 1000.0f * block) << "block " << b << " thread " << t;
    }
  }
}

__global__ void DivergentBarrier(float* out) {
  float v = 1.0f;
  if (threadIdx.x == 0) {
    __syncthreads();  // lane 0 waits here while its warp waits for it in the shuffle
  } else {
    v = warp_sum(v);
  }
  out[threadIdx.x] = v;
}

__global__ void Traps(float* out) {
  if (threadIdx.x == 5) __trap();
  out[threadIdx.x] = 1.0f;
}

TEST(CudaEmulator, DivergentBarrierIsAnErrorNotAHang) {
  ClearSticky clear;
  DeviceArray<float> out(64);
  KVS_LAUNCH(1, 64, 0, nullptr, DivergentBarrier)(out.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
}

TEST(CudaEmulator, TrapIsStickyLikeOnAGpu) {
  ClearSticky clear;
  DeviceArray<float> out(64);
  KVS_LAUNCH(1, 64, 0, nullptr, Traps)(out.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 16), cudaErrorLaunchFailure);  // every later call fails
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
}

__global__ void AddValue(float* x, float value) { x[threadIdx.x] += value; }

TEST(CudaEmulator, RejectsLaunchesAGpuWouldReject) {
  DeviceArray<float> x(64);
  KVS_LAUNCH(1, 2048, 0, nullptr, AddValue)(x.get(), 1.0f);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  KVS_LAUNCH(0, 64, 0, nullptr, AddValue)(x.get(), 1.0f);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  KVS_LAUNCH(1, 64, 64 << 10, nullptr, AddValue)(x.get(), 1.0f);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not sticky
}

TEST(CudaEmulator, CopiesStayInsideAllocationsAndMatchTheirKind) {
  DeviceArray<float> d(16);
  std::vector<float> h(32, 1.0f);
  EXPECT_EQ(cudaMemcpy(d.get(), h.data(), 16 * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d.get(), h.data(), 17 * sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);  // one past the end
  EXPECT_EQ(cudaMemcpy(h.data(), d.get(), 16 * sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);  // the kind says the destination is on the device
  EXPECT_EQ(cudaMemset(d.get() + 8, 0, 9 * sizeof(float)), cudaErrorInvalidValue);
  cudaGetLastError();
}

TEST(CudaEmulator, FreshDeviceMemoryIsPoisonedAndAccounted) {
  size_t free_before = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  float* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 1 << 20), cudaSuccess);
  size_t free_after = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  EXPECT_EQ(free_before - free_after, size_t{1} << 20);
  float first = 0;
  ASSERT_EQ(cudaMemcpy(&first, p, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(std::isnan(first));  // never read what nothing wrote
  ASSERT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&p, total + 1), cudaErrorMemoryAllocation);
  cudaGetLastError();
}

TEST(CudaEmulator, GraphsReplayWhatWasCaptured) {
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  DeviceArray<float> x(32);
  ASSERT_EQ(cudaMemsetAsync(x.get(), 0, 32 * sizeof(float), stream), cudaSuccess);
  float value = 1.0f;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  KVS_LAUNCH(1, 32, 0, stream, AddValue)(x.get(), value);
  value = 100.0f;  // arguments are copied at capture: the graph keeps adding 1
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_EQ(x.ToHost()[0], 0.0f);  // captured, not run
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(x.ToHost()[31], 3.0f);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);

  // A synchronous call during a capture fails and invalidates it.
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  float host = 0;
  EXPECT_EQ(cudaMemcpy(&host, x.get(), sizeof(float), cudaMemcpyDeviceToHost),
            cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(graph, nullptr);
  cudaGetLastError();
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace kvshard::cuda
