// Checks for CUDA runtime, cuBLAS and NCCL calls, for every CUDA module (kernels, transport, shard)
// (DESIGN.md §5.3): a failed call becomes a Status that names the call, file:line, rank, host and
// device. Kernel launchers return the cudaError_t of cudaGetLastError() right after their launches,
// so `KVS_CUDA(cuda::rmsnorm(...))` checks a launch the same way as any other call.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>

#include "common/status.h"

namespace kvshard::cuda {

Status CudaStatus(cudaError_t rc, const char* call, const char* file, int line);
Status CublasStatus(cublasStatus_t rc, const char* call, const char* file, int line);
// An NCCL result as a Status naming the call, file:line, rank, host and device, with NCCL's own
// last error message for `comm` (DESIGN.md §5.3).
Status NcclStatus(ncclResult_t rc, const char* call, const char* file, int line,
                  ncclComm_t comm = nullptr);

// "rank R on HOST, device D": where this process runs, for error messages. The rank is the MPI
// world rank when MPI is initialised, else the launcher's environment (OMPI_COMM_WORLD_RANK...).
std::string WhereAmI();

// Number of usable CUDA devices: 0 when there is none or the driver cannot be loaded, with the
// reason in `why` (if given). Never fails.
int UsableDeviceCount(std::string* why = nullptr);

}  // namespace kvshard::cuda

#define KVS_CUDA(call) ::kvshard::cuda::CudaStatus((call), #call, __FILE__, __LINE__)
#define KVS_CUBLAS(call) ::kvshard::cuda::CublasStatus((call), #call, __FILE__, __LINE__)
#define KVS_NCCL(call) ::kvshard::cuda::NcclStatus((call), #call, __FILE__, __LINE__)
