#include "transport/heartbeat.h"

#include <fmt/format.h>

namespace kvshard {
namespace {

constexpr int kTag = 7;
constexpr size_t kMaxOutstanding = 8;  // beats queued to a peer that does not receive them

double Seconds(Heartbeat::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

StatusOr<std::unique_ptr<Heartbeat>> Heartbeat::Create(MPI_Comm comm,
                                                       std::vector<std::string> hosts,
                                                       const LivenessOptions& options) {
  MPI_Comm dup;
  if (MPI_Comm_dup(comm, &dup) != MPI_SUCCESS) return Internal("MPI_Comm_dup for heartbeats");
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  return std::unique_ptr<Heartbeat>(new Heartbeat(dup, std::move(hosts), options));
}

Heartbeat::Heartbeat(MPI_Comm comm, std::vector<std::string> hosts, const LivenessOptions& options)
    : comm_(comm), hosts_(std::move(hosts)), options_(options) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  last_seen_.assign(size_, Clock::now());
  sends_.resize(size_);
}

Heartbeat::~Heartbeat() {
  // Outstanding sends to a dead peer can never complete; they are abandoned with the process.
  for (auto& reqs : sends_) {
    for (MPI_Request& r : reqs) {
      int done = 0;
      MPI_Test(&r, &done, MPI_STATUS_IGNORE);
      if (!done) MPI_Request_free(&r);
    }
  }
}

std::vector<int> Heartbeat::Peers() const {
  std::vector<int> peers;
  if (rank_ == 0) {
    for (int r = 1; r < size_; ++r) peers.push_back(r);
  } else {
    peers.push_back(0);
  }
  return peers;
}

void Heartbeat::Pump() {
  const Clock::time_point now = Clock::now();
  if (now - last_pump_ < std::chrono::milliseconds(1)) return;
  last_pump_ = now;
  for (int p : Peers()) {
    auto& reqs = sends_[p];
    for (size_t i = 0; i < reqs.size();) {
      int done = 0;
      if (MPI_Test(&reqs[i], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done) {
        reqs.erase(reqs.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }
  if (Seconds(now - last_send_) >= options_.heartbeat_interval_s) {
    last_send_ = now;
    ++beat_;
    for (int p : Peers()) {
      if (sends_[p].size() >= kMaxOutstanding) continue;
      MPI_Request r;
      if (MPI_Isend(&beat_, 1, MPI_INT64_T, p, kTag, comm_, &r) == MPI_SUCCESS) {
        sends_[p].push_back(r);
      }
    }
  }
  for (;;) {
    int flag = 0;
    MPI_Status st;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kTag, comm_, &flag, &st) != MPI_SUCCESS || !flag) break;
    if (MPI_Recv(&inbox_, 1, MPI_INT64_T, st.MPI_SOURCE, kTag, comm_, MPI_STATUS_IGNORE) !=
        MPI_SUCCESS) {
      break;
    }
    last_seen_[st.MPI_SOURCE] = now;
  }
}

Status Heartbeat::Check() const {
  const Clock::time_point now = Clock::now();
  std::string stale;
  for (int p : Peers()) {
    const double quiet = Seconds(now - last_seen_[p]);
    if (quiet > options_.heartbeat_timeout_s) {
      stale += fmt::format("{}rank {} on {} (no heartbeat for {:.1f} s)", stale.empty() ? "" : ", ",
                           p, hosts_[p], quiet);
    }
  }
  if (stale.empty()) return Status::Ok();
  return Unavailable("{} is gone or stuck", stale);
}

std::string Heartbeat::Quietest() const {
  const Clock::time_point now = Clock::now();
  int worst = -1;
  double quiet = -1;
  for (int p : Peers()) {
    const double q = Seconds(now - last_seen_[p]);
    if (q > quiet) {
      quiet = q;
      worst = p;
    }
  }
  if (worst < 0) return "no peers";
  return fmt::format("the quietest peer is rank {} on {} (last heartbeat {:.1f} s ago)", worst,
                     hosts_[worst], quiet);
}

}  // namespace kvshard
