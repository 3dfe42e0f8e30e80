// The memory-bandwidth ceiling that decode is compared with: a streaming read of a buffer far
// larger than the caches, with wide vector loads and several independent accumulators.
#pragma once

#include <cstdint>

namespace kvshard {

// Sums n floats of buf, split over `threads` OpenMP threads. The sum is returned so that the
// compiler cannot drop the reads.
double stream_read_sum(const float* buf, int64_t n, int threads);

// Allocates a buffer of `bytes`, touches it, then times `repeats` streaming reads with `threads`
// threads and returns the best achieved read bandwidth in GB/s (1e9 bytes per second).
double measure_read_bandwidth_gbs(int64_t bytes, int threads, int repeats);

}  // namespace kvshard
