#include "transport/mpi_communicator.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <thread>

namespace kvshard {
namespace {

std::string HostName() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

int WorldRank() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int rank = -1;
  if (initialized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

}  // namespace

Status MpiStatus(int rc, const char* call, const char* file, int line) {
  if (rc == MPI_SUCCESS) return Status::Ok();
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return Unavailable("{} failed at {}:{} on rank {} ({}): {}", call, file, line, WorldRank(),
                     HostName(), text);
}

StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(MPI_Comm comm) {
  MPI_Comm dup;
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Comm_dup(comm, &dup)));
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN)));
  int size = 0;
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Comm_size(dup, &size)));
  // Every rank learns every rank's host once, so errors can name where a peer lives.
  char mine[64] = {};
  std::strncpy(mine, HostName().c_str(), sizeof(mine) - 1);
  std::vector<char> all(size * sizeof(mine));
  KVS_RETURN_IF_ERROR(KVS_MPI(
      MPI_Allgather(mine, sizeof(mine), MPI_CHAR, all.data(), sizeof(mine), MPI_CHAR, dup)));
  std::vector<std::string> hosts;
  for (int r = 0; r < size; ++r) hosts.emplace_back(all.data() + r * sizeof(mine));
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(dup, std::move(hosts)));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::vector<std::string> hosts)
    : comm_(comm), hosts_(std::move(hosts)) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&comm_);
}

std::string MpiCommunicator::Where(int rank) const {
  if (rank < 0 || rank >= size_) return fmt::format("rank {}", rank);
  return fmt::format("rank {} on {}", rank, hosts_[rank]);
}

Status MpiCommunicator::AllReduceSum(float* data, size_t n) {
  if (n > static_cast<size_t>(INT_MAX)) return InvalidArgument("all-reduce of {} floats", n);
  return KVS_MPI(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_));
}

Status MpiCommunicator::AllReduceSumDouble(double* data, size_t n) {
  if (n > static_cast<size_t>(INT_MAX)) return InvalidArgument("all-reduce of {} doubles", n);
  return KVS_MPI(
      MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, comm_));
}

Status MpiCommunicator::AllReduceMax(int* value) {
  return KVS_MPI(MPI_Allreduce(MPI_IN_PLACE, value, 1, MPI_INT, MPI_MAX, comm_));
}

Status MpiCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (bytes > static_cast<size_t>(INT_MAX)) return InvalidArgument("broadcast of {} bytes", bytes);
  return KVS_MPI(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_));
}

Status MpiCommunicator::BroadcastIdle(void* data, size_t bytes, int root) {
  if (bytes > static_cast<size_t>(INT_MAX)) return InvalidArgument("broadcast of {} bytes", bytes);
  MPI_Request request;
  KVS_RETURN_IF_ERROR(
      KVS_MPI(MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_, &request)));
  // Spin briefly (a busy server's next step comes within microseconds), then back off to sleeps
  // of up to 1 ms so an idle shard leaves its core to others.
  const auto start = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(20);
  for (;;) {
    int done = 0;
    KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Test(&request, &done, MPI_STATUS_IGNORE)));
    if (done) return Status::Ok();
    if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(200)) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }
}

Status MpiCommunicator::GatherV(const float* send, int count, float* recv,
                                const std::vector<int>& counts, int root) {
  std::vector<int> displs(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) displs[r] = displs[r - 1] + counts[r - 1];
  return KVS_MPI(MPI_Gatherv(send, count, MPI_FLOAT, recv, counts.data(), displs.data(), MPI_FLOAT,
                             root, comm_));
}

StatusOr<std::vector<std::string>> MpiCommunicator::GatherStrings(const std::string& mine,
                                                                  int root) {
  int len = static_cast<int>(std::min<size_t>(mine.size(), 1 << 20));
  std::vector<int> lens(size_);
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, root, comm_)));
  std::vector<int> displs(size_, 0);
  int total = 0;
  for (int r = 0; r < size_; ++r) {
    displs[r] = total;
    total += rank_ == root ? lens[r] : 0;
  }
  std::vector<char> all(std::max(total, 1));
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Gatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(),
                                          displs.data(), MPI_CHAR, root, comm_)));
  std::vector<std::string> out;
  if (rank_ == root) {
    for (int r = 0; r < size_; ++r) out.emplace_back(all.data() + displs[r], lens[r]);
  }
  return out;
}

Status MpiCommunicator::Barrier() { return KVS_MPI(MPI_Barrier(comm_)); }

}  // namespace kvshard
