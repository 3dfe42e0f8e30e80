// Per-step cost of the step plan at long context (issue: architecture). For contexts of 1K, 64K
// and 1M tokens and batches of 1 and 16 sequences (block tables synthetic: the block manager
// hands them out, no model runs), it times one decode step's plan handling on both sides: rank
// 0 builds the plan (PlanBuilder) and packs it, a rank unpacks it, checks it and applies it to
// its tables (BlockTables), and works out the tokens' KV slots and the kernels' table rows. It
// prints the bytes broadcast beside what the earlier format (every table, whole, every step)
// would have sent for the same step. One JSON line per point.
#include <chrono>
#include <cstdio>
#include <vector>

#include "coordinator/block_manager.h"
#include "coordinator/plan_builder.h"
#include "plan/step_plan.h"
#include "shard/block_tables.h"

namespace kvshard {
namespace {

constexpr int64_t kBlock = 16;
constexpr PagedKvGeometry kGeometry{kBlock};

int Run() {
  for (const int64_t context : {int64_t{1} << 10, int64_t{1} << 16, int64_t{1} << 20}) {
    for (const int64_t batch : {int64_t{1}, int64_t{16}}) {
      const int64_t steps = 2000;
      const int64_t per_seq = kGeometry.BlocksFor(context + steps + 1);
      BlockManager blocks(per_seq * batch, kBlock);
      PlanBuilder builder(batch);
      auto tables = BlockTables::Create({batch, per_seq, per_seq * batch, kBlock});
      if (!tables.ok()) return 1;
      std::vector<int32_t> tokens(context + steps + 1, 1), payload;
      std::vector<int64_t> slots(batch << 16);  // [T]: a prompt chunk has 64K tokens a sequence
      std::vector<int32_t> rows(batch + 1);
      StepPlan plan, received;
      size_t ints = 0;
      // One step at given lengths: rank 0 builds and packs, the rank unpacks and applies.
      auto step = [&](int64_t begin, int64_t end) -> double {
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t gone : blocks.TakeReleased()) builder.Release(gone);
        builder.Begin(&plan);
        for (int64_t s = 0; s < batch; ++s) {
          if (!blocks.EnsureCapacity(s, end).ok()) std::abort();
          if (!builder
                   .Add(&plan, s, blocks.Table(s), blocks.BlocksFor(end), tokens.data(), begin, end,
                        true)
                   .ok()) {
            std::abort();
          }
        }
        PackStepPlan(plan, &payload);
        if (!ShapeStepPlan(StepPlanHeaderOf(plan), &received, &ints).ok()) std::abort();
        UnpackStepPlan(payload, &received);
        if (!tables->Apply(received, 2, 1 << 20).ok()) std::abort();
        tables->Slots(received, slots.data());
        tables->RowOffsets(received, rows.data());
        return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
            .count();
      };
      // Every sequence's prompt in chunks of 64K positions (the tables fill), then decode.
      for (int64_t b = 0; b < context; b += 1 << 16) step(b, std::min(context, b + (1 << 16)));
      double total_us = 0;
      int64_t bytes = 0;
      for (int64_t i = 0; i < steps; ++i) {
        total_us += step(context + i, context + i + 1);
        bytes = std::max(bytes, StepPlanWireBytes(plan));
      }
      // The earlier format: 6 header ints, tokens, positions, two [S+1] pointers, every table.
      const int64_t whole = 4 * (6 + 2 * batch + 2 * (batch + 1) +
                                 batch * kGeometry.BlocksFor(context + steps) + batch);
      std::printf(
          "{\"bench\":\"plan_per_decode_step\",\"context\":%ld,\"batch\":%ld,"
          "\"plan_bytes_per_decode_step\":%ld,\"whole_table_plan_bytes\":%ld,"
          "\"plan_handling_us_per_step\":%.3f}\n",
          static_cast<long>(context), static_cast<long>(batch), static_cast<long>(bytes),
          static_cast<long>(whole), total_us / steps);
    }
  }
  return 0;
}

}  // namespace
}  // namespace kvshard

int main() { return kvshard::Run(); }
