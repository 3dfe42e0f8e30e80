// SwiGLU's gate: out[i] = silu(gate[i]) * up[i].
#pragma once

#include <cstdint>

namespace kvshard {

// out, gate, up: f32 [n]. out may alias gate.
void silu_mul(float* out, const float* gate, const float* up, int64_t n);

}  // namespace kvshard
