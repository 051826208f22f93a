#!/usr/bin/env bash
# Proves that the CRIU on PATH carries the page-server fixes of
# patches/criu-page-server-uncork.patch (docs/page-server-stall.md) and
# patches/criu-xfer-pipe-size.patch (docs/page-server-pipe.md):
# dumps a 16 MiB workload with `criu dump --page-server` into a real
# `criu page-server` on loopback, several times, and fails unless CRIU's
# own frozen time (stats-dump) stays far below the 200 ms that Linux holds
# a corked TCP frame. An unpatched CRIU 4.2.1 keeps the tasks frozen
# >= 200 ms on every run (it waits for the page server's answer to a close
# request that is still sitting in its corked socket); a patched one ~20 ms.
# And the page server must receive the pages through a 1 MiB pipe (its
# debug log names the size; an unpatched one keeps 64 KiB), wherever
# /proc/sys/fs/pipe-max-size allows 1 MiB.
#
# This is a behaviour check, not a benchmark: the limit sits between the
# two modes with a wide margin on both sides (see the doc for the numbers).
#
# Environment: CRIU (the binary, default `criu` on PATH), CHECK_PS_RUNS
# (default 3; the median is judged), CHECK_PS_LIMIT_MS (default 150),
# CHECK_PS_MIB (default 16). Needs root and target/debug/criu-rs-workload
# (`cargo build -p criu-testkit --bins`). Cleans up by pid.
set -euo pipefail
cd "$(dirname "$0")/.."

CRIU=${CRIU:-criu}
RUNS=${CHECK_PS_RUNS:-3}
LIMIT_MS=${CHECK_PS_LIMIT_MS:-150}
MIB=${CHECK_PS_MIB:-16}
WORKLOAD=target/debug/criu-rs-workload

die() { printf 'check-page-server: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (CRIU needs it)"
command -v "$CRIU" >/dev/null || die "no CRIU binary '$CRIU'; run scripts/setup.sh"
[ -x "$WORKLOAD" ] || die "$WORKLOAD is missing; build it: cargo build -p criu-testkit --bins"

work=$(mktemp -d /tmp/criu-rs-pscheck-XXXXXX)
workload_pid=""
server_pidfile=""
cleanup() {
  [ -n "$workload_pid" ] && kill -9 "$workload_pid" 2>/dev/null
  if [ -n "$server_pidfile" ] && [ -s "$server_pidfile" ]; then
    kill -9 "$(cat "$server_pidfile")" 2>/dev/null
  fi
  rm -rf "$work"
}
trap 'cleanup || true' EXIT

# Polls COMMAND every 10 ms until it succeeds; fails after SECONDS.
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.01
  done
}

# frozen_time (microseconds) from a stats-dump image: two magics, a u32
# size, then a protobuf stats_entry whose field 1 (dump_stats_entry)
# holds frozen_time as field 2 (images/stats.proto).
frozen_us() {
  python3 - "$1" <<'EOF'
import struct, sys

def varint(b, i):
    v = s = 0
    while True:
        c = b[i]; i += 1
        v |= (c & 0x7F) << s; s += 7
        if c < 0x80:
            return v, i

def fields(b):
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        if key & 7 == 0:
            v, i = varint(b, i)
        elif key & 7 == 2:
            n, i = varint(b, i); v = b[i:i + n]; i += n
        else:
            sys.exit("stats-dump: unexpected wire type %d" % (key & 7))
        yield key >> 3, v

data = open(sys.argv[1], "rb").read()
m1, m2, size = struct.unpack_from("<III", data)
if (m1, m2) != (0x55105940, 0x57093306):
    sys.exit("%s is not a stats image" % sys.argv[1])
dump = dict(fields(data[12:12 + size])).get(1)
if dump is None:
    sys.exit("stats-dump holds no dump statistics")
print(dict(fields(dump))[2])
EOF
}

# Starts a workload as its own session leader with no descriptor of ours
# beyond 0-2 (CRIU cannot dump, say, a pipe whose other end it lacks).
start_workload() {
  local out=$1
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec setsid "$WORKLOAD" "$out" --memory-mib "$MIB" </dev/null >/dev/null 2>&1
  ) &
  workload_pid=$!
  # Bash still reaps it (it reaps every child), but does not announce
  # "Killed" when the dump ends it.
  disown "$workload_pid"
}

