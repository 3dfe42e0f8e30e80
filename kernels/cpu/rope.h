// Rotary position embedding, applied in place to the heads of one projection.
#pragma once

#include <cstdint>
#include <vector>

namespace kvshard {

enum class RopePairing {
  kHalf,         // Hugging Face rotate_half: pairs (x[i], x[i + head_dim/2])
  kInterleaved,  // GPT-J / llama2.c: pairs (x[2i], x[2i + 1])
};

// x: f32 [tokens, heads, head_dim]; positions: [tokens]; inv_freq: f32 [head_dim / 2]
// (already scaled by the model's rope_scaling).
void rope(float* x, const int32_t* positions, const float* inv_freq, int64_t tokens, int64_t heads,
          int64_t head_dim, RopePairing pairing);

}  // namespace kvshard
