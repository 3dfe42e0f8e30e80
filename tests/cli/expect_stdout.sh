#!/usr/bin/env bash
# expect_stdout.sh EXPECTED_FILE CMD...: runs CMD; passes when it exits 0 and its stdout equals
# EXPECTED_FILE byte for byte (a diff is printed otherwise).
set -u
expected=$1
shift
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$@" >"$out"
rc=$?
if [ $rc -ne 0 ]; then
  echo "command exited $rc: $*" >&2
  exit 1
fi
if ! diff -u "$expected" "$out"; then
  echo "stdout differs from $expected" >&2
  exit 1
fi
echo "stdout matches $expected"
