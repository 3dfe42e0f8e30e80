// Helpers for the GPU tests: skip without a device, device arrays that fail the test (by
// throwing, which gtest reports with the message) when a CUDA call fails, and the host twin of
// each device element type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cuda/cuda_check.h"
#include "kernels/cpu/half.h"
#include "kernels/cuda/host_twin.h"

namespace kvshard::cuda::testing {

// Whether this test binary runs on the CPU emulator of the CUDA execution model
// (tests/emu): the same tests, with the few that would take minutes there made smaller.
#ifdef KVSHARD_CUDA_EMU
inline constexpr bool kEmulated = true;
#else
inline constexpr bool kEmulated = false;
#endif

// Skips the calling test when no CUDA device is usable (no GPU, or no driver).
#define KVS_REQUIRE_GPU()                                                  \
  do {                                                                     \
    std::string kvs_why_;                                                  \
    if (::kvshard::cuda::UsableDeviceCount(&kvs_why_) == 0) {              \
      GTEST_SKIP() << "no CUDA device (" << kvs_why_ << "): test not run"; \
    }                                                                      \
  } while (0)

inline void ThrowIfError(const Status& st) {
  if (!st.ok()) throw std::runtime_error(st.ToString());
}
#define KVS_TEST_CUDA(call) ::kvshard::cuda::testing::ThrowIfError(KVS_CUDA(call))
#define KVS_TEST_CUBLAS(call) ::kvshard::cuda::testing::ThrowIfError(KVS_CUBLAS(call))

// The host type with the same bits as a device element type.
using ::kvshard::cuda::HostOf;

// A device array of T, freed at scope exit. The constructors wait for their memset and copy:
// both run on the legacy default stream (and a cudaMemcpy from pageable memory may return before
// its DMA has landed), which work on a cudaStreamNonBlocking stream would not otherwise wait for.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    if (n_ == 0) return;
    KVS_TEST_CUDA(cudaMalloc(&data_, n_ * sizeof(T)));
    KVS_TEST_CUDA(cudaMemset(data_, 0, n_ * sizeof(T)));
    KVS_TEST_CUDA(cudaDeviceSynchronize());
  }
  // From host values of the same size (T itself or its HostOf twin).
  template <typename H>
  explicit DeviceArray(const std::vector<H>& host) : DeviceArray(host.size()) {
    static_assert(sizeof(H) == sizeof(T));
    if (n_ == 0) return;
    KVS_TEST_CUDA(cudaMemcpy(data_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
    KVS_TEST_CUDA(cudaDeviceSynchronize());
  }
  ~DeviceArray() {
    if (data_) cudaFree(data_);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return data_; }
  size_t size() const { return n_; }
  // Waits for the device (cudaMemcpy synchronises), then copies back.
  template <typename H = HostOf<T>>
  std::vector<H> ToHost() const {
    static_assert(sizeof(H) == sizeof(T));
    std::vector<H> host(n_);
    if (n_) KVS_TEST_CUDA(cudaMemcpy(host.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* data_ = nullptr;
  size_t n_ = 0;
};

// A non-blocking stream, destroyed at scope exit.
class Stream {
 public:
  Stream() { KVS_TEST_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

inline std::vector<float> RandomNormal(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Values rounded to the storage type H (float, f16_t or bf16_t), as bits and as f32.
template <typename H>
std::vector<H> RoundTo(const std::vector<float>& v) {
  std::vector<H> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = from_f32<H>(v[i]);
  return out;
}
template <typename H>
std::vector<float> Widen(const std::vector<H>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = to_f32(v[i]);
  return out;
}

// One unit in the last place, relative, of the storage type: what rounding to it may cost.
template <typename T>
constexpr float RelativeUlp() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return 1.0f / 128;
  } else if constexpr (std::is_same_v<T, __half>) {
    return 1.0f / 1024;
  } else {
    return 0.0f;
  }
}

}  // namespace kvshard::cuda::testing
