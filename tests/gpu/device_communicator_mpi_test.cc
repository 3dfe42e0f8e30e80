// The device communicators under `mpirun -np 2`: the host-staged one with both ranks on one GPU
// (NCCL refuses that), NCCL with one GPU per rank where there are enough GPUs, and a collective
// that one rank never joins failing within the deadline instead of hanging. All ranks decide
// together whether to skip, so that no rank waits in a collective for a rank that skipped.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <thread>

#include "tests/gpu/gpu_test_util.h"
#include "transport/cuda/nccl_communicator.h"
#include "transport/cuda/staged_device_communicator.h"

namespace kvshard::cuda {
namespace {

using testing::DeviceArray;
using testing::Stream;

// The usable device count of the rank that has the fewest.
int AgreedDeviceCount() {
  int n = UsableDeviceCount();
  MPI_Allreduce(MPI_IN_PLACE, &n, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return n;
}

#define KVS_REQUIRE_DEVICES_ON_ALL_RANKS(min)                                             \
  do {                                                                                    \
    if (AgreedDeviceCount() < (min)) {                                                    \
      GTEST_SKIP() << "needs " << (min) << " CUDA device(s) on every rank: test not run"; \
    }                                                                                     \
  } while (0)

// Sums and gathers through `comm` and checks the results on every rank.
void CheckAllReduceAndGather(DeviceCommunicator& comm) {
  const int rank = comm.rank(), size = comm.size();
  const int64_t n = 1000;
  std::vector<float> mine(n);
  for (int64_t i = 0; i < n; ++i) mine[i] = static_cast<float>((rank + 1) * (i + 1));
  DeviceArray<float> data(mine);
  ASSERT_TRUE(comm.AllReduceSum(data.get(), n).ok());
  const Status synced = comm.Synchronize();
  ASSERT_TRUE(synced.ok()) << synced.ToString();
  const std::vector<float> sum = data.ToHost();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(sum[i], static_cast<float>((i + 1) * size * (size + 1) / 2)) << "element " << i;
  }

  // Rank r sends r + 2 values 100 r + j; rank 0 receives them concatenated.
  std::vector<int> counts(size);
  int total = 0;
  for (int r = 0; r < size; ++r) total += counts[r] = r + 2;
  std::vector<float> send(counts[rank]);
  for (int j = 0; j < counts[rank]; ++j) send[j] = static_cast<float>(100 * rank + j);
  DeviceArray<float> d_send(send), d_recv(total);
  const Status gathered = comm.GatherV(d_send.get(), counts[rank], d_recv.get(), counts, 0);
  ASSERT_TRUE(gathered.ok()) << gathered.ToString();
  ASSERT_TRUE(comm.Synchronize().ok());
  if (rank == 0) {
    const std::vector<float> got = d_recv.ToHost();
    int k = 0;
    for (int r = 0; r < size; ++r) {
      for (int j = 0; j < counts[r]; ++j, ++k) EXPECT_EQ(got[k], 100.0f * r + j);
    }
  }

  // The control plane still works on host memory.
  int value = rank;
  ASSERT_TRUE(comm.AllReduceMax(&value).ok());
  EXPECT_EQ(value, size - 1);
}

TEST(StagedDeviceCommunicator, AllReduceAndGatherWithRanksSharingOneGpu) {
  KVS_REQUIRE_DEVICES_ON_ALL_RANKS(1);
  KVS_TEST_CUDA(cudaSetDevice(0));
  auto control = MpiCommunicator::Create(MPI_COMM_WORLD);
  ASSERT_TRUE(control.ok()) << control.status().ToString();
  Stream stream;
  StagedOptions options;
  options.max_reduce_floats = 1000;
  options.max_gather_floats = 1000;
  options.timeout_s = 30;
  auto comm = StagedDeviceCommunicator::Create(control->get(), stream.get(), options);
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  EXPECT_FALSE((*comm)->capturable());
  CheckAllReduceAndGather(**comm);
  DeviceArray<float> big(2000);
  EXPECT_EQ((*comm)->AllReduceSum(big.get(), 2000).code(), StatusCode::kInvalidArgument);
}

// One GPU per rank when there are enough; otherwise every rank forms a one-rank NCCL clique of
// its own, which still runs the bootstrap, the polled initialisation, enqueueing and Synchronize.
TEST(NcclCommunicator, AllReduceAndGather) {
  KVS_REQUIRE_DEVICES_ON_ALL_RANKS(1);
  int world = 0, world_rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  const bool one_per_rank = AgreedDeviceCount() >= world;
  KVS_TEST_CUDA(cudaSetDevice(one_per_rank ? world_rank : 0));
  MPI_Comm group;
  MPI_Comm_split(MPI_COMM_WORLD, one_per_rank ? 0 : world_rank, world_rank, &group);
  auto control = MpiCommunicator::Create(group);
  MPI_Comm_free(&group);
  ASSERT_TRUE(control.ok()) << control.status().ToString();
  Stream stream;
  NcclOptions options;
  options.timeout_s = 60;
  auto comm = NcclCommunicator::Create(control->get(), stream.get(), options);
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  EXPECT_TRUE((*comm)->capturable());
  CheckAllReduceAndGather(**comm);
  const Status closed = (*comm)->Close();
  EXPECT_TRUE(closed.ok()) << closed.ToString();
  EXPECT_EQ((*comm)->AllReduceSum(nullptr, 1).code(), StatusCode::kFailedPrecondition);
}

TEST(NcclCommunicator, CollectiveOneRankNeverJoinsFailsWithinTheDeadline) {
  int world = 0, world_rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  if (world < 2) GTEST_SKIP() << "needs 2 ranks";
  KVS_REQUIRE_DEVICES_ON_ALL_RANKS(world);
  KVS_TEST_CUDA(cudaSetDevice(world_rank));
  auto control = MpiCommunicator::Create(MPI_COMM_WORLD);
  ASSERT_TRUE(control.ok()) << control.status().ToString();
  Stream stream;
  NcclOptions options;
  options.timeout_s = 3;
  auto comm = NcclCommunicator::Create(control->get(), stream.get(), options);
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  DeviceArray<float> data(1 << 20);
  if (world_rank == 0) {
    const auto start = std::chrono::steady_clock::now();
    Status st = (*comm)->AllReduceSum(data.get(), data.size());
    if (st.ok()) st = (*comm)->Synchronize();
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
    EXPECT_NE(st.message().find("rank 0"), std::string::npos) << st.message();
    EXPECT_LT(waited, 30.0);
    EXPECT_EQ((*comm)->AllReduceSum(data.get(), 1).code(), StatusCode::kFailedPrecondition);
  }
  MPI_Barrier(MPI_COMM_WORLD);  // rank 1 sat this one out; its communicator is aborted on exit
}

}  // namespace
}  // namespace kvshard::cuda
