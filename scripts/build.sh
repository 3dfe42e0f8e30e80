#!/usr/bin/env bash
# Configures and builds kvshard into build/ (Release, -j2). Run scripts/setup-deps.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j2
