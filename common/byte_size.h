// Memory sizes as users write them on the command line: "2GiB", "512MiB", "1.5GB", "4096".
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace kvshard {

// Bytes in `text`: a non-negative number with an optional unit, binary (KiB, MiB, GiB, TiB, and
// K, M, G, T as llama.cpp and vLLM users write them) or decimal (kB, KB, MB, GB, TB); B or no
// unit means bytes. Case-insensitive. An error naming the text for anything else.
StatusOr<int64_t> ParseByteSize(const std::string& text);

// "1.50 GiB" style, for logs and messages.
std::string FormatBytes(int64_t bytes);

}  // namespace kvshard
