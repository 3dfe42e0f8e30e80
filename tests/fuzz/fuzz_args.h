// The command line and time budget every fuzzer here shares:
//   NAME [seconds = 10] [seed = time] [max_iterations = default]
// The banner names the seed, so a failing run can be repeated exactly.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace kvshard {

struct FuzzArgs {
  double seconds = 10;
  uint64_t seed = 0;
  uint64_t max_iterations = 0;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();

  FuzzArgs(int argc, char** argv, const char* name, uint64_t default_max_iterations)
      : seconds(argc > 1 ? std::atof(argv[1]) : 10.0),
        seed(argc > 2 ? std::strtoull(argv[2], nullptr, 10)
                      : static_cast<uint64_t>(
                            std::chrono::steady_clock::now().time_since_epoch().count())),
        max_iterations(argc > 3 ? std::strtoull(argv[3], nullptr, 10) : default_max_iterations) {
    std::printf("%s: seed %llu, %.1f s, at most %llu iterations\n", name,
                static_cast<unsigned long long>(seed), seconds,
                static_cast<unsigned long long>(max_iterations));
    std::fflush(stdout);
  }

  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  // Whether to stop before iteration `i` (the clock is read every 64 iterations).
  bool Done(uint64_t i) const {
    return i >= max_iterations || (i % 64 == 0 && elapsed() >= seconds);
  }
};

}  // namespace kvshard
