#include "coordinator/rpc/metrics_http.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

namespace kvshard {

std::string RenderMetrics(const EngineSnapshot& s, const ClusterInfo& info) {
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  metric("kvshard_up", "gauge", "1 while serving, 0 when shutting down or failed");
  out += fmt::format("kvshard_up {}\n", s.serving ? 1 : 0);
  metric("kvshard_queue_depth", "gauge", "Requests accepted and waiting to run");
  out += fmt::format("kvshard_queue_depth {}\n", s.queue_depth);
  metric("kvshard_running_requests", "gauge", "Requests in the running batch");
  out += fmt::format("kvshard_running_requests {}\n", s.running);
  metric("kvshard_kv_blocks_used", "gauge", "KV blocks held by requests, per rank");
  for (const RankInfo& r : info.ranks) {
    out += fmt::format("kvshard_kv_blocks_used{{rank=\"{}\",host=\"{}\"}} {}\n", r.rank, r.host,
                       s.kv_blocks_total - s.kv_blocks_free);
  }
  metric("kvshard_kv_blocks_free", "gauge", "KV blocks free (cached prefixes included), per rank");
  for (const RankInfo& r : info.ranks) {
    out += fmt::format("kvshard_kv_blocks_free{{rank=\"{}\",host=\"{}\"}} {}\n", r.rank, r.host,
                       s.kv_blocks_free);
  }
  metric("kvshard_kv_blocks_cached", "gauge", "Free KV blocks that still hold a reusable prefix");
  out += fmt::format("kvshard_kv_blocks_cached {}\n", s.kv_blocks_cached);
  metric("kvshard_tokens_per_second", "gauge", "Generated tokens per second, last 5 s");
  out += fmt::format("kvshard_tokens_per_second {:.3f}\n", s.tokens_per_second);
  metric("kvshard_generated_tokens_total", "counter", "Tokens generated");
  out += fmt::format("kvshard_generated_tokens_total {}\n", s.generated_tokens);
  metric("kvshard_time_to_first_token_seconds", "summary", "Accepted to first token");
  out += fmt::format("kvshard_time_to_first_token_seconds_sum {:.6f}\n", s.ttft_seconds_sum);
  out += fmt::format("kvshard_time_to_first_token_seconds_count {}\n", s.ttft_count);
  metric("kvshard_prefix_cache_hits_total", "counter", "Prompt blocks served from the cache");
  out += fmt::format("kvshard_prefix_cache_hits_total {}\n", s.prefix_cache_hits);
  metric("kvshard_prefix_cache_queries_total", "counter", "Full prompt blocks looked up");
  out += fmt::format("kvshard_prefix_cache_queries_total {}\n", s.prefix_cache_queries);
  metric("kvshard_prefix_cache_hit_rate", "gauge", "hits / queries since start");
  out += fmt::format("kvshard_prefix_cache_hit_rate {:.4f}\n",
                     s.prefix_cache_queries ? static_cast<double>(s.prefix_cache_hits) /
                                                  static_cast<double>(s.prefix_cache_queries)
                                            : 0.0);
  metric("kvshard_requests_finished_total", "counter", "Requests that ended, any status");
  out += fmt::format("kvshard_requests_finished_total {}\n", s.requests_finished);
  metric("kvshard_preemptions_total", "counter", "Sequences preempted for KV blocks");
  out += fmt::format("kvshard_preemptions_total {}\n", s.preemptions);
  return out;
}

StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const ServingEngine* engine,
                                                              ClusterInfo info,
                                                              const std::string& host, int port) {
  std::unique_ptr<MetricsServer> m(new MetricsServer());
  m->info_ = std::move(info);
  m->server_ = std::make_unique<httplib::Server>();
  const ClusterInfo* info_ptr = &m->info_;
  m->server_->Get("/metrics", [engine, info_ptr](const httplib::Request&, httplib::Response& res) {
    res.set_content(RenderMetrics(engine->Snapshot(), *info_ptr), "text/plain; version=0.0.4");
  });
  if (!m->server_->bind_to_port(host.c_str(), port)) {
    return Unavailable("--metrics-port: cannot listen on {}:{}", host, port);
  }
  httplib::Server* server = m->server_.get();
  m->thread_ = std::thread([server] { server->listen_after_bind(); });
  spdlog::info("metrics on http://{}:{}/metrics", host, port);
  return m;
}

void MetricsServer::Stop() {
  if (!server_) return;
  server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

MetricsServer::~MetricsServer() { Stop(); }

}  // namespace kvshard
