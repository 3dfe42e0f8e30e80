// The device's memory-bandwidth ceiling, measured: a device-to-device copy, timed with events.
#pragma once

#include "common/status.h"

namespace kvshard::cuda {

// GB/s of memory traffic (bytes read + bytes written) of a cudaMemcpyAsync between two device
// buffers of `bytes` each, best of `repeats`, on the current device. A decode step only reads,
// so its bandwidth fraction is decode bytes / step time / this figure.
StatusOr<double> MeasureDeviceCopyGbs(size_t bytes, int repeats);

}  // namespace kvshard::cuda
