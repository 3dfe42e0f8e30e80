// Temperature, top-k and top-p sampling on the GPU, one CTA per row, with the semantics of
// coordinator/sampler.cc: probabilities exp((logit - max) / temperature), candidates ordered by
// probability (descending) then token id (ascending), the first top_k of them, then the shortest
// prefix whose mass reaches top_p of theirs, then the first candidate whose running mass exceeds
// u * (kept mass).
//
// No sort: every candidate gets a distinct 64-bit key (probability bits, then inverted id) whose
// descending order is exactly the candidate order, and each cut (k-th key, top-p boundary, the
// draw) is found by a 64-step bisection over the key, each step one block-wide count or sum. Simple
// and exact, about 200 passes over a row that stays in L2.
//
// u is a pure function of the row's seed (SampleUniform), so the caller decides the stream of
// randomness: e.g. seed = hash(request seed, token index) gives reproducible generations. It is
// not the CPU sampler's mt19937 stream, so GPU and CPU sampling agree in distribution, not draw
// by draw (greedy agrees exactly).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/launch_config.h"

namespace kvshard::cuda {

struct SamplingRow {
  float temperature = 0.0f;  // <= 0: greedy (argmax), as coordinator/sampler.cc's 0
  int32_t top_k = 0;         // 0 or >= vocab: no limit
  float top_p = 1.0f;        // in (0, 1]; 1: no limit
  uint32_t reserved = 0;
  uint64_t seed = 0;
};

// A uniform double in [0, 1) from a 64-bit seed (SplitMix64's finaliser, 53 bits).
KVS_HOST_DEVICE inline double SampleUniform(uint64_t seed) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// The order key of a candidate with probability bits `prob_bits` (a non-negative f32) and id:
// larger key = earlier candidate.
KVS_HOST_DEVICE inline uint64_t SamplingKey(uint32_t prob_bits, uint32_t id) {
  return (static_cast<uint64_t>(prob_bits) << 32) | (0xffffffffu - id);
}
KVS_HOST_DEVICE inline uint32_t SamplingKeyId(uint64_t key) {
  return 0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu);
}

// out: [rows] chosen ids; logits: f32 [rows, vocab]; params: [rows]; probs: f32 [rows, vocab]
// workspace. All device pointers.
cudaError_t sample(int32_t* out, const float* logits, const SamplingRow* params, int64_t rows,
                   int64_t vocab, float* probs, cudaStream_t stream);

}  // namespace kvshard::cuda
