#!/usr/bin/env bash
# gpu_golden.sh EXPECTED_FILE CMD...: expect_stdout.sh where a GPU is usable; skips (77) elsewhere.
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: skipped"
  exit 77
fi
exec "$(dirname "$0")/expect_stdout.sh" "$@"
