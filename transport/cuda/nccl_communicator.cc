#include "transport/cuda/nccl_communicator.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <thread>

#include "common/cuda/cuda_check.h"

namespace kvshard::cuda {
namespace {

#define KVS_NCCL_ENQUEUE(call) Enqueued((call), #call, __FILE__, __LINE__)

// What rank 0 broadcasts: the id, or the news that it could not make one (so that no rank waits
// for an id that will never come).
struct IdMessage {
  int32_t ok = 0;
  ncclUniqueId id{};
};

}  // namespace

NcclCommunicator::NcclCommunicator(MpiCommunicator* control, cudaStream_t stream,
                                   const NcclOptions& options)
    : DeviceCommunicator(control), options_(options) {
  stream_ = stream;
}

StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(MpiCommunicator* control,
                                                                     cudaStream_t stream,
                                                                     const NcclOptions& options) {
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(control, stream, options));
  IdMessage message;
  Status local;
  if (control->rank() == 0) {
    local = KVS_NCCL(ncclGetUniqueId(&message.id));
    message.ok = local.ok() ? 1 : 0;
  }
  KVS_RETURN_IF_ERROR(control->Broadcast(&message, sizeof(message), 0));
  if (!message.ok) {
    if (control->rank() != 0) local = Unavailable("rank 0 could not create the NCCL unique id");
  } else {
    local = c->Init(message.id);
  }
  const Status all = AgreeOnStatus(*control, local);
  if (!all.ok()) {
    (void)c->Abort(all);  // ranks whose own init worked must not keep a half-formed clique
    return all;
  }
  return c;
}

Status NcclCommunicator::Init(const ncclUniqueId& id) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t rc = ncclCommInitRankConfig(&comm_, size(), id, rank(), &config);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return Abort(NcclStatus(rc, "ncclCommInitRankConfig", __FILE__, __LINE__, comm_));
  }
  return WaitReady("ncclCommInitRankConfig");
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_) ncclCommAbort(comm_);
}

Status NcclCommunicator::Broken() const {
  if (broken_.empty()) return Status::Ok();
  return FailedPrecondition("the NCCL communicator was aborted earlier: {}", broken_);
}

Status NcclCommunicator::Abort(const Status& why) {
  if (comm_) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  if (broken_.empty()) broken_ = why.ok() ? "closed" : why.message();
  return why;
}

Status NcclCommunicator::WaitReady(const char* what) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto pause = std::chrono::microseconds(20);
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm_, &state);
    if (rc != ncclSuccess) {
      return Abort(NcclStatus(rc, "ncclCommGetAsyncError", __FILE__, __LINE__, comm_));
    }
    if (state == ncclSuccess) return Status::Ok();
    if (state != ncclInProgress) return Abort(NcclStatus(state, what, __FILE__, __LINE__, comm_));
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (waited > options_.timeout_s) {
      return Abort(
          Unavailable("{} was still in progress after {:.1f} s on {}: a peer rank may be "
                      "dead or stuck; the NCCL communicator was aborted",
                      what, waited, WhereAmI()));
    }
    control_->PumpLiveness();
    if (waited > 200e-6) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }
}

Status NcclCommunicator::Enqueued(ncclResult_t rc, const char* call, const char* file, int line) {
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return Abort(NcclStatus(rc, call, file, line, comm_));
  }
  return WaitReady(call);
}

Status NcclCommunicator::AllReduceSum(float* data, size_t n) {
  KVS_RETURN_IF_ERROR(Broken());
  if (n == 0) return Status::Ok();
  return KVS_NCCL_ENQUEUE(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm_, stream_));
}

