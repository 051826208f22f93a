#!/usr/bin/env bash
# The checkpoint CLI end to end: check, dump a live workload (--json),
# restore it (--json), read its statistics; then a process with an
# established TCP connection, restorable only with the flags it was dumped
# with, and inspect/decode of its images. Cleans up by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/examples/checkpoint
work=$(mktemp -d /tmp/criu-rs-cli-XXXXXX)
restored=""
tcp_restored=""
cleanup() {
  [ -n "$restored" ] && kill -9 "$restored" 2>/dev/null || true
  [ -n "$tcp_restored" ] && kill -9 "$tcp_restored" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${CLI_SMOKE_KEEP:-}" ] && trap - EXIT
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

# poll CMD...: retries for up to 10 s (no fixed sleeps).
poll() { for _ in $(seq 200); do "$@" && return 0; sleep 0.05; done; return 1; }
lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
grown() { [ "$(lines "$1")" -gt "$2" ]; }
# A process with an established TCP connection: its checkpoint restores
# only with the flags it was dumped with (restore shares dump's options).
tcp=$work/tcp
mkdir -p "$tcp"
cat > "$tcp/tcp.py" <<'PY'
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname())
peer, _ = srv.accept()
open(sys.argv[1], "w").write("ready\n")
n = 0
while True:
    cli.sendall(b"x"); peer.recv(1); n += 1
    with open(sys.argv[2], "a") as f: f.write("%d\n" % n)
    time.sleep(0.02)
PY
(
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
  done
  exec setsid /usr/bin/python3 "$tcp/tcp.py" "$tcp/ready" "$tcp/out" </dev/null >/dev/null 2>&1
) &
tpid=$!
poll test -s "$tcp/ready" || { echo "FAIL: the TCP process did not start"; exit 1; }
"$bin" dump --pid "$tpid" --images-dir "$tcp/img" --tcp-established --file-locks > /dev/null
{ wait "$tpid"; } 2>/dev/null || true
if "$bin" restore --images-dir "$tcp/img" 2> "$work/err"; then
  echo "FAIL: a checkpoint with an established connection restored without --tcp-established"; exit 1
fi
if grep -q "File exists" "$work/err"; then echo "FAIL: the pid was still taken"; cat "$work/err"; exit 1; fi
# The half-restored task is nobody's child now: wait until PID 1 reaps it.
poll test ! -e "/proc/$tpid" || { echo "FAIL: pid $tpid still taken"; exit 1; }
"$bin" restore --images-dir "$tcp/img" --tcp-established --file-locks --deadline-secs 30 --json > "$work/tcp-restore.json"
tcp_restored=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$work/tcp-restore.json")
[ "$tcp_restored" = "$tpid" ]
at=$(lines "$tcp/out")
poll grown "$tcp/out" "$at" || { echo "FAIL: the restored connection carries no data"; exit 1; }
"$bin" inspect --images-dir "$tcp/img" --json > "$work/inspect.json"
grep -q '"state":"ESTABLISHED"' "$work/inspect.json"
"$bin" inspect --images-dir "$tcp/img" > "$work/inspect.txt"
grep -q "argv: .*tcp.py" "$work/inspect.txt"
"$bin" decode --images-dir "$tcp/img" --image pstree.img > "$work/pstree.json"
grep -q "\"pid\":$tpid" "$work/pstree.json"
"$bin" decode --images-dir "$tcp/img" --image files.img --pretty > "$work/files.json"
grep -q '"state": "ESTABLISHED"' "$work/files.json"
echo "cli smoke: ok (dumped and restored pid $pid; TCP pid $tpid restored with its flags; inspect and decode)"
