#include "coordinator/block_manager.h"

#include <algorithm>
#include <cstring>

namespace kvshard {
namespace {

// FNV-1a over bytes; lookups are confirmed by comparing keys, so quality matters only for speed.
uint64_t Fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size)
    : block_size_(block_size), blocks_(num_blocks) {
  free_.reserve(num_blocks);
  // Pop order 0, 1, 2, ...: low block ids first, which keeps small runs easy to read in logs.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

uint64_t BlockManager::KeyHash(int32_t parent, uint64_t parent_generation, const std::string& salt,
                               const int32_t* tokens) const {
  uint64_t h = 14695981039346656037ull;
  h = Fnv1a(h, &parent, sizeof(parent));
  h = Fnv1a(h, &parent_generation, sizeof(parent_generation));
  h = Fnv1a(h, salt.data(), salt.size());
  return Fnv1a(h, tokens, block_size_ * sizeof(int32_t));
}

bool BlockManager::KeyEquals(const Block& b, int32_t parent, uint64_t parent_generation,
                             const std::string& salt, const int32_t* tokens) const {
  return b.registered && b.parent == parent && b.parent_generation == parent_generation &&
         b.salt == salt && std::memcmp(b.tokens.data(), tokens, block_size_ * sizeof(int32_t)) == 0;
}

void BlockManager::Forget(int32_t block) {
  Block& b = blocks_[block];
  if (!b.registered) return;
  auto it = index_.find(b.hash);
  if (it != index_.end() && it->second == block) index_.erase(it);
  b.registered = false;
  ++b.generation;  // blocks keyed to this one as their parent can never match again
  b.tokens.clear();
  b.salt.clear();
}

int32_t BlockManager::TakeBlock() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    b = lru_.front();
    lru_.pop_front();
    Forget(b);
  }
  // A new generation: blocks keyed to this one's previous content can never match through it.
  ++blocks_[b].generation;
  blocks_[b].refcount = 1;
  return b;
}

Status BlockManager::EnsureCapacity(int64_t seq, int64_t tokens) {
  auto found = seqs_.find(seq);
  const int64_t have = found == seqs_.end() ? 0 : static_cast<int64_t>(found->second.table.size());
  const int64_t need = BlocksFor(tokens) - have;
  if (need <= 0) return Status::Ok();
  if (need > free_blocks()) {
    return ResourceExhausted(
        "KV cache full: {} tokens need {} more blocks of {} but only {} of {} are free", tokens,
        need, block_size_, free_blocks(), total_blocks());
  }
  std::vector<int32_t>& table = seqs_[seq].table;
  for (int64_t i = 0; i < need; ++i) table.push_back(TakeBlock());
  return Status::Ok();
}

int64_t BlockManager::ReleaseBefore(int64_t seq, int64_t position, int64_t keep_tokens) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || position <= 0) return 0;
  std::vector<int32_t>& table = it->second.table;
  const int64_t whole = std::min<int64_t>(position / block_size_, table.size());
  int64_t released = 0;
  for (int64_t i = BlocksFor(keep_tokens); i < whole; ++i) {
    const int32_t id = table[i];
    if (id == kReleased) continue;
    table[i] = kReleased;
    ++released;
    Unref(id);
  }
  return released;
}

void BlockManager::Unref(int32_t id) {
  Block& b = blocks_[id];
  if (--b.refcount > 0) return;
  if (b.registered) {
    b.lru_pos = lru_.insert(lru_.end(), id);
  } else {
    free_.push_back(id);
  }
}

int64_t BlockManager::Truncate(int64_t seq, int64_t blocks) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return 0;
  std::vector<int32_t>& table = it->second.table;
  int64_t released = 0;
  while (static_cast<int64_t>(table.size()) > blocks) {
    if (table.back() != kReleased) {
      Unref(table.back());
      ++released;
    }
    table.pop_back();
  }
  it->second.committed = std::min<int64_t>(it->second.committed, table.size());
  return released;
}

int64_t BlockManager::HeldBlocks(int64_t seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return 0;
  int64_t held = 0;
  for (int32_t id : it->second.table) held += id != kReleased;
  return held;
}

void BlockManager::Free(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (int32_t id : it->second.table) {
    if (id != kReleased) Unref(id);  // (a released entry was returned by ReleaseBefore)
  }
  seqs_.erase(it);
  released_.push_back(seq);
}

const std::vector<int32_t>& BlockManager::Table(int64_t seq) const {
  static const std::vector<int32_t> kEmpty;
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? kEmpty : it->second.table;
}

int64_t BlockManager::MatchPrefix(int64_t seq, const int32_t* tokens, int64_t max_tokens,
                                  const std::string& salt) {
  Seq& s = seqs_[seq];
  if (!s.table.empty()) return 0;
  int32_t parent = -1;
  uint64_t parent_generation = 0;
  const int64_t full = max_tokens / block_size_;
  for (int64_t i = 0; i < full; ++i) {
    const int32_t* block_tokens = tokens + i * block_size_;
    ++cache_queries_;
    auto it = index_.find(KeyHash(parent, parent_generation, salt, block_tokens));
    if (it == index_.end() ||
        !KeyEquals(blocks_[it->second], parent, parent_generation, salt, block_tokens)) {
      break;
    }
    const int32_t id = it->second;
    Block& b = blocks_[id];
    if (b.refcount++ == 0) lru_.erase(b.lru_pos);
    s.table.push_back(id);
    ++cache_hits_;
    parent = id;
    parent_generation = b.generation;
  }
  if (s.table.empty()) {
    seqs_.erase(seq);  // `s` is gone with it
    return 0;
  }
  s.committed = static_cast<int64_t>(s.table.size());
  return static_cast<int64_t>(s.table.size()) * block_size_;
}

void BlockManager::CommitFullBlocks(int64_t seq, const int32_t* tokens, int64_t computed,
                                    const std::string& salt) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  Seq& s = it->second;
  const int64_t full = std::min<int64_t>(computed / block_size_, s.table.size());
  for (int64_t i = s.committed; i < full; ++i) {
    const int32_t id = s.table[i];
    // A block released before it was keyed (a window shorter than a block), or one whose parent
    // was: the chain of keys is broken here, and nothing after it can be registered.
    if (id == kReleased || (i > 0 && s.table[i - 1] == kReleased)) break;
    const int32_t parent = i == 0 ? -1 : s.table[i - 1];
    const uint64_t parent_generation = i == 0 ? 0 : blocks_[parent].generation;
    const int32_t* block_tokens = tokens + i * block_size_;
    Block& b = blocks_[id];
    if (b.registered) continue;  // matched from the cache: already keyed
    const uint64_t h = KeyHash(parent, parent_generation, salt, block_tokens);
    if (index_.count(h)) continue;  // an equal (or colliding) block is cached: keep that one
    b.registered = true;
    b.hash = h;
    b.parent = parent;
    b.parent_generation = parent_generation;
    b.salt = salt;
    b.tokens.assign(block_tokens, block_tokens + block_size_);
    index_[h] = id;
  }
  s.committed = std::max(s.committed, full);
}

}  // namespace kvshard
