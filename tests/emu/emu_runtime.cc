// The CPU emulator's CUDA runtime: the subset of the runtime API kvshard calls, with the
// semantics its callers rely on and stricter checking than a GPU gives.
//
// - Device memory is host memory the emulator tracks: cudaMalloc poisons it (0xff bytes: NaN in
//   every float format, -1 in integers), a copy must stay inside one allocation and its kind must
//   match its pointers, and the device has KVSHARD_EMU_DEVICE_MEMORY_MIB (default 1024) of it.
// - Work runs when it is enqueued (streams are trivially ordered), except on a stream being
//   captured: then it is recorded, and a graph launch replays the records with the arguments of
//   the capture, as a CUDA graph does. Calls that are illegal during a capture fail and
//   invalidate it.
// - KVSHARD_EMU_DEVICES devices (default 1), each with KVSHARD_EMU_SMS multiprocessors
//   (default 132, an H100 SXM), so launch planning makes the choices it makes on that GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "tests/emu/emu_state.h"

struct CUstream_st {
  unsigned flags = 0;
  bool capturing = false;
  bool invalidated = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::vector<kvshard::emu::Op> recorded;
};
struct CUgraph_st {
  std::vector<kvshard::emu::Op> ops;
};
struct CUgraphExec_st {
  std::vector<kvshard::emu::Op> ops;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point when{};
  bool recorded = false;
};

namespace kvshard::emu {
namespace {

struct Allocation {
  size_t bytes = 0;
  bool device = true;
};

std::mutex g_mutex;
std::map<uintptr_t, Allocation> g_allocations;  // device and pinned host, by base address
size_t g_device_bytes = 0;
std::set<cudaStream_t> g_capturing;  // streams being captured (any thread)
thread_local cudaError_t tls_last_error = cudaSuccess;
cudaError_t g_sticky = cudaSuccess;
thread_local int tls_device = 0;

long EnvLong(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  const long x = std::atol(v);
  return x > 0 ? x : fallback;
}

size_t DeviceMemoryBytes() {
  static const size_t bytes = static_cast<size_t>(EnvLong("KVSHARD_EMU_DEVICE_MEMORY_MIB", 1024))
                              << 20;
  return bytes;
}
int DeviceCount() {
  static const int n = static_cast<int>(EnvLong("KVSHARD_EMU_DEVICES", 1));
  return n;
}
int SmCount() {
  static const int n = static_cast<int>(EnvLong("KVSHARD_EMU_SMS", 132));
  return n;
}

// The allocation holding [p, p + bytes), if any (caller holds g_mutex).
const Allocation* Find(const void* p, size_t bytes, bool* inside) {
  *inside = false;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocations.upper_bound(a);
  if (it == g_allocations.begin()) return nullptr;
  --it;
  if (a >= it->first + std::max<size_t>(it->second.bytes, 1)) return nullptr;
  *inside = a + bytes <= it->first + it->second.bytes;
  return &it->second;
}

// A call that a capture forbids: fails it and invalidates every capture in progress.
cudaError_t ForbiddenDuringCapture(const char* call) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_capturing.empty()) return cudaSuccess;
  for (cudaStream_t s : g_capturing) s->invalidated = true;
  Complain(std::string(call) + " while a stream is being captured: the capture is invalidated");
  tls_last_error = cudaErrorStreamCaptureUnsupported;
  return cudaErrorStreamCaptureUnsupported;
}

#define KVS_EMU_STICKY()           \
  do {                             \
    if (g_sticky != cudaSuccess) { \
      tls_last_error = g_sticky;   \
      return g_sticky;             \
    }                              \
  } while (0)

#define KVS_EMU_NOT_IN_CAPTURE(call)                          \
  do {                                                        \
    const cudaError_t kvs_rc_ = ForbiddenDuringCapture(call); \
    if (kvs_rc_ != cudaSuccess) return kvs_rc_;               \
  } while (0)

const char* KindName(cudaMemcpyKind kind) {
  switch (kind) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault: return "cudaMemcpyDefault";
  }
  return "an unknown cudaMemcpyKind";
}

