// The Thrift service on rank 0: one handler per connection (so a request can be tied to the
// connection that submitted it, and cancelled when that connection goes away), all of them
// talking to the one ServingEngine.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "Kvshard.h"
#include "coordinator/chat_template.h"
#include "coordinator/serving_engine.h"
#include "coordinator/tokenizer.h"

namespace kvshard {

// What status() reports about the ranks; fixed at start-up.
struct RankInfo {
  int rank = 0;
  std::string host;
  std::string device = "cpu";
  int64_t kv_bytes = 0;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t head_group = 0;
  int32_t seq_shard = 0;
  int64_t weight_bytes = 0;
};

struct ClusterInfo {
  std::string model;
  std::string layout;
  int32_t block_size = 16;
  int32_t max_context = 0;
  int32_t head_groups = 1, seq_shards = 1;
  std::vector<RankInfo> ranks;
  std::optional<ChatTemplate> chat;  // the model's chat template, or --chat-template's
  int64_t default_kv_budget = 0;     // serve --kv-budget: for requests that name none
};

// The request a GenerateRequest describes: the prompt tokenised (BOS prepended to text), or the
// messages rendered with `chat` and tokenised (its end-of-turn ids added to the stop ids), every
// field checked. InvalidArgument "FIELD: why" for a bad one (messages without a chat template
// among them).
// default_kv_budget: the kv_budget of a request that names none (serve --kv-budget).
StatusOr<RequestSpec> ToRequestSpec(const rpc::GenerateRequest& request, const Tokenizer& tokenizer,
                                    const ChatTemplate* chat, int64_t default_kv_budget = 0);

// A Status as the declared Thrift exception (code, message, field, limit).
rpc::KvshardError ToRpcError(const Status& status, int64_t kv_capacity_tokens);

class HandlerFactory : public rpc::KvshardIfFactory {
 public:
  HandlerFactory(ServingEngine* engine, const Tokenizer* tokenizer, ClusterInfo info)
      : engine_(engine), tokenizer_(tokenizer), info_(std::move(info)) {}
  rpc::KvshardIf* getHandler(const apache::thrift::TConnectionInfo& connection) override;
  // The connection closed: its unfinished requests are cancelled.
  void releaseHandler(rpc::KvshardIf* handler) override;

 private:
  ServingEngine* engine_;
  const Tokenizer* tokenizer_;
  ClusterInfo info_;
};

}  // namespace kvshard
