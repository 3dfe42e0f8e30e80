#!/usr/bin/env bash
# `kvshard bench --device cuda --json` reports the device-copy ceiling and the decode's fraction
# of it. Skips (77) where no GPU is usable.
set -euo pipefail
BIN=$1 MODEL=$2
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: skipped"
  exit 77
fi
out=$("$BIN" bench --model "$MODEL" --device cuda --context 64 --gen 8 --json)
echo "$out"
for key in device_copy_gbs bandwidth_fraction decode_ms_per_token; do
  grep -q "\"$key\"" <<<"$out" || { echo "missing $key"; exit 1; }
done
grep -q '"device":"cuda"' <<<"$out"