// Checks one side of a copy: `device` says whether the kind puts it on the device.
cudaError_t CheckSide(const char* call, const char* side, const void* p, size_t bytes, int device,
                      cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (p == nullptr) return SetError(cudaErrorInvalidValue, std::string(call) + ": null " + side);
  std::lock_guard<std::mutex> lock(g_mutex);
  bool inside = false;
  const Allocation* a = Find(p, bytes, &inside);
  const bool on_device = a && a->device;
  if (device == 1 && !on_device) {
    return SetError(cudaErrorInvalidValue, std::string(call) + ": the " + side + " of a " +
                                               KindName(kind) + " is not device memory");
  }
  if (device == 0 && on_device) {
    return SetError(cudaErrorInvalidValue, std::string(call) + ": the " + side + " of a " +
                                               KindName(kind) + " is device memory");
  }
  if (a && !inside) {
    return SetError(cudaErrorInvalidValue, std::string(call) + ": " + std::to_string(bytes) +
                                               " bytes at the " + side +
                                               " run past the end of its allocation of " +
                                               std::to_string(a->bytes) + " bytes");
  }
  return cudaSuccess;
}

cudaError_t CheckCopy(const char* call, void* dst, const void* src, size_t bytes,
                      cudaMemcpyKind kind) {
  int dst_device = -1, src_device = -1;  // -1: either
  switch (kind) {
    case cudaMemcpyHostToHost: dst_device = src_device = 0; break;
    case cudaMemcpyHostToDevice: dst_device = 1, src_device = 0; break;
    case cudaMemcpyDeviceToHost: dst_device = 0, src_device = 1; break;
    case cudaMemcpyDeviceToDevice: dst_device = src_device = 1; break;
    case cudaMemcpyDefault: break;
    default: return SetError(cudaErrorInvalidMemcpyDirection, std::string(call) + ": bad kind");
  }
  cudaError_t rc = CheckSide(call, "destination", dst, bytes, dst_device, kind);
  if (rc == cudaSuccess) rc = CheckSide(call, "source", src, bytes, src_device, kind);
  return rc;
}

cudaError_t CheckDeviceRange(const char* call, const void* p, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!IsDeviceRange(p, bytes)) {
    return SetError(cudaErrorInvalidValue, std::string(call) + ": " + std::to_string(bytes) +
                                               " bytes that are not inside one device allocation");
  }
  return cudaSuccess;
}

}  // namespace

void Complain(const std::string& what) {
  std::fprintf(stderr, "kvshard cuda emulator: %s\n", what.c_str());
  std::fflush(stderr);
}

cudaError_t SetError(cudaError_t rc, const std::string& what, bool sticky) {
  Complain(what);
  tls_last_error = rc;
  if (sticky) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_sticky = rc;
  }
  return rc;
}

void ClearStickyErrorForTests() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_sticky = cudaSuccess;
  tls_last_error = cudaSuccess;
}

bool IsDeviceRange(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  bool inside = false;
  const Allocation* a = Find(p, bytes, &inside);
  return a && a->device && inside;
}

bool IsDevicePointer(const void* p) { return IsDeviceRange(p, 1); }

cudaError_t Enqueue(cudaStream_t stream, Op op) {
  if (g_sticky != cudaSuccess) return tls_last_error = g_sticky;
  if (stream == nullptr) {
    const cudaError_t rc = ForbiddenDuringCapture("work on the legacy default stream");
    if (rc != cudaSuccess) return rc;
  } else if (stream->capturing) {
    stream->recorded.push_back(std::move(op));
    return cudaSuccess;
  }
  return op();
}

}  // namespace kvshard::emu

using kvshard::emu::CheckCopy;
using kvshard::emu::CheckDeviceRange;
using kvshard::emu::Complain;
using kvshard::emu::Enqueue;
using kvshard::emu::ForbiddenDuringCapture;
using kvshard::emu::g_allocations;
using kvshard::emu::g_capturing;
using kvshard::emu::g_device_bytes;
using kvshard::emu::g_mutex;
using kvshard::emu::g_sticky;
using kvshard::emu::SetError;
using kvshard::emu::tls_device;
using kvshard::emu::tls_last_error;

extern "C" {

// ---- errors -------------------------------------------------------------------------------

cudaError_t cudaGetLastError(void) {
  const cudaError_t rc = tls_last_error;
  tls_last_error = g_sticky;
  return rc;
}

cudaError_t cudaPeekAtLastError(void) { return tls_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
#define KVS_EMU_NAME(e) \
  case e: return #e;
    KVS_EMU_NAME(cudaSuccess)
    KVS_EMU_NAME(cudaErrorInvalidValue)
    KVS_EMU_NAME(cudaErrorMemoryAllocation)
    KVS_EMU_NAME(cudaErrorInvalidConfiguration)
    KVS_EMU_NAME(cudaErrorInvalidDevice)
    KVS_EMU_NAME(cudaErrorInvalidMemcpyDirection)
    KVS_EMU_NAME(cudaErrorInvalidResourceHandle)
    KVS_EMU_NAME(cudaErrorNoDevice)
    KVS_EMU_NAME(cudaErrorLaunchFailure)
    KVS_EMU_NAME(cudaErrorNotSupported)
    KVS_EMU_NAME(cudaErrorIllegalState)
    KVS_EMU_NAME(cudaErrorStreamCaptureUnsupported)
    KVS_EMU_NAME(cudaErrorStreamCaptureInvalidated)
    KVS_EMU_NAME(cudaErrorNotReady)
#undef KVS_EMU_NAME
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorNotReady: return "device not ready";
    default: return "unknown error";
  }
}

