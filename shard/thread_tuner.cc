#include "shard/thread_tuner.h"

#include <algorithm>
#include <cmath>

namespace kvshard {

ThreadTuner::ThreadTuner(int max_threads)
    : max_threads_(std::clamp(max_threads, 1, kMaxTracked)),
      threads_(max_threads_),
      current_(max_threads_) {}

int ThreadTuner::Neighbour() const {
  const int down = std::max(1, current_ / 2), up = std::min(max_threads_, current_ * 2);
  if (down == current_) return up;
  if (up == current_) return down;
  return probe_down_ ? down : up;
}

void ThreadTuner::Update(int threads, double mean) {
  double& e = est_[threads];
  // Quick to rise, slow to fall: a count that just showed very slow steps stays suspect for a
  // while, since beside a busy process they come back at random.
  const double w = mean > e ? kRise : kFall;
  e = e == 0 ? mean : w * mean + (1 - w) * e;
}

bool ThreadTuner::Record(int64_t tokens, double seconds) {
  if (max_threads_ == 1) return false;
  if (tokens != tokens_) {  // another step size: its times are not comparable; start again
    tokens_ = tokens;
    steps_ = 0;
    sum_ = 0;
  }
  sum_ += seconds;
  ++steps_;
  const int window = probing_ ? kProbeSteps : kWindow;
  // A probe already slower than a whole probe's worth at the current count has lost: stop paying
  // for it (beside a busy process one step at the wrong count can cost a hundred good ones).
  // So has one whose first steps are clearly slower than staying (on idle cores, half the team
  // is about twice as slow: two steps tell).
  const double stay = est_[current_];
  const bool lost =
      probing_ && stay > 0 &&
      (sum_ > kProbeSteps * stay || (steps_ >= 2 && sum_ > steps_ * stay * kClearlySlower));
  if (steps_ < window && !lost) return false;
  const int before = threads_;
  EndWindow(sum_ / steps_, steps_, sum_);
  steps_ = 0;
  sum_ = 0;
  return threads_ != before;
}

void ThreadTuner::EndWindow(double mean, int steps, double sum) {
  if (probing_) {
    probing_ = false;
    const double stay = est_[current_];
    Update(threads_, mean);
    if (est_[threads_] < kBetter * stay) {  // the probe's count is faster: move there
      current_ = threads_;
      probe_gap_ = 1;
      windows_to_probe_ = probe_gap_;
      return;
    }
    threads_ = current_;
    if (mean < kBetter * stay) {
      // Faster this time, but its estimate still remembers slow steps: look again soon.
      probe_gap_ = 1;
      windows_to_probe_ = 1;
      return;
    }
    // Back; probe less often while nothing changes, and let failed probes cost at most
    // kProbeBudget of the time: a probe that lost L seconds waits for windows worth L / budget.
    probe_gap_ = std::min(kMaxProbeGap, probe_gap_ * 2);
    probe_down_ = !probe_down_;
    const double lost_seconds = sum - steps * stay;
    const double per_window = kProbeBudget * kWindow * stay;
    const double by_cost = per_window > 0 ? std::ceil(lost_seconds / per_window) : 0;
    windows_to_probe_ = static_cast<int>(
        std::clamp<double>(by_cost, probe_gap_, static_cast<double>(kMaxProbeWait)));
    return;
  }
  const double before = est_[current_];
  Update(current_, mean);
  if (before > 0 && mean > kLoadArrived * before) {
    probe_gap_ = 1;  // the steps got much slower at the same count: try the other counts now
    windows_to_probe_ = 0;
  } else {
    --windows_to_probe_;
  }
  if (windows_to_probe_ > 0) return;
  const int n = Neighbour();
  if (n == current_) {
    windows_to_probe_ = probe_gap_;
    return;
  }
  threads_ = n;
  probing_ = true;
}

}  // namespace kvshard
