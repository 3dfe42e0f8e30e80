#include "kernels/cpu/rmsnorm.h"

#include <cmath>

namespace kvshard {

void rmsnorm(float* out, const float* x, const float* weight, int64_t tokens, int64_t dim,
             float eps) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xr = x + t * dim;
    float* o = out + t * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
    for (int64_t i = 0; i < dim; ++i) o[i] = xr[i] * scale * weight[i];
  }
}

}  // namespace kvshard
