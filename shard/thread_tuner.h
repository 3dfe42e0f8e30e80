// The CPU backend's OpenMP team size, chosen by measurement while decoding.
//
// A decode step runs a few hundred short parallel regions, each ending in a barrier. On idle
// cores that costs microseconds; beside another CPU-bound process (a compiler on the same two
// cores) a barrier may wait for whichever team thread the kernel descheduled, and a step then
// takes a hundred times longer. Fewer threads then beat more: one thread has no barrier to wait
// at. Which count is fastest depends on the model, the machine and the load at the moment, so the
// tuner measures it. It keeps, per team size, a smoothed time per step (an exponential average
// over windows of decode steps of one size, so a rare very slow step, the cost beside a busy
// process, weighs in for a while), times windows at its current count, and now and then times a
// probe at a neighbouring count (half or double), moving to whichever estimate is lower.
//
// A window much slower than the current count's estimate (load arrived) triggers a probe at once.
// A failed probe doubles the wait before the next (up to kMaxProbeGap windows, and longer when the
// probe was costly, so that failed probes cost at most kProbeBudget of the time), and a probe
// already slower than a whole probe at the current count stops at once. Nothing allocates.
#pragma once

#include <array>
#include <cstdint>

namespace kvshard {

class ThreadTuner {
 public:
  static constexpr int kWindow = 8;              // decode steps per window at the current count
  static constexpr int kProbeSteps = 32;         // decode steps of a probe
  static constexpr double kClearlySlower = 1.3;  // a probe this much slower stops after two steps
  static constexpr double kRise = 0.5;           // weight of a slower window in a count's estimate
  static constexpr double kFall = 0.2;           // and of a faster one
  static constexpr double kBetter = 0.92;        // move when the other estimate is this much lower
  static constexpr double kLoadArrived = 1.8;    // a window this much over the estimate: probe now
  static constexpr int kMaxProbeGap = 128;       // windows between probes, doubling up to this
  static constexpr double kProbeBudget = 0.01;   // of the decode time failed probes may cost
  static constexpr int kMaxProbeWait = 1 << 16;  // windows between probes, whatever their cost

  // Team sizes 1..max_threads; starts at max_threads (what the runtime set).
  explicit ThreadTuner(int max_threads);

  // The team size the next step should run with.
  int threads() const { return threads_; }

  // One decode step of `tokens` tokens took `seconds`. Returns true when threads() changed.
  bool Record(int64_t tokens, double seconds);

 private:
  void EndWindow(double mean, int steps, double sum);
  void Update(int threads, double mean);
  int Neighbour() const;

  static constexpr int kMaxTracked = 1024;
  int max_threads_;
  int threads_;  // the count the next step runs with
  int current_;  // the count being exploited (threads_ differs while probing)
  bool probing_ = false;
  int64_t tokens_ = -1;  // step size of the window being measured
  int steps_ = 0;
  double sum_ = 0;
  int windows_to_probe_ = 4;  // windows at the current count before the next probe
  int probe_gap_ = 1;
  bool probe_down_ = true;                     // which neighbour to probe next
  std::array<double, kMaxTracked + 1> est_{};  // seconds per step per team size (0: unmeasured)
};

}  // namespace kvshard
