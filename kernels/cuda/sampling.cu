#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/sampling.h"

namespace kvshard::cuda {
namespace {

__device__ __forceinline__ uint64_t KeyAt(const float* probs, int64_t i) {
  return SamplingKey(__float_as_uint(probs[i]), static_cast<uint32_t>(i));
}

// How many candidates have a key >= c (every thread gets the count).
__device__ unsigned long long CountAtLeast(const float* probs, int64_t vocab, uint64_t c) {
  unsigned long long n = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kRowThreads) n += KeyAt(probs, i) >= c ? 1 : 0;
  return block_sum(n);
}

// The probability mass of the candidates with a key >= c (every thread gets the sum).
__device__ double MassAtLeast(const float* probs, int64_t vocab, uint64_t c) {
  double m = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kRowThreads) {
    if (KeyAt(probs, i) >= c) m += probs[i];
  }
  return block_sum(m);
}

// The largest key c (>= floor) with MassAtLeast(max(c, floor)) compared to `bound` true: `>=`
// when `inclusive`, else `>`. The predicate falls as c grows, so bisection over the 64 bits
// finds it; returns `floor` when no c > floor qualifies.
__device__ uint64_t LargestKeyWithMass(const float* probs, int64_t vocab, uint64_t floor,
                                       double bound, bool inclusive) {
  uint64_t c = 0;
  for (int bit = 63; bit >= 0; --bit) {
    const uint64_t candidate = c | (1ull << bit);
    const double mass = MassAtLeast(probs, vocab, candidate > floor ? candidate : floor);
    if (inclusive ? mass >= bound : mass > bound) c = candidate;
  }
  return c > floor ? c : floor;
}

__global__ void __launch_bounds__(kRowThreads)
    sample_kernel(int32_t* out, const float* logits, const SamplingRow* params, int64_t vocab,
                  float* probs_all) {
  const float* row = logits + blockIdx.x * vocab;
  float* probs = probs_all + blockIdx.x * vocab;
  const SamplingRow p = params[blockIdx.x];
  if (!(p.temperature > 0.0f)) {  // greedy; uniform across the CTA
    const int32_t index = row_argmax(row, vocab);
    if (threadIdx.x == 0) out[blockIdx.x] = index;
    return;
  }
  float local_max = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += kRowThreads) local_max = fmaxf(local_max, row[i]);
  const float mx = block_max(local_max);
  // Each thread writes and later reads only its own elements: no synchronisation needed.
  for (int64_t i = threadIdx.x; i < vocab; i += kRowThreads) {
    probs[i] = expf((row[i] - mx) / p.temperature);
  }

  // top-k: the k-th largest key (keys are distinct, so exactly k candidates are >= it).
  const int64_t k = p.top_k > 0 && p.top_k < vocab ? p.top_k : vocab;
  uint64_t keep_min = 0;
  if (k < vocab) {
    for (int bit = 63; bit >= 0; --bit) {
      const uint64_t candidate = keep_min | (1ull << bit);
      if (CountAtLeast(probs, vocab, candidate) >= static_cast<unsigned long long>(k)) {
        keep_min = candidate;
      }
    }
  }
  double kept = MassAtLeast(probs, vocab, keep_min);
  // top-p: the candidate whose running mass first reaches top_p of the top-k mass.
  if (p.top_p < 1.0f) {
    keep_min = LargestKeyWithMass(probs, vocab, keep_min, static_cast<double>(p.top_p) * kept,
                                  /*inclusive=*/true);
    kept = MassAtLeast(probs, vocab, keep_min);
  }
  // The draw: the first candidate whose running mass exceeds r; the last kept one if rounding
  // leaves r at or above the kept mass (the CPU sampler does the same).
  const double r = SampleUniform(p.seed) * kept;
  uint64_t chosen = LargestKeyWithMass(probs, vocab, keep_min, r, /*inclusive=*/false);
  if (!(MassAtLeast(probs, vocab, chosen) > r)) chosen = keep_min;
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int32_t>(SamplingKeyId(chosen));
}

}  // namespace

cudaError_t sample(int32_t* out, const float* logits, const SamplingRow* params, int64_t rows,
                   int64_t vocab, float* probs, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0 || vocab > INT32_MAX || rows > INT32_MAX) return cudaErrorInvalidValue;
  KVS_LAUNCH(static_cast<unsigned>(rows), kRowThreads, 0, stream, sample_kernel)
  (out, logits, params, vocab, probs);
  return cudaGetLastError();
}

}  // namespace kvshard::cuda