# Starts `criu page-server` in the background on a free loopback port
# (tries a few, as other checks may run in parallel); prints the port.
start_page_server() {
  local dir=$1 port try
  for try in $(seq 1 20); do
    port=$((20000 + (RANDOM * 32768 + RANDOM + $$) % 40000))
    if "$CRIU" page-server -d --pidfile "$dir/server.pid" --address 127.0.0.1 --port "$port" \
      -D "$dir" -o server.log -v4 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# True once PID has exited (gone, or a zombie waiting for PID 1 to reap it:
# the daemonized page server is nobody's child).
finished() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
  [ -z "$state" ] || [ "$state" = Z ]
}

# The page server's receiving pipe, from its log, must be 1 MiB where the
# system allows it (decided once, before the runs).
PIPE_WANT=$((1 << 20))
PIPE_MAX=$(cat /proc/sys/fs/pipe-max-size)
pipe_bytes=unchecked
check_pipe_size() {
  local log=$1 got
  [ "$PIPE_MAX" -ge "$PIPE_WANT" ] || return 0
  got=$(sed -n 's/.*Created xfer pipe size \([0-9]*\).*/\1/p' "$log" | head -n1)
  [ -n "$got" ] || die "the page server's log ($log) does not name its pipe size"
  [ "$got" -eq "$PIPE_WANT" ] \
    || die "the page server received pages through a $got-byte pipe, not $PIPE_WANT: is patches/criu-xfer-pipe-size.patch applied? Re-run scripts/setup.sh; see docs/page-server-pipe.md"
  pipe_bytes=$got
}

# One dump through the page server; sets run_ms to CRIU's frozen time.
one_run() {
  local n=$1 src="$work/src-$1" dst="$work/dst-$1" port server_pid
  mkdir -p "$src" "$dst"
  start_workload "$work/out-$n.log"
  wait_for 20 grep -qs '^memory ' "$work/out-$n.log" \
    || die "the workload did not fill its $MIB MiB within 20 s"
  server_pidfile="$dst/server.pid"
  port=$(start_page_server "$dst") || die "could not start '$CRIU page-server' on loopback (see $dst/server.log)"
  server_pid=$(cat "$server_pidfile")
  "$CRIU" dump -t "$workload_pid" -D "$src" -o dump.log -v4 \
    --page-server --address 127.0.0.1 --port "$port" \
    || die "criu dump --page-server failed: $(grep -m3 'Error' "$src/dump.log" || true)"
  wait_for 10 finished "$workload_pid" || die "the dumped workload (pid $workload_pid) is still running"
  workload_pid=""
  wait_for 10 finished "$server_pid" \
    || die "the page server (pid $server_pid) did not finish its session"
  server_pidfile=""
  # The pages must have gone to the page server, not to the local images.
  local got want=$((MIB * 1024 * 1024))
  got=$(cat "$dst"/pages-*.img 2>/dev/null | wc -c)
  [ "$got" -ge "$want" ] || die "the page server received $got bytes of pages, expected >= $want"
  ! compgen -G "$src/pages-*.img" >/dev/null || die "pages were written locally, not sent to the page server"
  check_pipe_size "$dst/server.log"
  local us
  us=$(frozen_us "$src/stats-dump") || die "cannot read frozen_time from $src/stats-dump"
  run_ms=$((us / 1000))
}

if [ "$PIPE_MAX" -lt "$PIPE_WANT" ]; then
  echo "check-page-server: NOT CHECKED: the page server's pipe size (pipe-max-size is $PIPE_MAX, under $PIPE_WANT)"
fi
frozen=()
for n in $(seq 1 "$RUNS"); do
  one_run "$n"
  frozen+=("$run_ms")
done
median=$(printf '%s\n' "${frozen[@]}" | sort -n | sed -n "$(((RUNS + 1) / 2))p")
echo "check-page-server: $("$CRIU" --version | awk '/^Version:/ {print $2}'), ${MIB} MiB through a page server on loopback: frozen ${frozen[*]} ms (median $median, limit $LIMIT_MS), receiving pipe $pipe_bytes bytes"
if [ "$median" -ge "$LIMIT_MS" ]; then
  die "CRIU kept the tasks frozen ${median} ms (median): its page-server close request waits in a corked socket (~200 ms). Is patches/criu-page-server-uncork.patch applied? Re-run scripts/setup.sh; see docs/page-server-stall.md"
fi
echo "check-page-server: ok"
