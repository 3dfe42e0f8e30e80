#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_config.h"
#include "kernels/cuda/rope.h"

namespace kvshard::cuda {
namespace {

// One CTA per token; each thread rotates pairs (head, i) of it.
__global__ void rope_kernel(float* x, const int32_t* positions, const float* inv_freq,
                            int64_t heads, int64_t head_dim, bool interleaved) {
  const int64_t t = blockIdx.x;
  const int64_t half = head_dim / 2;
  const double pos = static_cast<double>(positions[t]);
  for (int64_t idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int64_t h = idx / half, i = idx % half;
    double sin_d, cos_d;
    sincos(pos * static_cast<double>(inv_freq[i]), &sin_d, &cos_d);
    const float c = static_cast<float>(cos_d), s = static_cast<float>(sin_d);
    float* v = x + (t * heads + h) * head_dim;
    const int64_t a = interleaved ? 2 * i : i;
    const int64_t b = interleaved ? 2 * i + 1 : i + half;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

__global__ void attention_sink_positions_kernel(int32_t* shift, int32_t* sink_last,
                                                const int32_t* positions, int64_t tokens,
                                                int64_t sinks, int64_t window) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  const int64_t p = positions[t];
  shift[t] = static_cast<int32_t>(-max(static_cast<int64_t>(0), p - window + 1 - sinks));
  sink_last[t] = static_cast<int32_t>(min(p, sinks - 1));
}

}  // namespace

cudaError_t rope(float* x, const int32_t* positions, const float* inv_freq, int64_t tokens,
                 int64_t heads, int64_t head_dim, RopePairing pairing, cudaStream_t stream) {
  if (tokens <= 0 || heads <= 0 || head_dim < 2) return cudaSuccess;
  if (tokens > INT32_MAX) return cudaErrorInvalidValue;
  KVS_LAUNCH(static_cast<unsigned>(tokens), kElementwiseThreads, 0, stream, rope_kernel)
  (x, positions, inv_freq, heads, head_dim, pairing == RopePairing::kInterleaved);
  return cudaGetLastError();
}

cudaError_t attention_sink_positions(int32_t* shift, int32_t* sink_last, const int32_t* positions,
                                     int64_t tokens, int64_t sinks, int64_t window,
                                     cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  if (tokens > INT32_MAX || sinks < 1) return cudaErrorInvalidValue;
  const unsigned blocks =
      static_cast<unsigned>((tokens + kElementwiseThreads - 1) / kElementwiseThreads);
  KVS_LAUNCH(blocks, kElementwiseThreads, 0, stream, attention_sink_positions_kernel)
  (shift, sink_last, positions, tokens, sinks, window);
  return cudaGetLastError();
}

}  // namespace kvshard::cuda
