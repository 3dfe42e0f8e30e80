// The CPU emulator's NCCL: one-rank communicators only (each emulated rank is its own process
// with its own emulated device, so there is no device memory to share between ranks). That is
// enough to run NcclCommunicator's own logic at TP=1: initialisation with a config, the
// non-blocking state machine, all-reduce enqueued on a stream (and captured into graphs), the
// grouped send/receive of GatherV to itself, finalize and destroy. Several ranks fail
// initialisation with a message saying so.
#include <nccl.h>

#include <cstring>
#include <string>
#include <vector>

#include "tests/emu/emu_state.h"

struct ncclComm {
  int nranks = 1;
  bool aborted = false;
  std::string last_error;
};

namespace {

struct PendingP2p {
  bool send;
  void* buffer;
  size_t bytes;
  int peer;
  ncclComm_t comm;
  cudaStream_t stream;
};

thread_local int tls_group_depth = 0;
thread_local std::vector<PendingP2p> tls_pending;
thread_local std::string tls_last_error;

size_t TypeSize(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 0;
  }
}

ncclResult_t Usage(ncclComm_t comm, const std::string& what) {
  kvshard::emu::Complain("NCCL: " + what);
  (comm ? comm->last_error : tls_last_error) = what;
  return ncclInvalidUsage;
}

ncclResult_t Copy(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes == 0 || dst == src) return ncclSuccess;
  if (!kvshard::emu::IsDeviceRange(dst, bytes) || !kvshard::emu::IsDeviceRange(src, bytes)) {
    return Usage(nullptr, "a buffer is not inside one device allocation");
  }
  const cudaError_t rc = kvshard::emu::Enqueue(stream, [dst, src, bytes]() {
    std::memmove(dst, src, bytes);
    return cudaSuccess;
  });
  return rc == cudaSuccess ? ncclSuccess : ncclUnhandledCudaError;
}

// Pairs each send to self with the receive from self in the order they were posted.
ncclResult_t Flush() {
  std::vector<PendingP2p> sends, recvs;
  for (const PendingP2p& p : tls_pending) (p.send ? sends : recvs).push_back(p);
  tls_pending.clear();
  if (sends.size() != recvs.size()) {
    return Usage(nullptr, "a group's sends and receives to self do not pair up");
  }
  for (size_t i = 0; i < sends.size(); ++i) {
    if (sends[i].bytes != recvs[i].bytes) {
      return Usage(nullptr, "a send to self and its receive differ in size");
    }
    const ncclResult_t rc = Copy(recvs[i].buffer, sends[i].buffer, sends[i].bytes, recvs[i].stream);
    if (rc != ncclSuccess) return rc;
  }
  return ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return ncclInvalidArgument;
  std::memset(id, 0, sizeof(*id));
  std::strncpy(id->internal, "kvshard-cuda-emulator", sizeof(id->internal) - 1);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId, int rank,
                                    ncclConfig_t* config) {
  if (!comm) return ncclInvalidArgument;
  *comm = nullptr;
  if (config && config->magic != 0xcafebeef) return Usage(nullptr, "config not initialised");
  if (nranks != 1 || rank != 0) {
    return Usage(nullptr, "the CUDA emulator runs NCCL with one rank only (asked for rank " +
                              std::to_string(rank) + " of " + std::to_string(nranks) + ")");
  }
  *comm = new ncclComm();
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* state) {
  if (!comm || !state) return ncclInvalidArgument;
  *state = ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm ? ncclSuccess : ncclInvalidArgument; }

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  return comm ? comm->last_error.c_str() : tls_last_error.c_str();
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (!comm) return ncclInvalidArgument;
  if (TypeSize(type) == 0 || op < ncclSum || op > ncclAvg) return ncclInvalidArgument;
  return Copy(recv, send, count * TypeSize(type), stream);  // one rank: the sum is the input
}

ncclResult_t ncclGroupStart() {
  ++tls_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (tls_group_depth == 0) return Usage(nullptr, "ncclGroupEnd without ncclGroupStart");
  if (--tls_group_depth > 0) return ncclSuccess;
  return Flush();
}

static ncclResult_t PostP2p(bool send, void* buffer, size_t count, ncclDataType_t type, int peer,
                            ncclComm_t comm, cudaStream_t stream) {
  if (!comm || TypeSize(type) == 0) return ncclInvalidArgument;
  if (peer != 0) return Usage(comm, "peer " + std::to_string(peer) + " in a one-rank communicator");
  if (tls_group_depth == 0) {
    return Usage(comm, "a send or receive to self outside a group would never complete");
  }
  tls_pending.push_back({send, buffer, count * TypeSize(type), peer, comm, stream});
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return PostP2p(true, const_cast<void*>(send), count, type, peer, comm, stream);
}

ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return PostP2p(false, recv, count, type, peer, comm, stream);
}

}  // extern "C"
