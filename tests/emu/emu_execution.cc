// The CPU emulator's execution model: a launch runs its blocks one after another (in reverse
// order, so a kernel that assumes block 0 runs first is caught), and a block's threads as
// cooperative fibers on the calling thread. A thread runs until it reaches a barrier
// (__syncthreads, a warp shuffle, __syncwarp), exits or traps; the barrier releases when every
// thread of its scope that has not exited has arrived. A round in which no thread moves is a
// deadlock (a divergent barrier) and fails the launch instead of hanging.
//
// Threads are Boost.Context fibers (a context switch is a few instructions, no system call),
// each on a stack of its own from a per-thread pool with a guard page below it.
#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/fiber.hpp>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "tests/emu/emu_device.h"
#include "tests/emu/emu_state.h"

namespace kvshard::emu {
namespace detail {

thread_local const uint3* tls_thread_idx = nullptr;
thread_local const uint3* tls_block_idx = nullptr;
thread_local const dim3* tls_block_dim = nullptr;
thread_local const dim3* tls_grid_dim = nullptr;

}  // namespace detail
namespace {

enum class State { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

// One thread's stack: mmap'd with a guard page below it, so an overflow faults at once.
class Stack {
 public:
  explicit Stack(size_t bytes) : bytes_(bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    mapping_ =
        mmap(nullptr, bytes_ + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapping_ == MAP_FAILED) {
      std::perror("kvshard cuda emulator: mmap of a thread stack");
      std::abort();
    }
    mprotect(mapping_, page, PROT_NONE);
    base_ = static_cast<char*>(mapping_) + page;
    mapped_ = bytes_ + page;
  }
  ~Stack() { munmap(mapping_, mapped_); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* base() const { return base_; }
  size_t bytes() const { return bytes_; }

 private:
  void* mapping_ = nullptr;
  char* base_ = nullptr;
  size_t bytes_ = 0, mapped_ = 0;
};

// Hands a fiber its pre-made stack (Boost.Context's StackAllocator concept).
class PoolStack {
 public:
  explicit PoolStack(Stack* stack) : stack_(stack) {}
  boost::context::stack_context allocate() {
    boost::context::stack_context sc;
    sc.size = stack_->bytes();
    sc.sp = stack_->base() + stack_->bytes();  // stacks grow down
    return sc;
  }
  void deallocate(boost::context::stack_context&) {}  // the pool keeps it

