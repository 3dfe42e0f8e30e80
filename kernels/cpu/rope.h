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

// Attention sinks (StreamingLLM, positions within the cache): the cache holds the first `sinks`
// positions and the last `window` before a query at position p, which sits at cache index
// p - d, d = max(0, p - window + 1 - sinks) positions dropped. The sinks are attended with the
// query rotated back by d: shift[t] = -d (RoPE positions), and up to sink_last[t] = min(p, sinks
// - 1) (attention positions). shift, sink_last, positions: int32 [tokens]; sinks >= 1.
void attention_sink_positions(int32_t* shift, int32_t* sink_last, const int32_t* positions,
                              int64_t tokens, int64_t sinks, int64_t window);

}  // namespace kvshard
