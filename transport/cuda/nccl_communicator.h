// Communicator over NCCL, one GPU per rank (NCCL refuses two ranks on one GPU; for that, see
// staged_device_communicator.h). The data plane runs on device buffers, ordered on the compute
// stream, and can be captured into CUDA graphs; the control plane stays on MPI.
//
// Nothing waits forever: the communicator is created non-blocking (ncclConfig_t.blocking = 0) and
// every NCCL call, the initialisation included, is polled with ncclCommGetAsyncError against a
// deadline; Synchronize() polls the stream the same way. On an error or past the deadline the
// communicator is aborted (ncclCommAbort) and the Status names the call, this rank and its host.
#pragma once

#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "common/cuda/cuda_check.h"  // KVS_NCCL
#include "transport/cuda/device_communicator.h"

namespace kvshard::cuda {

struct NcclOptions {
  double timeout_s = 120;  // for the initialisation, every NCCL call and every Synchronize()
};

class NcclCommunicator final : public DeviceCommunicator {
 public:
  // Collective over `control`'s ranks, each with its own GPU current (cudaSetDevice). Rank 0
  // creates the ncclUniqueId and broadcasts it over MPI. Every rank returns the same result: ok
  // everywhere, or an error everywhere naming the ranks that failed (AgreeOnStatus). `control`
  // must outlive the communicator.
  static StatusOr<std::unique_ptr<NcclCommunicator>> Create(MpiCommunicator* control,
                                                            cudaStream_t stream,
                                                            const NcclOptions& options = {});
  // Aborts the NCCL communicator if Close() has not released it (never blocks).
  ~NcclCommunicator() override;

  // data: device f32 [n], summed in place over all ranks, enqueued on stream().
  Status AllReduceSum(float* data, size_t n) override;
  // send: device f32 [count]; recv: device f32 [sum of counts] on root (ignored elsewhere).
  // Point-to-point inside the group (ncclSend/ncclRecv in one NCCL group): no split communicator.
  Status AllGatherInGroups(const float* send, size_t count, float* recv, int group_size) override;
  Status GatherV(const float* send, int count, float* recv, const std::vector<int>& counts,
                 int root) override;
  Status Synchronize() override;
  bool capturable() const override { return true; }

  // Releases the communicator gracefully (ncclCommFinalize, then ncclCommDestroy), bounded by the
  // deadline; aborts it when that fails. Collective. Later data-plane calls fail.
  Status Close();

 private:
  NcclCommunicator(MpiCommunicator* control, cudaStream_t stream, const NcclOptions& options);
  Status Init(const ncclUniqueId& id);
  // After a call on the non-blocking communicator: polls until it is no longer in progress.
  Status WaitReady(const char* what);
  // Checks the return code of a call that enqueues work, then waits until it is enqueued.
  Status Enqueued(ncclResult_t rc, const char* call, const char* file, int line);
  // Aborts the communicator, remembers why, and returns `why`.
  Status Abort(const Status& why);
  Status Broken() const;

  NcclOptions options_;
  ncclComm_t comm_ = nullptr;
  std::string broken_;  // why the communicator can no longer be used ("" while healthy)
};

}  // namespace kvshard::cuda
