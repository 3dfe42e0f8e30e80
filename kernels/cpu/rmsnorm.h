// RMSNorm: out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight.
#pragma once

#include <cstdint>

namespace kvshard {

// out, x: f32 [tokens, dim]; weight: f32 [dim]. out may alias x.
void rmsnorm(float* out, const float* x, const float* weight, int64_t tokens, int64_t dim,
             float eps);

// x += residual, then out = rmsnorm(x) * weight, a row at a time (x: f32 [tokens, dim], updated
// in place; residual: f32 [tokens, dim]; out must not alias x or residual).
void add_rmsnorm(float* out, float* x, const float* residual, const float* weight, int64_t tokens,
                 int64_t dim, float eps);

}  // namespace kvshard
