#!/usr/bin/env bash
# Every test on a fresh Debian 12 machine: install dependencies, build once, run ctest
# (labels: unit, mpi, fuzz, serving, tsan, multinode, chaos, ansible, emu; gpu tests skip without a
# device, and the emu tests run the GPU backend on the CPU emulator).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
bash scripts/fetch-assets.sh
bash scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd build
ctest --output-on-failure -j2 --timeout 600
