#!/usr/bin/env bash
# sanitize.sh TOOL TEST_BINARY [GTEST_FILTER]: runs the GPU kernel tests under compute-sanitizer
# (memcheck, racecheck, initcheck, synccheck); any report fails the test. Skips (77) without a
# GPU or without compute-sanitizer.
set -u
tool=$1 bin=$2 filter=${3:-Cuda*}
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: skipped"
  exit 77
fi
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ ! -x "$sanitizer" ]; then
  echo "no compute-sanitizer: skipped"
  exit 77
fi
exec "$sanitizer" --tool "$tool" --error-exitcode 1 --print-limit 20 \
  "$bin" --gtest_filter="$filter" --gtest_brief=1
