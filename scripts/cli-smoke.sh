#!/usr/bin/env bash
# The checkpoint CLI end to end: check, dump a live workload (--json),
# restore it (--json), read its statistics. Cleans up by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/examples/checkpoint
work=$(mktemp -d /tmp/criu-rs-cli-XXXXXX)
restored=""
cleanup() {
  [ -n "$restored" ] && kill -9 "$restored" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# Polls until the workload's output has more than $1 lines (10 s at most).
wait_for_lines() {
  local want=$1 i
  for i in $(seq 1000); do
    [ -f "$work/out.log" ] && [ "$(wc -l < "$work/out.log")" -gt "$want" ] && return 0
    sleep 0.01
  done
  echo "FAIL: the workload's output stayed at $want lines or fewer"; return 1
}
cargo build -q -p criu-rs-examples --example checkpoint
"$bin" check | grep -q '"ok":true'
# The workload gets no descriptor of ours beyond 0-2 (a harness may leave
# some open, and CRIU cannot dump, say, a pipe whose other end it lacks).
(
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
  done
  exec setsid target/debug/criu-rs-workload "$work/out.log" </dev/null >/dev/null 2>&1
) &
pid=$!
wait_for_lines 2   # it runs and ticks before it is dumped
"$bin" dump --pid "$pid" --images-dir "$work/img" --json > "$work/dump.json"
{ wait "$pid"; } 2>/dev/null || true   # the dump killed it; reap it so its pid is free
grep -q "\"pid\":$pid" "$work/dump.json"
grep -q '"frozen_time"' "$work/dump.json"
if "$bin" dump --pid "$pid" --images-dir "$work/img" 2> "$work/err"; then
  echo "FAIL: a second dump into a used directory succeeded"; exit 1
fi
grep -q "already holds a checkpoint" "$work/err"
"$bin" restore --images-dir "$work/img" --json > "$work/restore.json"
restored=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$work/restore.json")
[ "$restored" = "$pid" ]
wait_for_lines "$(wc -l < "$work/out.log")"   # the restored process counts on
"$bin" stats --images-dir "$work/img" | grep -q '"restore_time"'
echo "cli smoke: ok (dumped and restored pid $pid)"
