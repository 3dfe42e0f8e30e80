#!/usr/bin/env bash
# tsan_clean.sh SUPPRESSIONS COMMAND...: runs COMMAND with ThreadSanitizer reports going to a
# fresh directory (processes started under it, MPI ranks too, inherit TSAN_OPTIONS), prints every
# report, and fails if there is one, even when COMMAND itself passed.
set -uo pipefail
supp=$1
shift
dir=$(mktemp -d /tmp/kvshard-tsan.XXXXXX)
trap 'rm -rf "$dir"' EXIT
export TSAN_OPTIONS="log_path=$dir/report suppressions=$supp second_deadlock_stack=1 history_size=4"
# TSan needs the address space layout it was built for; without ASLR it always has it.
run=("$@")
if setarch "$(uname -m)" -R true 2>/dev/null; then run=(setarch "$(uname -m)" -R "$@"); fi
"${run[@]}"
rc=$?
reports=$(grep -l "ThreadSanitizer" "$dir"/report* 2>/dev/null)
if [ -n "$reports" ]; then
  cat $reports
  echo "tsan_clean: ThreadSanitizer reported $(grep -c '^WARNING: ThreadSanitizer' $reports | \
    awk -F: '{s += $NF} END {print s}') problem(s)"
  exit 1
fi
echo "tsan_clean: no ThreadSanitizer report (test exit code $rc)"
exit $rc
