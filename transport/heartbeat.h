// Liveness between rank 0 and every shard: rank 0 sends each shard a small message every
// interval and each shard sends one to rank 0, on a communicator of their own. Nothing runs in
// the background (MPI is called from the main thread only): Pump() is called from every place
// that waits (collective polling loops, the idle server loop), which is where liveness matters.
// A peer that sends nothing for `timeout` is stale: gone, stopped, or cut off.
#pragma once

#include <mpi.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvshard {

struct LivenessOptions {
  double step_timeout_s = 3.0;         // a collective that takes longer fails
  double heartbeat_interval_s = 0.25;  // how often beats are sent
  double heartbeat_timeout_s = 3.0;    // silence after which a peer is declared gone
};

class Heartbeat {
 public:
  using Clock = std::chrono::steady_clock;

  // Collective over `comm` (dups it). `hosts[r]` names rank r's host for messages.
  static StatusOr<std::unique_ptr<Heartbeat>> Create(MPI_Comm comm, std::vector<std::string> hosts,
                                                     const LivenessOptions& options);
  ~Heartbeat();

  // Sends due beats, reaps completed sends, records received beats. Cheap; throttled to once
  // per millisecond.
  void Pump();
  // Ok, or Unavailable naming each stale peer (rank, host, seconds of silence).
  Status Check() const;
  // The peer silent for longest and for how long (for explaining a stalled collective).
  std::string Quietest() const;
  const LivenessOptions& options() const { return options_; }

 private:
  Heartbeat(MPI_Comm comm, std::vector<std::string> hosts, const LivenessOptions& options);
  std::vector<int> Peers() const;  // rank 0: every shard; a shard: rank 0

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<std::string> hosts_;
  LivenessOptions options_;
  Clock::time_point last_pump_{}, last_send_{};
  std::vector<Clock::time_point> last_seen_;     // [size]
  std::vector<std::vector<MPI_Request>> sends_;  // [size] outstanding beats to each peer
  int64_t beat_ = 0;
  int64_t inbox_ = 0;
};

}  // namespace kvshard
