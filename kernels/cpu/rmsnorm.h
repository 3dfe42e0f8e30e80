// RMSNorm: out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight.
#pragma once

#include <cstdint>

namespace kvshard {

// out, x: f32 [tokens, dim]; weight: f32 [dim]. out may alias x.
void rmsnorm(float* out, const float* x, const float* weight, int64_t tokens, int64_t dim,
             float eps);

}  // namespace kvshard
