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

Status MpiCommunicator::EnableLiveness(const LivenessOptions& options, double timeout_scale) {
  KVS_ASSIGN_OR_RETURN(heartbeat_, Heartbeat::Create(comm_, hosts_, options));
  step_timeout_s_ = options.step_timeout_s * timeout_scale;
  return Status::Ok();
}

void MpiCommunicator::PumpLiveness() {
  if (heartbeat_) heartbeat_->Pump();
}

Status MpiCommunicator::CheckLiveness() {
  KVS_RETURN_IF_ERROR(Broken());
  if (!heartbeat_) return Status::Ok();
  heartbeat_->Pump();
  const Status st = heartbeat_->Check();
  if (!st.ok()) broken_ = st.message();
  return st;
}

Status MpiCommunicator::Broken() const {
  if (broken_.empty()) return Status::Ok();
  return Unavailable("{}", broken_);
}

Status MpiCommunicator::WaitAll(MPI_Request* requests, int n, const char* what, double timeout_s) {
  if (!heartbeat_) return KVS_MPI(MPI_Waitall(n, requests, MPI_STATUSES_IGNORE));
  // Inside a step the peers' share usually arrives within a millisecond: spin that long. An
  // idle wait (no deadline) spins briefly and then sleeps.
  const auto spin =
      timeout_s > 0 ? std::chrono::microseconds(2000) : std::chrono::microseconds(200);
  const auto start = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(20);
  for (;;) {
    int done = 0;
    const int rc = MPI_Testall(n, requests, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      broken_ = MpiStatus(rc, what, __FILE__, __LINE__).message();
      return Broken();
    }
    if (done) return Status::Ok();
    const auto waited = std::chrono::steady_clock::now() - start;
    if (heartbeat_) {
      heartbeat_->Pump();
      const double s = std::chrono::duration<double>(waited).count();
      const double limit = std::min(timeout_s, deadline_cap_s_.load());
      if (timeout_s > 0 && s > limit) {
        broken_ = fmt::format("{} on rank {} ({}) did not complete within {:.1f} s: {}", what,
                              rank_, hosts_[rank_], limit, heartbeat_->Quietest());
        return Broken();
      }
      if (timeout_s <= 0) {
        const Status alive = heartbeat_->Check();
        if (!alive.ok()) {
          broken_ = alive.message();
          return Broken();
        }
      }
    }
    // Yield while spinning (the peer, or the kernel moving its packets, may need this core),
    // then back off to sleeps of up to 1 ms, so a waiting rank leaves its core to others.
    if (waited > spin) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    } else {
      std::this_thread::yield();
    }
  }
}

Status MpiCommunicator::PollWithoutSpinning(MPI_Request* request) {
  const auto start = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(20);
  for (;;) {
    int done = 0;
    KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Test(request, &done, MPI_STATUS_IGNORE)));
    if (done) return Status::Ok();
    if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(200)) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    } else {
      std::this_thread::yield();
    }
  }
}

Status MpiCommunicator::AllReduceSum(float* data, size_t n) {
  if (n > static_cast<size_t>(INT_MAX)) return InvalidArgument("all-reduce of {} floats", n);
  KVS_RETURN_IF_ERROR(Broken());
  if (!heartbeat_) {
    return KVS_MPI(
        MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_));
  }
  MPI_Request r;
  KVS_RETURN_IF_ERROR(KVS_MPI(
      MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_, &r)));
  return Wait(&r, "all-reduce", step_timeout_s_);
}

Status MpiCommunicator::AllReduceSumDouble(double* data, size_t n) {
  if (n > static_cast<size_t>(INT_MAX)) return InvalidArgument("all-reduce of {} doubles", n);
  KVS_RETURN_IF_ERROR(Broken());
  MPI_Request r;
  KVS_RETURN_IF_ERROR(KVS_MPI(
      MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, comm_, &r)));
  return Wait(&r, "all-reduce", step_timeout_s_);
}

Status MpiCommunicator::AllReduceMax(int* value) {
  KVS_RETURN_IF_ERROR(Broken());
  MPI_Request r;
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Iallreduce(MPI_IN_PLACE, value, 1, MPI_INT, MPI_MAX, comm_, &r)));
  return Wait(&r, "all-reduce", step_timeout_s_);
}

