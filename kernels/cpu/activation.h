// SwiGLU's gate: out[i] = silu(gate[i]) * up[i].
#pragma once

#include <cstdint>

namespace kvshard {

// out, gate, up: f32 [n]. out may alias gate. Vectorised (exp to about 2 ulp, simd.h), over the
// OpenMP team for prefill-sized n; an element's result does not depend on its index or on n.
void silu_mul(float* out, const float* gate, const float* up, int64_t n);

}  // namespace kvshard
