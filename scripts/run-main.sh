#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install dependencies, build, and generate a story
# from the bundled stories260K model on 2 tensor-parallel ranks under mpirun.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
bash scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 2 --oversubscribe --mca mpi_yield_when_idle 1 \
  build/kvshard generate --model models/stories260K \
  --prompt "Once upon a time" --max-tokens 60 --temperature 0
