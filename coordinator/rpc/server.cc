#include "coordinator/rpc/server.h"

#include <spdlog/spdlog.h>
#include <thrift/TConfiguration.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/server/TThreadedServer.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TServerSocket.h>

#include <future>

#include "coordinator/rpc/limits.h"

namespace kvshard {
namespace {

using apache::thrift::TConfiguration;
using apache::thrift::protocol::TBinaryProtocolFactory;
using apache::thrift::server::TServerEventHandler;
using apache::thrift::server::TThreadedServer;
using apache::thrift::transport::TFramedTransport;
using apache::thrift::transport::TServerSocket;
using apache::thrift::transport::TTransport;
using apache::thrift::transport::TTransportFactory;

std::shared_ptr<TConfiguration> Limits() {
  return std::make_shared<TConfiguration>(rpc_limits::kMaxMessageBytes, rpc_limits::kMaxFrameBytes,
                                          rpc_limits::kMaxRecursionDepth);
}

// Thrift's own TFramedTransportFactory takes no configuration, so frames would get the default
// limits; this one applies ours.
class FramedFactory : public TTransportFactory {
 public:
  std::shared_ptr<TTransport> getTransport(std::shared_ptr<TTransport> t) override {
    t->setConfiguration(Limits());
    return std::make_shared<TFramedTransport>(t, Limits());
  }
};

// Tells Start() that the socket listens.
class ReadySignal : public TServerEventHandler {
 public:
  void preServe() override { ready_.set_value(); }
  std::future<void> future() { return ready_.get_future(); }

 private:
  std::promise<void> ready_;
};

}  // namespace

StatusOr<std::unique_ptr<RpcServer>> RpcServer::Start(std::shared_ptr<HandlerFactory> factory,
                                                      const RpcServerOptions& options) {
  // Thrift's diagnostics (a client that vanished, a refused frame) go to the debug log.
  apache::thrift::GlobalOutput.setOutputFunction(
      [](const char* message) { spdlog::debug("thrift: {}", message); });
  if (options.port <= 0 || options.port > 65535) {
    return InvalidArgument("--port: {} is not a TCP port", options.port);
  }
  auto socket = std::make_shared<TServerSocket>(options.host, options.port);
  socket->setRecvTimeout(options.idle_timeout_ms);
  socket->setSendTimeout(options.idle_timeout_ms);
  auto protocol = std::make_shared<TBinaryProtocolFactory>(
      rpc_limits::kMaxStringBytes, rpc_limits::kMaxContainerItems, /*strict_read=*/true,
      /*strict_write=*/true);
  auto processor = std::make_shared<rpc::KvshardProcessorFactory>(factory);
  auto server = std::make_shared<TThreadedServer>(processor, socket,
                                                  std::make_shared<FramedFactory>(), protocol);
  server->setConcurrentClientLimit(options.max_connections);
  auto ready = std::make_shared<ReadySignal>();
  server->setServerEventHandler(ready);
  std::future<void> listening = ready->future();
  auto failure = std::make_shared<std::promise<std::string>>();
  std::future<std::string> failed = failure->get_future();

  std::unique_ptr<RpcServer> out(new RpcServer());
  out->server_ = server;
  out->thread_ = std::thread([server, failure] {
    try {
      server->serve();
      failure->set_value("");
    } catch (const std::exception& e) {
      failure->set_value(e.what());
    }
  });
  // Whichever comes first: listening, or serve() giving up (port taken, bad address).
  for (;;) {
    if (listening.wait_for(std::chrono::milliseconds(10)) == std::future_status::ready) break;
    if (failed.wait_for(std::chrono::milliseconds(0)) == std::future_status::ready) {
      out->thread_.join();
      out->server_.reset();
      return Unavailable("cannot serve on {}:{}: {}", options.host, options.port, failed.get());
    }
  }
  spdlog::info("serving Thrift (framed, binary) on {}:{}", options.host, options.port);
  return out;
}

void RpcServer::Stop() {
  if (!server_) return;
  server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

RpcServer::~RpcServer() { Stop(); }

}  // namespace kvshard
