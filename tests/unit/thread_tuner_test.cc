// The decode team-size tuner against a simulated machine: step times per team size, idle and
// beside a busy process (where more threads are a hundred times slower), switching mid-run.
#include "shard/thread_tuner.h"

#include <gtest/gtest.h>

#include <functional>

namespace kvshard {
namespace {

// Runs `steps` decode steps of one token; `time(threads)` gives each step's seconds. Returns the
// total seconds and leaves the tuner where it ended.
double Decode(ThreadTuner* t, int steps, const std::function<double(int)>& time) {
  double total = 0;
  for (int i = 0; i < steps; ++i) {
    const double s = time(t->threads());
    total += s;
    t->Record(1, s);
  }
  return total;
}

// Two cores: idle, two threads take 1 ms and one 2 ms; beside a busy process, two threads take
// 100 ms (every barrier waits for a descheduled thread) and one 3 ms.
double Idle(int threads) { return threads == 2 ? 1e-3 : 2e-3; }
double Busy(int threads) { return threads == 2 ? 100e-3 : 3e-3; }

TEST(ThreadTuner, StaysOnAllThreadsWhenTheyAreFastest) {
  ThreadTuner t(2);
  const double total = Decode(&t, 4000, Idle);
  EXPECT_EQ(t.threads(), 2);
  // The probes at one thread cost little: within 5% of always running two.
  EXPECT_LT(total, 1.05 * 4000 * 1e-3);
}

TEST(ThreadTuner, DropsToOneThreadWhenABusyProcessArrivesAndComesBack) {
  ThreadTuner t(2);
  Decode(&t, 1000, Idle);
  ASSERT_EQ(t.threads(), 2);
  const double busy = Decode(&t, 4000, Busy);
  EXPECT_EQ(t.threads(), 1);
  // Within 3x of the idle 1 ms per token, probes of two threads included (the 3 ms steps alone
  // are 3x; the probes and the reaction must add little).
  EXPECT_LT(busy / 4000, 3.4e-3);
  // The busy process leaves: two threads are found again within some thousands of steps (the
  // last failed probe, a hundred times slower, set a long wait: probes cost at most 1%).
  Decode(&t, 8000, Idle);
  EXPECT_EQ(t.threads(), 2);
}

TEST(ThreadTuner, PrefersFewerThreadsForATinyModel) {
  // Threads only add barrier cost: one thread is faster even on idle cores.
  ThreadTuner t(4);
  Decode(&t, 2000, [](int threads) { return 1e-4 * (1 + 0.3 * (threads - 1)); });
  EXPECT_EQ(t.threads(), 1);
}

TEST(ThreadTuner, StepSizeChangesRestartTheWindow) {
  ThreadTuner t(2);
  // Alternating step sizes never fill a window: nothing is decided on mixed steps.
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(t.Record(1 + i % 2, i % 2 ? 1.0 : 1e-3));
  EXPECT_EQ(t.threads(), 2);
}

TEST(ThreadTuner, OneThreadIsLeftAlone) {
  ThreadTuner t(1);
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(t.Record(1, 1e-3));
  EXPECT_EQ(t.threads(), 1);
}

}  // namespace
}  // namespace kvshard
