// The Thrift server thread on rank 0: framed transport, strict binary protocol, the message
// limits of limits.h, one thread per connection up to a connection limit, and a receive timeout
// so a client that stalls mid-frame (or idles) is dropped rather than held forever.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "common/status.h"
#include "coordinator/rpc/service.h"

namespace apache::thrift::server {
class TThreadedServer;
}

namespace kvshard {

struct RpcServerOptions {
  std::string host = "127.0.0.1";
  int port = 9090;
  int max_connections = 256;
  int idle_timeout_ms = 60000;  // a connection silent this long mid-request or between requests
};

class RpcServer {
 public:
  // Binds and starts serving; returns once the socket listens (or why it could not).
  static StatusOr<std::unique_ptr<RpcServer>> Start(std::shared_ptr<HandlerFactory> factory,
                                                    const RpcServerOptions& options);
  ~RpcServer();
  // Stops accepting, closes connections and joins the server thread.
  void Stop();

 private:
  RpcServer() = default;
  std::shared_ptr<apache::thrift::server::TThreadedServer> server_;
  std::thread thread_;
};

}  // namespace kvshard
