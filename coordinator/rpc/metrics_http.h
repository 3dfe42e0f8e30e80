// Prometheus text endpoint (GET /metrics) on rank 0, off unless a port is given.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "common/status.h"
#include "coordinator/rpc/service.h"
#include "coordinator/serving_engine.h"

namespace httplib {
class Server;
}

namespace kvshard {

// The exposition text for one snapshot (format 0.0.4).
std::string RenderMetrics(const EngineSnapshot& snapshot, const ClusterInfo& info);

class MetricsServer {
 public:
  static StatusOr<std::unique_ptr<MetricsServer>> Start(const ServingEngine* engine,
                                                        ClusterInfo info, const std::string& host,
                                                        int port);
  ~MetricsServer();
  void Stop();

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  ClusterInfo info_;
};

}  // namespace kvshard