Status MpiCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (bytes > static_cast<size_t>(INT_MAX)) return InvalidArgument("broadcast of {} bytes", bytes);
  KVS_RETURN_IF_ERROR(Broken());
  if (!heartbeat_) {
    return KVS_MPI(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_));
  }
  MPI_Request r;
  KVS_RETURN_IF_ERROR(
      KVS_MPI(MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_, &r)));
  return Wait(&r, "broadcast", step_timeout_s_);
}

Status MpiCommunicator::BroadcastIdle(void* data, size_t bytes, int root) {
  if (bytes > static_cast<size_t>(INT_MAX)) return InvalidArgument("broadcast of {} bytes", bytes);
  KVS_RETURN_IF_ERROR(Broken());
  MPI_Request r;
  KVS_RETURN_IF_ERROR(
      KVS_MPI(MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_, &r)));
  if (!heartbeat_) return PollWithoutSpinning(&r);
  // No deadline (a server may idle for days), but a root that stops beating ends the wait.
  return Wait(&r, "step-plan broadcast", 0);
}

Status MpiCommunicator::GatherV(const float* send, int count, float* recv,
                                const std::vector<int>& counts, int root) {
  KVS_RETURN_IF_ERROR(Broken());
  std::vector<int> displs(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) displs[r] = displs[r - 1] + counts[r - 1];
  MPI_Request r;
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Igatherv(send, count, MPI_FLOAT, recv, counts.data(),
                                           displs.data(), MPI_FLOAT, root, comm_, &r)));
  return Wait(&r, "logits gather", step_timeout_s_);
}

Status MpiCommunicator::AllGatherInGroups(const float* send, size_t count, float* recv,
                                          int group_size) {
  if (count > static_cast<size_t>(INT_MAX))
    return InvalidArgument("all-gather of {} floats", count);
  if (group_size < 1 || size_ % group_size != 0) {
    return InvalidArgument("groups of {} ranks do not divide {} ranks", group_size, size_);
  }
  KVS_RETURN_IF_ERROR(Broken());
  const int first = rank_ / group_size * group_size, me = rank_ - first;
  const int n = static_cast<int>(count);
  std::copy(send, send + count, recv + static_cast<size_t>(me) * count);
  if (group_size == 1) return Status::Ok();
  constexpr int kTag = 7301;
  group_requests_.resize(2 * (group_size - 1));
  int k = 0;
  for (int i = 0; i < group_size; ++i) {
    if (i == me) continue;
    KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Irecv(recv + static_cast<size_t>(i) * count, n, MPI_FLOAT,
                                          first + i, kTag, comm_, &group_requests_[k++])));
  }
  for (int i = 0; i < group_size; ++i) {
    if (i == me) continue;
    KVS_RETURN_IF_ERROR(
        KVS_MPI(MPI_Isend(send, n, MPI_FLOAT, first + i, kTag, comm_, &group_requests_[k++])));
  }
  return WaitAll(group_requests_.data(), k, "attention all-gather", step_timeout_s_);
}

StatusOr<std::vector<std::string>> MpiCommunicator::GatherStrings(const std::string& mine,
                                                                  int root) {
  KVS_RETURN_IF_ERROR(Broken());
  int len = static_cast<int>(std::min<size_t>(mine.size(), 1 << 20));
  std::vector<int> lens(size_);
  MPI_Request r;
  KVS_RETURN_IF_ERROR(
      KVS_MPI(MPI_Igather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, root, comm_, &r)));
  KVS_RETURN_IF_ERROR(Wait(&r, "gather", step_timeout_s_));
  std::vector<int> displs(size_, 0);
  int total = 0;
  for (int i = 0; i < size_; ++i) {
    displs[i] = total;
    total += rank_ == root ? lens[i] : 0;
  }
  std::vector<char> all(std::max(total, 1));
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Igatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(),
                                           displs.data(), MPI_CHAR, root, comm_, &r)));
  KVS_RETURN_IF_ERROR(Wait(&r, "gather", step_timeout_s_));
  std::vector<std::string> out;
  if (rank_ == root) {
    for (int i = 0; i < size_; ++i) out.emplace_back(all.data() + displs[i], lens[i]);
  }
  return out;
}

Status MpiCommunicator::Barrier() {
  KVS_RETURN_IF_ERROR(Broken());
  MPI_Request r;
  KVS_RETURN_IF_ERROR(KVS_MPI(MPI_Ibarrier(comm_, &r)));
  return Wait(&r, "barrier", step_timeout_s_);
}

}  // namespace kvshard
