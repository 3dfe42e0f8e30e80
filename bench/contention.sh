#!/usr/bin/env bash
# Decode beside competing CPU-bound processes (issue: architecture, item 7). Builds nothing: run
# scripts/build.sh first. For each model, times `kvshard bench` decode on idle cores, then beside
# one and two busy-loop processes (a compiler job, `make -j2`, on a two-core machine), and prints
# one JSON line per run with its ratio to the idle run of the same session. The default --threads
# (0) lets the shard tune its team size while decoding; "fixed" runs pin it to every core, as
# before the tuner, for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/kvshard-bench}
BIN=${KVSHARD_BIN:-build/kvshard}
mkdir -p "$WORK"
cores=$(nproc)

stories=$WORK/stories260K
[ -f "$stories/config.json" ] || $BIN convert-llama2c --checkpoint ../shared/models/stories260K/stories260K.bin \
  --tokenizer ../shared/models/stories260K/tok512.bin --out "$stories" >/dev/null 2>&1
small=$WORK/llama-60m
[ -f "$small/config.json" ] || $BIN make-model --out "$small" --layers 4 --dim 512 --heads 8 \
  --kv-heads 2 --ffn 1408 --vocab 4096 --max-seq-len 4096 2>/dev/null

hogs=()
start_hogs() { for ((i = 0; i < $1; i++)); do sh -c 'while :; do :; done' & hogs+=($!); done; sleep 1; }
stop_hogs() { [ ${#hogs[@]} -eq 0 ] || kill "${hogs[@]}" 2>/dev/null; wait "${hogs[@]}" 2>/dev/null || true; hogs=(); }
trap stop_hogs EXIT

ms_per_token() {  # model, tokens, extra bench flags...
  local model=$1 gen=$2
  shift 2
  timeout 600 $BIN bench --model "$model" --context 16 --gen "$gen" --json "$@" 2>/dev/null |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["decode_ms_per_token"])'
}

for run in "$stories 480" "$small 2000"; do
  read -r model gen <<<"$run"
  name=$(basename "$model")
  for mode in tuned fixed; do
    flags=()
    [ "$mode" = fixed ] && flags=(--threads "$cores")
    idle=$(ms_per_token "$model" "$gen" "${flags[@]}")
    for busy in 1 2; do
      start_hogs $busy
      t=$(ms_per_token "$model" "$gen" "${flags[@]}")
      stop_hogs
      python3 -c "import json; print(json.dumps({'bench': 'decode_beside_busy_processes', \
'model': '$name', 'tokens': $gen, 'threads': '$mode', 'cores': $cores, 'busy_processes': $busy, \
'idle_ms_per_token': round($idle, 4), 'busy_ms_per_token': round($t, 4), \
'slowdown': round($t / $idle, 2)}))"
    done
  done
done
