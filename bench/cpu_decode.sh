#!/usr/bin/env bash
# The CPU engine's benchmarks (issue: CPU engine). Builds nothing: run scripts/build.sh first.
# Writes random-weight models under $WORK (default /tmp/kvshard-bench) and prints one JSON line
# per measurement, each with the memory-read ceiling measured in the same run.
#
#   1. decode at TP=1 on a ~300 MB model: bandwidth_fraction against mem_read_gbs
#   2. the same model at TP=2 (2 ranks x 1 thread) and TP=1 with 1 thread, for the TP comparison
#   3. KV-cache speedup over full recompute at contexts 128, 512, 1024, 2048 (4-layer model)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/kvshard-bench}
BIN=build/kvshard
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe --mca mpi_yield_when_idle 1 --bind-to none"
mkdir -p "$WORK"

big=$WORK/llama-300m
[ -f "$big/config.json" ] || $BIN make-model --out "$big" --layers 4 --dim 1024 --heads 16 \
  --kv-heads 4 --ffn 4096 --vocab 8192 --max-seq-len 4096 2>/dev/null
small=$WORK/llama-60m
[ -f "$small/config.json" ] || $BIN make-model --out "$small" --layers 4 --dim 512 --heads 8 \
  --kv-heads 2 --ffn 1408 --vocab 4096 --max-seq-len 4096 2>/dev/null

echo "# decode, TP=1, 2 threads"
$BIN bench --model "$big" --context 512 --gen 64 --json 2>/dev/null
echo "# decode, TP=1, 1 thread"
$BIN bench --model "$big" --context 512 --gen 64 --json --threads 1 2>/dev/null
echo "# decode, TP=2, 1 thread per rank"
$MPIRUN -np 2 $BIN bench --model "$big" --context 512 --gen 64 --json --threads 1 2>/dev/null
for ctx in 128 512 1024 2048; do
  echo "# KV cache vs recompute, context $ctx"
  $BIN bench --model "$small" --context $ctx --gen 16 --json --compare-no-cache \
    --no-cache-steps 2 2>/dev/null
done
