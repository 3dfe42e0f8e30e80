#include "common/cuda/cuda_check.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>

namespace kvshard::cuda {
namespace {

std::string RankText() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    int rank = -1;
    if (MPI_Comm_rank(MPI_COMM_WORLD, &rank) == MPI_SUCCESS) return std::to_string(rank);
  }
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* value = std::getenv(name)) return value;
  }
  return "?";
}

}  // namespace

std::string WhereAmI() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();  // do not leave the failed query as the sticky "last error"
    return fmt::format("rank {} on {}", RankText(), host);
  }
  return fmt::format("rank {} on {}, device {}", RankText(), host, device);
}

Status CudaStatus(cudaError_t rc, const char* call, const char* file, int line) {
  if (rc == cudaSuccess) return Status::Ok();
  cudaGetLastError();  // clear a non-sticky error so the next launch check does not see it
  const StatusCode code =
      rc == cudaErrorMemoryAllocation ? StatusCode::kResourceExhausted : StatusCode::kInternal;
  return Status(code, fmt::format("{} failed at {}:{} on {}: {} ({})", call, file, line, WhereAmI(),
                                  cudaGetErrorString(rc), cudaGetErrorName(rc)));
}

Status CublasStatus(cublasStatus_t rc, const char* call, const char* file, int line) {
  if (rc == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  const StatusCode code =
      rc == CUBLAS_STATUS_ALLOC_FAILED ? StatusCode::kResourceExhausted : StatusCode::kInternal;
  return Status(code, fmt::format("{} failed at {}:{} on {}: {} ({})", call, file, line, WhereAmI(),
                                  cublasGetStatusString(rc), cublasGetStatusName(rc)));
}

int UsableDeviceCount(std::string* why) {
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    cudaGetLastError();
    if (why)
      *why =
          fmt::format("cudaGetDeviceCount: {} ({})", cudaGetErrorString(rc), cudaGetErrorName(rc));
    return 0;
  }
  if (count == 0 && why) *why = "cudaGetDeviceCount found no device";
  return count;
}

Status NcclStatus(ncclResult_t rc, const char* call, const char* file, int line, ncclComm_t comm) {
  if (rc == ncclSuccess) return Status::Ok();
  const char* detail = ncclGetLastError(comm);
  return Unavailable("{} failed at {}:{} on {}: {}{}{}", call, file, line, WhereAmI(),
                     ncclGetErrorString(rc), detail && *detail ? ": " : "", detail ? detail : "");
}

}  // namespace kvshard::cuda
