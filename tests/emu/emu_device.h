// The device side of kvshard's CPU emulator of the CUDA execution model: what a kernel's source
// sees when it is compiled by the host compiler instead of nvcc (KVSHARD_CUDA_EMU).
//
// Why: the CI machines have nvcc but no GPU, so without this the kernels would only ever be
// compiled there. The emulator runs each kernel's own code, thread by thread, with the CUDA
// semantics the kernels rely on: a grid of blocks, each block's threads as cooperative fibers that
// meet at __syncthreads(), warps whose lanes meet at every __shfl_xor_sync(), per-block
// __shared__ memory and the launch's dynamic shared memory, __trap(). It finds wrong indexing,
// missing barriers (a thread that reads shared memory before the barrier that publishes it reads
// what the poison left there), divergent barriers (reported as a deadlock instead of a hang),
// shuffles over absent lanes, and bad launch configurations. It says nothing about speed, the
// memory model between blocks, or code generation by nvcc: those need a GPU.
//
// The emulated build includes this header ahead of every source file (tests/emu/emu.cmake), so
// kernel sources need no include order of their own.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace kvshard::emu {
namespace detail {

// The running thread's coordinates: set by the scheduler before it switches into a thread.
extern thread_local const uint3* tls_thread_idx;
extern thread_local const uint3* tls_block_idx;
extern thread_local const dim3* tls_block_dim;
extern thread_local const dim3* tls_grid_dim;

uint64_t ExchangeXor(unsigned mask, uint64_t bits, int lane_mask, int width);

}  // namespace detail

// __syncthreads(): waits until every thread of the block that has not exited arrives.
void SyncThreads();
// __syncwarp(): the same for the calling thread's warp.
void SyncWarp();
// __trap(): ends the launch with cudaErrorLaunchFailure (sticky, as on a GPU).
[[noreturn]] void Trap(const char* file, int line);
// The launch's dynamic shared memory (poisoned with 0xff bytes before every block).
void* DynamicSharedMemory();
// The block's static shared memory of the declaration `site` (KVS_SHARED): the same bytes for
// every thread of the block, fresh and poisoned with 0xff bytes for every block, so a block that
// reads what it did not write sees the poison, never another block's values.
void* StaticSharedMemory(const void* site, size_t bytes, size_t align);

template <typename T>
T ShflXor(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = detail::ExchangeXor(mask, bits, lane_mask, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Runs (or, on a stream being captured into a graph, records) a kernel launch: `body` runs once
// per thread of every block. Errors go to cudaGetLastError(), as on a GPU.
void LaunchKernel(const char* name, dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                  std::function<void()> body);

// KVS_LAUNCH(grid, block, smem, stream, kernel)(args...): the arguments are converted to the
// kernel's parameter types and copied at launch, as a CUDA launch does.
template <typename... P>
class Launcher {
 public:
  Launcher(const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
           void (*kernel)(P...))
      : name_(name), grid_(grid), block_(block), smem_(smem), stream_(stream), kernel_(kernel) {}

  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    std::tuple<std::decay_t<P>...> bound(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
    LaunchKernel(name_, grid_, block_, smem_, stream_,
                 [kernel = kernel_, bound]() { std::apply(kernel, bound); });
  }

 private:
  const char* name_;
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
  void (*kernel_)(P...);
};

template <typename... P>
Launcher<P...> Launch(const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      void (*kernel)(P...)) {
  return Launcher<P...>(name, grid, block, smem, stream, kernel);
}

}  // namespace kvshard::emu

// The CUDA C++ vocabulary, for the host compiler.
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
#undef __noinline__
#define __noinline__
// Shared memory is declared with KVS_DYNAMIC_SMEM and KVS_SHARED (kernels/cuda/launch.cuh); a
// bare __shared__ does not compile here.
#undef __shared__
#define __shared__ \
  static_assert(false, "declare shared memory with KVS_SHARED or KVS_DYNAMIC_SMEM");
#undef __launch_bounds__
#define __launch_bounds__(...)

#define threadIdx (*::kvshard::emu::detail::tls_thread_idx)
#define blockIdx (*::kvshard::emu::detail::tls_block_idx)
#define blockDim (*::kvshard::emu::detail::tls_block_dim)
#define gridDim (*::kvshard::emu::detail::tls_grid_dim)
#define __syncthreads() ::kvshard::emu::SyncThreads()
#define __syncwarp(...) ::kvshard::emu::SyncWarp()
#define __trap() ::kvshard::emu::Trap(__FILE__, __LINE__)
#define __shfl_xor_sync(...) ::kvshard::emu::ShflXor(__VA_ARGS__)

inline unsigned int kvs_emu_float_as_uint(float x) {
  unsigned int u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
#define __float_as_uint(x) kvs_emu_float_as_uint(x)

// Device code's min/max on integers (CUDA declares them for every arithmetic type).
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
inline T max(T a, T b) {
  return a < b ? b : a;
}
