// kvshard's client API: framed transport, binary protocol (strict). One service on rank 0.
//
// Streaming: Thrift has no server push, so a client streams by submit() and then poll() in a
// loop; each poll long-waits up to wait_ms for tokens past its cursor. generate() is the
// blocking form of the same thing.

namespace cpp kvshard.rpc
namespace py kvshard_rpc

enum ErrorCode {
  INVALID_REQUEST = 1,  // a field is wrong; `field` names it
  OVERLOADED = 2,       // the queue is full; retry later
  TOO_LONG = 3,         // can never fit the cluster's KV capacity; `limit` is the most tokens
  NOT_SERVING = 4,      // shutting down, or a rank failed; `message` says which and why
  NOT_FOUND = 5,        // unknown request id
  INTERNAL = 6,
}

exception KvshardError {
  1: ErrorCode code,
  2: string message,
  3: optional string field,  // INVALID_REQUEST: the offending field
  4: optional i64 limit,     // TOO_LONG: tokens that fit; INVALID_REQUEST: the bound broken
}

struct SamplingParams {
  1: double temperature = 0.0,  // 0 = greedy
  2: i32 top_k = 0,             // 0 = no limit
  3: double top_p = 1.0,        // nucleus mass in (0, 1]
  4: i64 seed = 0,
}

struct ChatMessage {
  1: string role,                      // "system" (first only), "user" or "assistant"
  2: string content,                   // UTF-8
}

struct GenerateRequest {
  1: optional string prompt,           // text (UTF-8); BOS is prepended
  2: optional list<i32> prompt_ids,    // or token ids, used as given
  3: i32 max_tokens = 16,
  4: SamplingParams sampling,
  5: list<string> stop = [],           // generation ends before any of these strings
  6: list<i32> stop_ids = [],          // or any of these ids (EOS always stops)
  7: optional string cache_salt,       // prefix-cache isolation: equal salts may share blocks
  8: optional list<ChatMessage> messages,  // or a conversation, rendered with the model's chat
                                       // template (status().chat_template); the reply stops at
                                       // the template's end-of-turn tokens
  9: optional i32 kv_budget,           // KV eviction (SnapKV): keep this many prompt positions
                                       // per KV head and layer once the prompt is computed;
                                       // 0: keep all; absent: the server's --kv-budget
}

struct Timings {
  1: double queue_ms,      // accepted -> first scheduled
  2: double ttft_ms,       // accepted -> first token
  3: double per_token_ms,  // mean time per generated token after the first
  4: double total_ms,      // accepted -> finished
}

struct GenerateResponse {
  1: i64 request_id,
  2: string prompt_text,        // the prompt as the tokenizer reads it back
  3: string text,               // completion only
  4: list<i32> token_ids,       // completion ids
  5: string finish_reason,      // "stop", "length", "cancelled" or "error"
  6: i32 prompt_tokens,
  7: i32 cached_tokens,         // prompt tokens served from the prefix cache
  8: i32 generated_tokens,
  9: Timings timings,
  10: string error,             // finish_reason "error": why
  11: i32 preemptions,          // times this request was preempted and recomputed
  12: optional i32 kv_positions_kept,  // with a kv_budget: prompt positions each KV head kept
}

struct PollResponse {
  1: i64 request_id,
  2: list<i32> token_ids,     // tokens [cursor, next_cursor)
  3: string text,             // their text (UTF-8 kept whole: bytes of a partial char wait)
  4: i64 next_cursor,
  5: bool finished,
  6: string state,            // "queued", "prefill", "decode", "finished"
  7: i32 prompt_tokens,
  8: i32 prefilled_tokens,    // prompt tokens whose KV is computed (progress of a long prefill)
  9: optional GenerateResponse result,  // set once finished
  10: string prompt_text,
}

struct Health {
  1: bool serving,
  2: string reason,  // why not, when not serving
}

struct RankStatus {
  1: i32 rank,
  2: string host,
  3: string device,
  4: i64 kv_blocks_total,
  5: i64 kv_blocks_used,
  6: i64 kv_blocks_free,
  7: i64 kv_bytes,
  8: i32 q_heads,
  9: i32 kv_heads,
  10: i32 head_group,             // where the rank sits in the grid (head groups x seq shards)
  11: i32 seq_shard,
  12: i64 weight_bytes,
}

struct ClusterStatus {
  1: i32 world_size,
  2: string layout,               // e.g. "tp=2" or "2x4 (head groups x seq shards)"
  3: list<RankStatus> ranks,
  4: i32 queue_depth,
  5: i32 running,
  6: double tokens_per_second,    // generated tokens/s over the last few seconds
  7: i64 prefix_cache_hits,       // blocks served from the prefix cache
  8: i64 prefix_cache_queries,    // full prompt blocks looked up
  9: i64 kv_blocks_cached,        // free blocks still holding reusable prefixes
  10: i32 block_size,
  11: i64 requests_finished,
  12: i64 preemptions,
  13: string model,
  14: i32 max_context,            // the most prompt + max_tokens one request may reach: the
                                  // model's context (16x it with attention sinks)
  15: i64 kv_capacity_tokens,     // the most tokens one request may hold
  16: i32 head_groups,            // the grid: world_size = head_groups x seq_shards
  17: i32 seq_shards,
  18: string chat_template,       // "llama3", "chatml", "llama2", "mistral", or "" (none: messages
                                  // are refused)
}

service Kvshard {
  GenerateResponse generate(1: GenerateRequest request) throws (1: KvshardError error),
  i64 submit(1: GenerateRequest request) throws (1: KvshardError error),
  PollResponse poll(1: i64 request_id, 2: i64 cursor, 3: i32 wait_ms)
      throws (1: KvshardError error),
  // true when this call cancelled it; false when it had already ended.
  bool cancel(1: i64 request_id) throws (1: KvshardError error),
  Health health(),
  ClusterStatus status(),
}
