#!/usr/bin/env bash
# expect_error.sh REGEX CMD...: passes when CMD exits non-zero *without* a crash (no signal, no
# sanitizer report) and its stderr matches the extended regular expression REGEX.
set -u
regex=$1
shift
err=$(mktemp)
trap 'rm -f "$err"' EXIT
"$@" >/dev/null 2>"$err"
rc=$?
cat "$err" >&2
if [ $rc -eq 0 ]; then
  echo "FAIL: expected an error, but the command succeeded" >&2
  exit 1
fi
if [ $rc -ge 128 ]; then
  echo "FAIL: the command crashed (exit $rc)" >&2
  exit 1
fi
if ! grep -Eq -- "$regex" "$err"; then
  echo "FAIL: stderr does not match /$regex/" >&2
  exit 1
fi
echo "ok: exit $rc with the expected message"
