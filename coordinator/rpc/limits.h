// Bounds on what one Thrift message may carry. They admit a 1M-token document (as text, about
// 4-6 MB, or as ids, 4 MB) with room to spare, and nothing unbounded: a frame or a declared
// string/list beyond them is refused before anything is allocated for it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvshard::rpc_limits {

constexpr int32_t kMaxFrameBytes = 64 << 20;     // one framed message
constexpr int32_t kMaxMessageBytes = 64 << 20;   // bytes read for one message
constexpr int32_t kMaxStringBytes = 32 << 20;    // one string or binary field
constexpr int32_t kMaxContainerItems = 4 << 20;  // one list (1M-token prompt_ids: 1<<20)
constexpr int32_t kMaxRecursionDepth = 16;       // nested structs (ours nest 3 deep)
constexpr int32_t kMaxPollWaitMs = 30000;
constexpr size_t kMaxChatMessages = 4096;  // turns of one conversation

}  // namespace kvshard::rpc_limits