Status NcclCommunicator::GatherV(const float* send, int count, float* recv,
                                 const std::vector<int>& counts, int root) {
  KVS_RETURN_IF_ERROR(Broken());
  const int n_ranks = size(), me = rank();
  if (static_cast<int>(counts.size()) != n_ranks || root < 0 || root >= n_ranks ||
      counts[me] != count) {
    return InvalidArgument(
        "GatherV: {} counts for {} ranks, root {}, this rank sends {} (counts "
        "say {})",
        counts.size(), n_ranks, root, count,
        me < static_cast<int>(counts.size()) ? counts[me] : -1);
  }
  std::vector<size_t> displs(n_ranks, 0);
  for (int r = 1; r < n_ranks; ++r) displs[r] = displs[r - 1] + counts[r - 1];
  if (me == root && count > 0 && recv + displs[root] != send) {
    KVS_RETURN_IF_ERROR(KVS_CUDA(cudaMemcpyAsync(recv + displs[root], send, count * sizeof(float),
                                                 cudaMemcpyDeviceToDevice, stream_)));
  }
  if (n_ranks == 1) return Status::Ok();
  // Every call between group start and end is only recorded; ncclGroupEnd launches them. The
  // group is always closed, also after an error inside it.
  const Status started = KVS_NCCL(ncclGroupStart());
  if (!started.ok()) return Abort(started);
  ncclResult_t rc = ncclSuccess;
  const char* failed = nullptr;
  if (me == root) {
    for (int r = 0; r < n_ranks && (rc == ncclSuccess || rc == ncclInProgress); ++r) {
      if (r == root || counts[r] == 0) continue;
      rc = ncclRecv(recv + displs[r], counts[r], ncclFloat, r, comm_, stream_);
      failed = "ncclRecv";
    }
  } else if (count > 0) {
    rc = ncclSend(send, count, ncclFloat, root, comm_, stream_);
    failed = "ncclSend";
  }
  const Status end = KVS_NCCL_ENQUEUE(ncclGroupEnd());
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return Abort(NcclStatus(rc, failed, __FILE__, __LINE__, comm_));
  }
  return end;
}

Status NcclCommunicator::AllGatherInGroups(const float* send, size_t count, float* recv,
                                           int group_size) {
  KVS_RETURN_IF_ERROR(Broken());
  const int n_ranks = size(), me = rank();
  if (group_size < 1 || n_ranks % group_size != 0) {
    return InvalidArgument("groups of {} ranks do not divide {} ranks", group_size, n_ranks);
  }
  const int first = me / group_size * group_size;
  if (count > 0 && recv + (me - first) * count != send) {
    KVS_RETURN_IF_ERROR(
        KVS_CUDA(cudaMemcpyAsync(recv + (me - first) * count, send, count * sizeof(float),
                                 cudaMemcpyDeviceToDevice, stream_)));
  }
  if (group_size == 1 || count == 0) return Status::Ok();
  const Status started = KVS_NCCL(ncclGroupStart());
  if (!started.ok()) return Abort(started);
  ncclResult_t rc = ncclSuccess;
  const char* failed = nullptr;
  for (int i = 0; i < group_size && (rc == ncclSuccess || rc == ncclInProgress); ++i) {
    if (first + i == me) continue;
    rc = ncclRecv(recv + i * count, count, ncclFloat, first + i, comm_, stream_);
    failed = "ncclRecv";
    if (rc == ncclSuccess || rc == ncclInProgress) {
      rc = ncclSend(send, count, ncclFloat, first + i, comm_, stream_);
      failed = "ncclSend";
    }
  }
  const Status end = KVS_NCCL_ENQUEUE(ncclGroupEnd());
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return Abort(NcclStatus(rc, failed, __FILE__, __LINE__, comm_));
  }
  return end;
}

Status NcclCommunicator::Synchronize() {
  KVS_RETURN_IF_ERROR(Broken());
  const Status st = WaitForStream(stream_, options_.timeout_s, "NCCL collectives", [this] {
    ncclResult_t state = ncclSuccess;
    KVS_RETURN_IF_ERROR(KVS_NCCL(ncclCommGetAsyncError(comm_, &state)));
    if (state != ncclSuccess && state != ncclInProgress) {
      return NcclStatus(state, "an NCCL collective (asynchronous error)", __FILE__, __LINE__,
                        comm_);
    }
    control_->PumpLiveness();
    return control_->CheckLiveness();
  });
  return st.ok() ? st : Abort(st);
}

Status NcclCommunicator::Close() {
  if (!comm_) return Broken();
  const ncclResult_t rc = ncclCommFinalize(comm_);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return Abort(NcclStatus(rc, "ncclCommFinalize", __FILE__, __LINE__, comm_));
  }
  KVS_RETURN_IF_ERROR(WaitReady("ncclCommFinalize"));
  const Status destroyed = KVS_NCCL(ncclCommDestroy(comm_));
  comm_ = nullptr;
  broken_ = "closed";
  return destroyed;
}

}  // namespace kvshard::cuda
