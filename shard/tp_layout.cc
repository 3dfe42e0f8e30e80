#include "shard/tp_layout.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <tuple>

namespace kvshard {
namespace {

// Why the grid `groups` x `shards` cannot split this model, or "" if it can.
std::string WhyNot(const ModelConfig& c, int groups, int shards) {
  if (groups < 1 || shards < 1) {
    return fmt::format("the grid {}x{} needs at least one head group and one seq shard", groups,
                       shards);
  }
  const int world = groups * shards;
  if (c.n_heads % groups != 0) {
    return fmt::format("{} attention heads do not split evenly over {} head groups", c.n_heads,
                       groups);
  }
  if (c.n_kv_heads % groups != 0 && groups % c.n_kv_heads != 0) {
    return fmt::format(
        "{} KV heads over {} head groups: the groups must divide the KV heads, or be a multiple "
        "of them (each KV head then replicated on groups/kv_heads groups)",
        c.n_kv_heads, groups);
  }
  if (c.n_heads / groups * c.head_dim < shards) {
    return fmt::format("a head group's {} attention columns are fewer than its {} seq shards",
                       c.n_heads / groups * c.head_dim, shards);
  }
  if (c.hidden_dim < world) {
    return fmt::format("MLP width {} is smaller than {} ranks", c.hidden_dim, world);
  }
  if (c.vocab_size < world) {
    return fmt::format("vocabulary {} is smaller than {} ranks", c.vocab_size, world);
  }
  return "";
}

// Part `i` of `n` near-equal parts of `total` (the first total % n parts one larger): its start
// and size.
std::pair<int64_t, int64_t> Part(int64_t total, int64_t n, int64_t i) {
  const int64_t base = total / n, extra = total % n;
  return {i * base + std::min(i, extra), base + (i < extra ? 1 : 0)};
}

}  // namespace

std::vector<int> ValidTpSizes(const ModelConfig& config, int max_tp) {
  std::vector<int> out;
  for (int tp = 1; tp <= max_tp; ++tp) {
    if (WhyNot(config, tp, 1).empty()) out.push_back(tp);
  }
  return out;
}

std::vector<std::pair<int, int>> ValidGrids(const ModelConfig& config, int world) {
  std::vector<std::pair<int, int>> out;
  for (int groups = 1; groups <= world; ++groups) {
    if (world % groups == 0 && WhyNot(config, groups, world / groups).empty()) {
      out.emplace_back(groups, world / groups);
    }
  }
  return out;
}

std::string DescribeGrids(const ModelConfig& config, int world) {
  std::vector<std::string> grids;
  for (const auto& [g, s] : ValidGrids(config, world)) grids.push_back(fmt::format("{}x{}", g, s));
  return grids.empty() ? "none" : fmt::format("{}", fmt::join(grids, ", "));
}

StatusOr<TpLayout> MakeTpLayout(const ModelConfig& c, int world, int rank, int seq_shards) {
  if (c.head_dim > kMaxHeadDim) {
    return InvalidArgument("head_dim {} exceeds this build's limit of {}", c.head_dim, kMaxHeadDim);
  }
  if (c.n_heads / c.n_kv_heads > kMaxQueryGroup) {
    return InvalidArgument("{} query heads per KV head exceeds this build's limit of {}",
                           c.n_heads / c.n_kv_heads, kMaxQueryGroup);
  }
  if (seq_shards < 1 || world < 1 || world % seq_shards != 0) {
    return InvalidArgument(
        "cannot split {} ranks into seq shards of {}: the ranks must be a multiple of the seq "
        "shards; grids (head groups x seq shards) that work for {} ranks: {}",
        world, seq_shards, world, DescribeGrids(c, world));
  }
  const int groups = world / seq_shards;
  const std::string why = WhyNot(c, groups, seq_shards);
  if (!why.empty()) {
    if (seq_shards == 1) {
      return InvalidArgument(
          "cannot run this model with tensor parallelism {}: {}; sizes that work: {}; grids "
          "(head groups x seq shards) that work for {} ranks: {}",
          world, why, fmt::join(ValidTpSizes(c), ", "), world, DescribeGrids(c, world));
    }
    return InvalidArgument(
        "cannot run this model as {} head groups x {} seq shards: {}; grids (head groups x seq "
        "shards) that work for {} ranks: {}",
        groups, seq_shards, why, world, DescribeGrids(c, world));
  }
  if (rank < 0 || rank >= world) return InvalidArgument("rank {} outside [0, {})", rank, world);
  TpLayout l;
  l.tp = world;
  l.rank = rank;
  l.head_groups = groups;
  l.seq_shards = seq_shards;
  l.group = rank / seq_shards;
  l.shard = rank % seq_shards;
  l.q_heads = c.n_heads / groups;
  l.q_head0 = l.group * l.q_heads;
  if (c.n_kv_heads >= groups) {
    l.kv_heads = c.n_kv_heads / groups;
    l.kv_head0 = l.group * l.kv_heads;
    l.kv_replicas = 1;
  } else {
    // Fewer KV heads than groups: this group's query heads all belong to one KV head, which is
    // held by groups / n_kv_heads groups.
    l.kv_heads = 1;
    l.kv_head0 = l.q_head0 / (c.n_heads / c.n_kv_heads);
    l.kv_replicas = groups / c.n_kv_heads;
  }
  std::tie(l.o_col0, l.o_cols) = Part(l.q_heads * c.head_dim, seq_shards, l.shard);
  // Neither need the MLP width nor the vocabulary divide: the first (n % world) ranks take one
  // column or row more.
  std::tie(l.ffn0, l.ffn) = Part(c.hidden_dim, world, rank);
  for (int r = 0; r < world; ++r) {
    const auto [start, n] = Part(c.vocab_size, world, r);
    l.vocab_counts.push_back(static_cast<int>(n));
    if (r == rank) {
      l.vocab0 = start;
      l.vocab = n;
    }
  }
  return l;
}

}  // namespace kvshard
