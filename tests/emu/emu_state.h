// Host-side state shared by the CPU emulator's pieces (execution, runtime, cuBLAS, NCCL):
// streams and their graph capture, the emulated device's allocations, the sticky error.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace kvshard::emu {

using Op = std::function<cudaError_t()>;

// Runs `op` now, or appends it to the graph being captured on `stream`. Returns what the op
// returned (or the error that kept it from running).
cudaError_t Enqueue(cudaStream_t stream, Op op);

// Whether [p, p + bytes) lies inside one live device allocation.
bool IsDeviceRange(const void* p, size_t bytes);
bool IsDevicePointer(const void* p);

// Records an error as the next cudaGetLastError(); sticky errors stay for every later call.
cudaError_t SetError(cudaError_t rc, const std::string& what, bool sticky = false);

// Clears a sticky error (a trap, a deadlock) so a test can go on in the same process; a GPU
// would need a new process.
void ClearStickyErrorForTests();

// The emulator's complaint, on stderr, prefixed so logs show where it came from.
void Complain(const std::string& what);

}  // namespace kvshard::emu
