// What the multi-rank tests share: where the test models are, a group of the world, and how far
// two runs' logits are apart.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "transport/mpi_communicator.h"

namespace kvshard {

inline std::string TestModelDir(const std::string& name) {
  const char* dir = std::getenv("KVSHARD_TEST_MODELS");
  return std::string(dir ? dir : "test_models") + "/" + name;
}

// This rank's group when the world is split into groups of `size` consecutive ranks.
inline StatusOr<std::unique_ptr<MpiCommunicator>> GroupOf(int size) {
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank / size, world_rank, &sub);
  auto comm = MpiCommunicator::Create(sub);
  MPI_Comm_free(&sub);
  EXPECT_TRUE(comm.ok()) << comm.status().ToString();
  return comm;
}

// max |a - b| / max |a| over every logit of every step (step counts and sizes must agree).
inline double RelativeDiff(const std::vector<std::vector<float>>& a,
                           const std::vector<std::vector<float>>& b) {
  double diff = 0, scale = 0;
  EXPECT_EQ(a.size(), b.size());
  for (size_t s = 0; s < std::min(a.size(), b.size()); ++s) {
    EXPECT_EQ(a[s].size(), b[s].size());
    for (size_t i = 0; i < std::min(a[s].size(), b[s].size()); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(a[s][i] - b[s][i])));
      scale = std::max(scale, static_cast<double>(std::fabs(a[s][i])));
    }
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace kvshard