 private:
  Stack* stack_;
};

struct Fiber {
  boost::context::fiber self;  // the suspended thread (empty once it has finished)
  boost::context::fiber sink;  // inside the thread: the scheduler, to yield to
  uint3 idx;
  int linear = 0, warp = 0, lane = 0;
  State state = State::kRunnable;
  uint64_t wait_generation = 0;
  uint64_t shuffles = 0;  // how many shuffles this thread has made: picks the exchange buffer
};

struct Block {
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  uint3 idx;
  dim3 block_dim, grid_dim;
  int threads = 0, live = 0;
  int block_arrived = 0;
  uint64_t block_generation = 0;
  std::vector<int> warp_live, warp_arrived;
  std::vector<uint64_t> warp_generation;
  std::vector<uint32_t> warp_members;  // lanes present and not exited, per warp
  // Two shuffle slots per thread, used alternately: a lane can be one shuffle ahead of the
  // others (released from a barrier before they have read), never two.
  std::vector<uint64_t> exchange;
  std::vector<unsigned char> dynamic_smem;
  // Static shared memory (KVS_SHARED): every declaration's bytes in one arena, found by site.
  std::vector<unsigned char> static_smem = std::vector<unsigned char>(48 << 10);
  size_t static_smem_used = 0;
  std::vector<std::pair<const void*, size_t>> static_sites;  // site -> offset in the arena
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  uint64_t progress = 0;
  bool failed = false;
  std::string failure;
};

thread_local Block* tls_block = nullptr;
thread_local std::vector<std::unique_ptr<Stack>> tls_stacks;

// KVSHARD_EMU_ORDER=reverse runs each block's threads last to first (and the blocks first to
// last): a kernel whose result depends on the order threads run between two barriers (a race
// on shared or global memory) gives different results in the two orders.
bool ReverseOrder() {
  static const bool reverse = [] {
    const char* order = std::getenv("KVSHARD_EMU_ORDER");
    return order != nullptr && std::string(order) == "reverse";
  }();
  return reverse;
}

size_t StackBytes() {
  static const size_t bytes = [] {
    const char* kib = std::getenv("KVSHARD_EMU_STACK_KIB");
    const long v = kib ? std::atol(kib) : 0;
    return static_cast<size_t>(v > 0 ? v : 256) << 10;
  }();
  return bytes;
}

std::string Coordinates(const Block& b, const Fiber* f) {
  std::string s = std::string("kernel ") + b.kernel + ", block (" + std::to_string(b.idx.x) + "," +
                  std::to_string(b.idx.y) + "," + std::to_string(b.idx.z) + ")";
  if (f) {
    s += ", thread (" + std::to_string(f->idx.x) + "," + std::to_string(f->idx.y) + "," +
         std::to_string(f->idx.z) + ")";
  }
  return s;
}

// Back to the scheduler; returns when the scheduler switches to this thread again.
void Yield(Block&, Fiber& f) { f.sink = std::move(f.sink).resume(); }

// Ends the block: the scheduler never resumes this thread; destroying its fiber unwinds it.
[[noreturn]] void Fail(Block& b, Fiber& f, const std::string& what) {
  b.failed = true;
  b.failure = what + " (" + Coordinates(b, &f) + ")";
  f.sink = std::move(f.sink).resume();
  std::abort();  // not reached: a failed block's threads are only ever unwound
}

void ReleaseIfComplete(Block& b, int warp) {
  if (b.block_arrived > 0 && b.block_arrived == b.live) {
    b.block_arrived = 0;
    ++b.block_generation;
  }
  if (b.warp_arrived[warp] > 0 && b.warp_arrived[warp] == b.warp_live[warp]) {
    b.warp_arrived[warp] = 0;
    ++b.warp_generation[warp];
  }
}

boost::context::fiber ThreadMain(Block& b, Fiber& f, boost::context::fiber&& sink) {
  f.sink = std::move(sink);
  (*b.body)();
  f.state = State::kDone;
  --b.live;
  --b.warp_live[f.warp];
  b.warp_members[f.warp] &= ~(1u << f.lane);
  ++b.progress;
  ReleaseIfComplete(b, f.warp);
  return std::move(f.sink);
}

void WarpBarrier(Block& b, Fiber& f) {
  ++b.progress;
  const int w = f.warp;
  if (++b.warp_arrived[w] == b.warp_live[w]) {
    b.warp_arrived[w] = 0;
    ++b.warp_generation[w];
    return;
  }
  f.state = State::kWarpBarrier;
  f.wait_generation = b.warp_generation[w];
  Yield(b, f);
  f.state = State::kRunnable;
}

bool Released(const Block& b, const Fiber& f) {
  switch (f.state) {
    case State::kRunnable: return true;
    case State::kBlockBarrier: return b.block_generation != f.wait_generation;
    case State::kWarpBarrier: return b.warp_generation[f.warp] != f.wait_generation;
    case State::kDone: return false;
  }
  return false;
}

std::string DeadlockReport(const Block& b) {
  int at_block = 0, at_warp = 0, done = 0;
  for (int i = 0; i < b.threads; ++i) {
    const State s = b.fibers[i].state;
    at_block += s == State::kBlockBarrier;
    at_warp += s == State::kWarpBarrier;
    done += s == State::kDone;
  }
  return "deadlock: " + std::to_string(at_block) + " threads wait at __syncthreads, " +
         std::to_string(at_warp) + " at a warp-level barrier (shuffle or __syncwarp), " +
         std::to_string(done) + " have exited: a barrier in divergent code (" +
         Coordinates(b, nullptr) + ")";
}

bool Schedule(Block& b);

// Runs one block to completion; false (with b.failure) if it trapped or deadlocked.
bool RunBlock(Block& b) {
  const size_t stack_bytes = StackBytes();
  while (tls_stacks.size() < static_cast<size_t>(b.threads)) {
    tls_stacks.push_back(std::make_unique<Stack>(stack_bytes));
  }
  b.live = b.threads;
  b.block_arrived = 0;
  const int warps = (b.threads + 31) / 32;
  b.warp_live.assign(warps, 0);
  b.warp_arrived.assign(warps, 0);
  b.warp_generation.assign(warps, 0);
  b.warp_members.assign(warps, 0);
  b.exchange.assign(2 * static_cast<size_t>(b.threads), 0);
  std::fill(b.dynamic_smem.begin(), b.dynamic_smem.end(), 0xff);
  b.static_smem_used = 0;
  b.static_sites.clear();
  b.fibers.resize(b.threads);
  for (int i = 0; i < b.threads; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = i;
    f.warp = i / 32;
    f.lane = i % 32;
    f.idx = uint3{static_cast<unsigned>(i) % b.block_dim.x,
                  static_cast<unsigned>(i) / b.block_dim.x % b.block_dim.y,
                  static_cast<unsigned>(i) / (b.block_dim.x * b.block_dim.y)};
    f.state = State::kRunnable;
    f.shuffles = 0;
    ++b.warp_live[f.warp];
    b.warp_members[f.warp] |= 1u << f.lane;
    f.self = boost::context::fiber(
        std::allocator_arg, PoolStack(tls_stacks[i].get()),
        [&b, &f](boost::context::fiber&& sink) { return ThreadMain(b, f, std::move(sink)); });
  }
  const bool ok = Schedule(b);
  for (Fiber& f : b.fibers) f.self = boost::context::fiber();  // unwinds a failed block's threads
  return ok;
}

bool Schedule(Block& b) {
  detail::tls_block_idx = &b.idx;
  detail::tls_block_dim = &b.block_dim;
  detail::tls_grid_dim = &b.grid_dim;
  for (;;) {
    bool all_done = true;
    const uint64_t before = b.progress;
    const bool reverse = ReverseOrder();
    for (int n = 0; n < b.threads; ++n) {
      Fiber& f = b.fibers[reverse ? b.threads - 1 - n : n];
      if (f.state == State::kDone) continue;
      all_done = false;
      if (!Released(b, f)) continue;
      b.current = &f;
      detail::tls_thread_idx = &f.idx;
      f.self = std::move(f.self).resume();
      if (b.failed) return false;
    }
    if (all_done) return true;
    if (b.progress == before) {
      b.failure = DeadlockReport(b);
      return false;
    }
  }
}

}  // namespace

namespace detail {

uint64_t ExchangeXor(unsigned mask, uint64_t bits, int lane_mask, int width) {
  Block& b = *tls_block;
  Fiber& f = *b.current;
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    Fail(b, f, "__shfl_xor_sync with width " + std::to_string(width) + " (a power of two <= 32)");
  }
  if (!(mask >> f.lane & 1u)) Fail(b, f, "__shfl_xor_sync by a lane that is not in its mask");
  const size_t buffer = (f.shuffles++ & 1) * static_cast<size_t>(b.threads);
  // Every lane the mask names must take part: a lane past the block's end, or one that has
  // exited, cannot (undefined behaviour on a GPU). Checked on arrival: after the barrier, the
  // lane that released it may already have run on and exited.
  const uint32_t absent = mask & ~b.warp_members[f.warp];
  if (absent != 0) {
    Fail(b, f,
         "__shfl_xor_sync mask names lane " + std::to_string(__builtin_ctz(absent)) +
             ", which is absent or has exited");
  }
  b.exchange[buffer + f.linear] = bits;
  WarpBarrier(b, f);
  const int warp_base = f.warp * 32;
  const int segment = f.lane & ~(width - 1);
  const int source_lane = segment + ((f.lane - segment) ^ lane_mask);
  uint64_t out = bits;  // a source outside the segment returns the caller's own value
  if (source_lane >= segment && source_lane < segment + width && (mask >> source_lane & 1u)) {
    out = b.exchange[buffer + warp_base + source_lane];
  }
  return out;
}

}  // namespace detail

void SyncThreads() {
  Block& b = *tls_block;
  Fiber& f = *b.current;
  ++b.progress;
  if (++b.block_arrived == b.live) {
    b.block_arrived = 0;
    ++b.block_generation;
    return;
  }
  f.state = State::kBlockBarrier;
  f.wait_generation = b.block_generation;
  Yield(b, f);
  f.state = State::kRunnable;
}

void SyncWarp() {
  Block& b = *tls_block;
  WarpBarrier(b, *b.current);
}

void Trap(const char* file, int line) {
  Block& b = *tls_block;
  Fail(b, *b.current, std::string("__trap() at ") + file + ":" + std::to_string(line));
}

void* DynamicSharedMemory() {
  Block& b = *tls_block;
  return b.dynamic_smem.empty() ? nullptr : b.dynamic_smem.data();
}

void* StaticSharedMemory(const void* site, size_t bytes, size_t align) {
  Block& b = *tls_block;
  for (const auto& [s, offset] : b.static_sites) {
    if (s == site) return b.static_smem.data() + offset;
  }
  const size_t offset = (b.static_smem_used + align - 1) / align * align;
  if (offset + bytes + b.dynamic_smem.size() > b.static_smem.size()) {
    Fail(b, *b.current, "static and dynamic shared memory exceed the 48 KiB of a block");
  }
  std::fill(b.static_smem.begin() + offset, b.static_smem.begin() + offset + bytes, 0xff);
  b.static_smem_used = offset + bytes;
  b.static_sites.emplace_back(site, offset);
  return b.static_smem.data() + offset;
}

namespace {

constexpr size_t kDefaultSharedMemoryLimit = 48 << 10;

cudaError_t RunGrid(const char* name, dim3 grid, dim3 block, size_t smem,
                    const std::function<void()>& body) {
  Block* outer = tls_block;
  if (outer != nullptr) {
    return SetError(cudaErrorNotSupported,
                    std::string("kernel ") + name + " launched from device code", true);
  }
  Block b;
  b.kernel = name;
  b.body = &body;
  b.block_dim = block;
  b.grid_dim = grid;
  b.threads = static_cast<int>(block.x * block.y * block.z);
  b.dynamic_smem.resize(smem);
  tls_block = &b;
  bool ok = true;
  // Blocks in reverse order (forward with KVSHARD_EMU_ORDER=reverse): nothing may depend on the
  // order in which blocks run.
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  for (uint64_t n = 0; ok && n < blocks; ++n) {
    const uint64_t i = ReverseOrder() ? n : blocks - 1 - n;
    b.idx = uint3{static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                  static_cast<unsigned>(i / (static_cast<uint64_t>(grid.x) * grid.y))};
    ok = RunBlock(b);
  }
  tls_block = nullptr;
  detail::tls_thread_idx = nullptr;
  detail::tls_block_idx = nullptr;
  if (!ok) return SetError(cudaErrorLaunchFailure, b.failure, /*sticky=*/true);
  return cudaSuccess;
}

}  // namespace

void LaunchKernel(const char* name, dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                  std::function<void()> body) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    SetError(cudaErrorInvalidConfiguration,
             std::string("kernel ") + name + ": grid (" + std::to_string(grid.x) + "," +
                 std::to_string(grid.y) + "," + std::to_string(grid.z) + "), block (" +
                 std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                 std::to_string(block.z) + ")");
    return;
  }
  if (dynamic_smem > kDefaultSharedMemoryLimit) {
    SetError(cudaErrorInvalidValue, std::string("kernel ") + name + ": " +
                                        std::to_string(dynamic_smem) +
                                        " bytes of dynamic shared memory, over the 48 KiB "
                                        "a launch gets without cudaFuncSetAttribute");
    return;
  }
  Enqueue(stream, [name, grid, block, dynamic_smem, body = std::move(body)]() {
    return RunGrid(name, grid, block, dynamic_smem, body);
  });
}

}  // namespace kvshard::emu
