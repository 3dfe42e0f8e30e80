// Which collective joins the seq shards' attention partials (issue: long context). Per layer and
// step, each of a head group's S shards holds [T, q_width] outputs and [T, q_heads] log-sum-exps
// of its positions, and the group needs their exact merge. Three ways, timed under mpirun with
// the world as one group (mpirun -np S):
//   allgather_p2p   what kvshard does (MpiCommunicator::AllGatherInGroups): every shard sends its
//                   [out | lse] to every other, each merges locally; one round, no sub-communicator
//                   to create (a blocking MPI_Comm_split would hang on a dead rank);
//   allgather_mpi   MPI_Iallgather of the same payload on the group's communicator;
//   lse_reduce      two all-reduces: the max of the lse, then the sum of exp(lse - max) * out and
//                   of exp(lse - max) (the LSE-aware reduce; it also leaves every rank with all
//                   columns, so wo could not split over the shards without a third step).
// Payloads for T = 1 (decode) and 16 and 512 (a batch, a prefill chunk), 8 heads x 64. Prints
// one JSON line per point: microseconds per call, best of 5 runs of 200 calls.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include "transport/mpi_communicator.h"

namespace kvshard {
namespace {

double TimeIt(MPI_Comm comm, int calls, const std::function<void()>& body) {
  double best = 1e30;
  for (int run = 0; run < 5; ++run) {
    MPI_Barrier(comm);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) body();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double worst = s;
    MPI_Allreduce(&s, &worst, 1, MPI_DOUBLE, MPI_MAX, comm);
    best = std::min(best, worst / calls * 1e6);
  }
  return best;
}

int Main() {
  auto comm = MpiCommunicator::Create(MPI_COMM_WORLD);
  if (!comm.ok()) return 1;
  MpiCommunicator& c = **comm;
  const int S = c.size();
  constexpr int64_t kHeads = 8, kHeadDim = 64;
  for (const int64_t T : {int64_t{1}, int64_t{16}, int64_t{512}}) {
    const int64_t width = kHeads * kHeadDim;
    const size_t part = static_cast<size_t>(T * (width + kHeads));
    std::vector<float> mine(part, 1.0f), all(part * S), out(T * width), lse(T * kHeads);
    const int calls = T >= 512 ? 40 : 200;
    const double p2p = TimeIt(c.comm(), calls,
                              [&] { (void)c.AllGatherInGroups(mine.data(), part, all.data(), S); });
    const double mpi = TimeIt(c.comm(), calls, [&] {
      MPI_Allgather(mine.data(), static_cast<int>(part), MPI_FLOAT, all.data(),
                    static_cast<int>(part), MPI_FLOAT, c.comm());
    });
    const double reduce = TimeIt(c.comm(), calls, [&] {
      std::copy(mine.begin() + T * width, mine.end(), lse.begin());
      MPI_Allreduce(MPI_IN_PLACE, lse.data(), static_cast<int>(lse.size()), MPI_FLOAT, MPI_MAX,
                    c.comm());
      std::vector<float>& scaled = all;  // [out * w | w], reused
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t h = 0; h < kHeads; ++h) {
          const float w = std::exp(mine[T * width + t * kHeads + h] - lse[t * kHeads + h]);
          for (int64_t d = 0; d < kHeadDim; ++d) {
            scaled[(t * kHeads + h) * kHeadDim + d] = w * mine[(t * kHeads + h) * kHeadDim + d];
          }
          scaled[T * width + t * kHeads + h] = w;
        }
      }
      MPI_Allreduce(MPI_IN_PLACE, scaled.data(), static_cast<int>(part), MPI_FLOAT, MPI_SUM,
                    c.comm());
    });
    if (c.rank() == 0) {
      std::printf(
          "{\"shards\": %d, \"tokens\": %lld, \"payload_bytes\": %zu, \"allgather_p2p_us\": %.1f, "
          "\"allgather_mpi_us\": %.1f, \"lse_reduce_us\": %.1f}\n",
          S, static_cast<long long>(T), part * sizeof(float), p2p, mpi, reduce);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace kvshard

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int rc = kvshard::Main();
  MPI_Finalize();
  return rc;
}
