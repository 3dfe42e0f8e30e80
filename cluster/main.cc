// kvshard: tensor-parallel LLM inference with a sharded KV cache. Logs go to stderr; under
// mpirun only rank 0 writes to stdout.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include "cluster/commands.h"

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("kvshard"));
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  if (const char* level = std::getenv("KVSHARD_LOG")) {
    spdlog::set_level(spdlog::level::from_str(level));
  }
  CLI::App app{"kvshard: tensor-parallel LLM inference with a sharded KV cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", KVSHARD_VERSION);
  int exit_code = 0;
  kvshard::RegisterGenerate(app, &exit_code);
  kvshard::RegisterBench(app, &exit_code);
  kvshard::RegisterMakeModel(app, &exit_code);
  kvshard::RegisterConvertLlama2c(app, &exit_code);
  kvshard::RegisterServe(app, &exit_code);
  kvshard::RegisterClient(app, &exit_code);
  kvshard::RegisterTokenize(app, &exit_code);
  kvshard::RegisterPerplexity(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