// ---- devices ------------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return tls_last_error = cudaErrorInvalidValue;
  *count = kvshard::emu::DeviceCount();
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= kvshard::emu::DeviceCount()) {
    return tls_last_error = cudaErrorInvalidDevice;
  }
  tls_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (!device) return tls_last_error = cudaErrorInvalidValue;
  *device = tls_device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!value) return tls_last_error = cudaErrorInvalidValue;
  if (device < 0 || device >= kvshard::emu::DeviceCount()) {
    return tls_last_error = cudaErrorInvalidDevice;
  }
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = kvshard::emu::SmCount(); break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 << 10; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 << 10; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrL2CacheSize: *value = 50 << 20; break;
    case cudaDevAttrComputeMode: *value = cudaComputeModeDefault; break;
    default: *value = 0; break;
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  KVS_EMU_STICKY();
  KVS_EMU_NOT_IN_CAPTURE("cudaDeviceSynchronize");
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  KVS_EMU_STICKY();
  if (!free || !total) return tls_last_error = cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_mutex);
  *total = kvshard::emu::DeviceMemoryBytes();
  *free = *total - std::min(*total, g_device_bytes);
  return cudaSuccess;
}

// ---- memory -------------------------------------------------------------------------------

static cudaError_t Allocate(void** ptr, size_t bytes, bool device, const char* call) {
  KVS_EMU_STICKY();
  if (!ptr) return tls_last_error = cudaErrorInvalidValue;
  KVS_EMU_NOT_IN_CAPTURE(call);
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (device && bytes > kvshard::emu::DeviceMemoryBytes() - g_device_bytes) {
      tls_last_error = cudaErrorMemoryAllocation;
      return cudaErrorMemoryAllocation;
    }
  }
  // Exactly `bytes` (256-aligned like cudaMalloc), so AddressSanitizer sees the end.
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes) != 0) return tls_last_error = cudaErrorMemoryAllocation;
  std::memset(p, 0xff, bytes);  // uninitialised device memory reads as NaN / -1
  std::lock_guard<std::mutex> lock(g_mutex);
  g_allocations[reinterpret_cast<uintptr_t>(p)] = {bytes, device};
  if (device) g_device_bytes += bytes;
  *ptr = p;
  return cudaSuccess;
}

static cudaError_t Release(void* ptr, bool device, const char* call) {
  if (!ptr) return cudaSuccess;
  KVS_EMU_NOT_IN_CAPTURE(call);
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_allocations.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == g_allocations.end() || it->second.device != device) {
    Complain(std::string(call) + " of a pointer it did not allocate");
    return tls_last_error = cudaErrorInvalidValue;
  }
  if (device) g_device_bytes -= it->second.bytes;
  g_allocations.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  return Allocate(ptr, bytes, true, "cudaMalloc");
}
cudaError_t cudaFree(void* ptr) { return Release(ptr, true, "cudaFree"); }
cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  return Allocate(ptr, bytes, false, "cudaMallocHost");
}
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned int) {
  return Allocate(ptr, bytes, false, "cudaHostAlloc");
}
cudaError_t cudaFreeHost(void* ptr) { return Release(ptr, false, "cudaFreeHost"); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  KVS_EMU_STICKY();
  KVS_EMU_NOT_IN_CAPTURE("cudaMemcpy");
  const cudaError_t rc = CheckCopy("cudaMemcpy", dst, src, bytes, kind);
  if (rc != cudaSuccess) return rc;
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  KVS_EMU_STICKY();
  const cudaError_t rc = CheckCopy("cudaMemcpyAsync", dst, src, bytes, kind);
  if (rc != cudaSuccess) return rc;
  return Enqueue(stream, [dst, src, bytes]() {
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
  });
}

cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  KVS_EMU_STICKY();
  KVS_EMU_NOT_IN_CAPTURE("cudaMemset");
  const cudaError_t rc = CheckDeviceRange("cudaMemset", dst, bytes);
  if (rc != cudaSuccess) return rc;
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  KVS_EMU_STICKY();
  const cudaError_t rc = CheckDeviceRange("cudaMemsetAsync", dst, bytes);
  if (rc != cudaSuccess) return rc;
  return Enqueue(stream, [dst, value, bytes]() {
    if (bytes) std::memset(dst, value, bytes);
    return cudaSuccess;
  });
}

// ---- streams, capture and graphs ------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  KVS_EMU_STICKY();
  if (!stream) return tls_last_error = cudaErrorInvalidValue;
  *stream = new CUstream_st();
  (*stream)->flags = flags;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!stream) return tls_last_error = cudaErrorInvalidResourceHandle;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_capturing.erase(stream);
  }
  delete stream;
  return cudaSuccess;
}

// Waiting on or querying a stream being captured is illegal: it fails and invalidates the capture.
static cudaError_t WaitOnStream(cudaStream_t stream, const char* call) {
  KVS_EMU_STICKY();
  if (stream && stream->capturing) {
    stream->invalidated = true;
    Complain(std::string(call) + " of a stream being captured: the capture is invalidated");
    return tls_last_error = cudaErrorStreamCaptureUnsupported;
  }
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return WaitOnStream(stream, "cudaStreamSynchronize");
}

cudaError_t cudaStreamQuery(cudaStream_t stream) { return WaitOnStream(stream, "cudaStreamQuery"); }

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  KVS_EMU_STICKY();
  if (stream == nullptr) {
    Complain("cudaStreamBeginCapture on the legacy default stream");
    return tls_last_error = cudaErrorStreamCaptureUnsupported;
  }
  if (stream->capturing) return tls_last_error = cudaErrorIllegalState;
  stream->capturing = true;
  stream->invalidated = false;
  stream->mode = mode;
  stream->recorded.clear();
  std::lock_guard<std::mutex> lock(g_mutex);
  g_capturing.insert(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (!graph) return tls_last_error = cudaErrorInvalidValue;
  *graph = nullptr;
  if (stream == nullptr || !stream->capturing) return tls_last_error = cudaErrorIllegalState;
  stream->capturing = false;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_capturing.erase(stream);
  }
  std::vector<kvshard::emu::Op> ops = std::move(stream->recorded);
  stream->recorded.clear();
  if (stream->invalidated) return tls_last_error = cudaErrorStreamCaptureInvalidated;
  *graph = new CUgraph_st{std::move(ops)};
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  if (!status) return tls_last_error = cudaErrorInvalidValue;
  *status = stream && stream->capturing ? (stream->invalidated ? cudaStreamCaptureStatusInvalidated
                                                               : cudaStreamCaptureStatusActive)
                                        : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long /*flags*/) {
  KVS_EMU_STICKY();
  if (!exec || !graph) return tls_last_error = cudaErrorInvalidValue;
  *exec = new CUgraphExec_st{graph->ops};
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  KVS_EMU_STICKY();
  if (!exec) return tls_last_error = cudaErrorInvalidResourceHandle;
  const std::vector<kvshard::emu::Op>* ops = &exec->ops;
  return Enqueue(stream, [ops]() {
    for (const kvshard::emu::Op& op : *ops) {
      const cudaError_t rc = op();
      if (rc != cudaSuccess) return rc;
    }
    return cudaSuccess;
  });
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

// ---- events -------------------------------------------------------------------------------

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  KVS_EMU_STICKY();
  if (!event) return tls_last_error = cudaErrorInvalidValue;
  *event = new CUevent_st();
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  return cudaEventCreate(event);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  KVS_EMU_STICKY();
  if (!event) return tls_last_error = cudaErrorInvalidResourceHandle;
  return Enqueue(stream, [event]() {
    event->when = std::chrono::steady_clock::now();
    event->recorded = true;
    return cudaSuccess;
  });
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  KVS_EMU_STICKY();
  if (!event) return tls_last_error = cudaErrorInvalidResourceHandle;
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  KVS_EMU_STICKY();
  if (!event) return tls_last_error = cudaErrorInvalidResourceHandle;
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  KVS_EMU_STICKY();
  if (!ms || !start || !end) return tls_last_error = cudaErrorInvalidValue;
  if (!start->recorded || !end->recorded) return tls_last_error = cudaErrorInvalidResourceHandle;
  *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
  return cudaSuccess;
}

}  // extern "C"
