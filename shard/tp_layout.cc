#include "shard/tp_layout.h"

#include <fmt/ranges.h>

namespace kvshard {
namespace {

// Why `tp` cannot split this model, or "" if it can.
std::string WhyNot(const ModelConfig& c, int tp) {
  if (tp < 1) return fmt::format("tensor-parallel size {} must be at least 1", tp);
  if (c.n_heads % tp != 0) {
    return fmt::format("{} attention heads do not split evenly over {} ranks", c.n_heads, tp);
  }
  if (c.n_kv_heads % tp != 0 && tp % c.n_kv_heads != 0) {
    return fmt::format(
        "{} KV heads over {} ranks: tp must divide the KV heads, or be a multiple of them "
        "(each KV head then replicated on tp/kv_heads ranks)",
        c.n_kv_heads, tp);
  }
  if (c.hidden_dim % tp != 0) {
    return fmt::format("MLP width {} does not split evenly over {} ranks", c.hidden_dim, tp);
  }
  if (c.vocab_size < tp)
    return fmt::format("vocabulary {} is smaller than {} ranks", c.vocab_size, tp);
  return "";
}

}  // namespace

std::vector<int> ValidTpSizes(const ModelConfig& config, int max_tp) {
  std::vector<int> out;
  for (int tp = 1; tp <= max_tp; ++tp) {
    if (WhyNot(config, tp).empty()) out.push_back(tp);
  }
  return out;
}

StatusOr<TpLayout> MakeTpLayout(const ModelConfig& c, int tp, int rank) {
  if (c.head_dim > kMaxHeadDim) {
    return InvalidArgument("head_dim {} exceeds this build's limit of {}", c.head_dim, kMaxHeadDim);
  }
  if (c.n_heads / c.n_kv_heads > kMaxQueryGroup) {
    return InvalidArgument("{} query heads per KV head exceeds this build's limit of {}",
                           c.n_heads / c.n_kv_heads, kMaxQueryGroup);
  }
  const std::string why = WhyNot(c, tp);
  if (!why.empty()) {
    return InvalidArgument(
        "cannot run this model with tensor parallelism {}: {}; sizes that work: {}", tp, why,
        fmt::join(ValidTpSizes(c), ", "));
  }
  if (rank < 0 || rank >= tp) return InvalidArgument("rank {} outside [0, {})", rank, tp);
  TpLayout l;
  l.tp = tp;
  l.rank = rank;
  l.q_heads = c.n_heads / tp;
  l.q_head0 = rank * l.q_heads;
  if (c.n_kv_heads >= tp) {
    l.kv_heads = c.n_kv_heads / tp;
    l.kv_head0 = rank * l.kv_heads;
    l.kv_replicas = 1;
  } else {
    // Fewer KV heads than ranks: this rank's query heads all belong to one KV head, which is
    // held by tp / n_kv_heads ranks.
    l.kv_heads = 1;
    l.kv_head0 = l.q_head0 / (c.n_heads / c.n_kv_heads);
    l.kv_replicas = tp / c.n_kv_heads;
  }
  l.ffn = c.hidden_dim / tp;
  l.ffn0 = rank * l.ffn;
  // The vocabulary need not divide: the first (vocab % tp) ranks take one row more.
  int64_t start = 0;
  for (int r = 0; r < tp; ++r) {
    const int64_t n = c.vocab_size / tp + (r < c.vocab_size % tp ? 1 : 0);
    l.vocab_counts.push_back(static_cast<int>(n));
    if (r == rank) {
      l.vocab0 = start;
      l.vocab = n;
    }
    start += n;
  }
  return l;
}

}  // namespace kvshard
