#!/usr/bin/env bash
# The README's two commands for two machines, end to end: certificates made
# with the README's openssl recipe, `criu-rs receive` on host b and
# `criu-rs send` on host a (two network namespaces joined by veth), for
# every strategy, over mutual TLS. Each run checks that the counter the
# moved shell writes goes on by one on b, that a's copy is gone, and (from
# a tcpdump capture on b) that every connection began with a TLS handshake.
# Everything it creates (namespaces, processes, files) is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CRIU_RS_BIN:-target/debug/criu-rs}
[ -x "$bin" ] || cargo build -q -p criu-cli
bin=$(realpath "$bin")

tag="smoke$$"
a="criu-rs-$tag-a" b="criu-rs-$tag-b"
work=$(mktemp -d /tmp/criu-rs-two-hosts.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "two-hosts-smoke: FAIL: $*" >&2; exit 1; }

# Polls COMMAND until it succeeds, for at most SECONDS.
until_true() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.05
  done
}

ip netns add "$a"
ip netns add "$b"
ip -n "$a" link add eth0 type veth peer name eth0 netns "$b"
ip -n "$a" addr add 10.233.0.1/24 dev eth0
ip -n "$b" addr add 10.233.0.2/24 dev eth0
for h in "$a" "$b"; do
  ip -n "$h" link set eth0 up
  ip -n "$h" link set lo up
done

# The README's certificate recipe, as written there.
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=migration CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
  printf '%s\n' 'basicConstraints = CA:FALSE' 'keyUsage = digitalSignature' \
      'extendedKeyUsage = serverAuth, clientAuth' > host.ext
  for h in a b; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=host-$h" -keyout $h-key.pem -out $h.csr 2>/dev/null
    openssl x509 -req -in $h.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days 365 -extfile host.ext -out $h.pem 2>/dev/null
  done
)

# The counter gets no descriptor of ours beyond 0-2: a harness may leave
# some open (CI's did: a /dev/null of another mount, which CRIU cannot dump).
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
  done
}

last_number() { tail -n 1 "$1" 2>/dev/null | tr -dc 0-9; }
grows_past() { local n; n=$(last_number "$1"); [ -n "$n" ] && [ "$n" -gt "$2" ]; }

# Whether every TCP connection in the capture FILE starts with a TLS
# ClientHello: the first payload of each connection's opening side (the
# side that sent the SYN) is a handshake record (0x16 0x03) of type 1.
# Migrating in clear (TLS flags ignored, say) fails this; the JSON's
# "transport" field only repeats what was asked. Says why in $work/why.
every_connection_starts_with_a_tls_client_hello() {
  local file=$1 payload='((tcp[12] & 0xf0) >> 2)'
  tcpdump -r "$file" -nn 'tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn' 2>/dev/null \
    | awk '{ print $3 }' | sort -u > "$work/openers"
  tcpdump -r "$file" -nn "tcp[$payload] = 0x16 and tcp[$payload + 1] = 0x03 and tcp[$payload + 5] = 0x01" \
    2>/dev/null | awk '{ print $3 }' | sort -u > "$work/hellos"
  if [ ! -s "$work/openers" ]; then
    echo "no TCP connection was captured" > "$work/why"; return 1
  fi
  local clear
  clear=$(comm -23 "$work/openers" "$work/hellos" | tr '\n' ' ')
  if [ -n "$clear" ]; then
    echo "connections opened from $clear did not start with a TLS ClientHello" > "$work/why"; return 1
  fi
}

# One migration with STRATEGY; prints nothing on success.
migrate() {
  local strategy=$1 out="$work/$1.out" log="$work/$1.receive.log" port=$((7700 + RANDOM % 200))
  # The counter: the init of its own PID namespace (both "hosts" share pid
  # numbers on one machine) and a session leader inside it.
  (
    close_inherited_fds
    exec nsenter --net="/run/netns/$a" unshare --pid --fork setsid sh -c \
      'i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done' > "$out" 2>/dev/null < /dev/null
  ) &
  local unshare_pid=$!
  pids+=("$unshare_pid")
  until_true 5 grows_past "$out" 3 || fail "$strategy: the counter did not start"
  local src
  src=$(pgrep -P "$unshare_pid" | head -n 1)
  [ -n "$src" ] || fail "$strategy: no counter under unshare $unshare_pid"

  # Every TCP connection between the hosts is captured on b's side.
  local cap="$work/$strategy.pcap"
  nsenter --net="/run/netns/$b" tcpdump -i eth0 -nn -U --immediate-mode -w "$cap" tcp > "$work/$strategy.tcpdump.log" 2>&1 &
  local dump_pid=$!
  pids+=("$dump_pid")
  until_true 10 grep -qs "listening on" "$work/$strategy.tcpdump.log" \
    || fail "$strategy: tcpdump did not start: $(cat "$work/$strategy.tcpdump.log")"

  nsenter --net="/run/netns/$b" "$bin" receive --listen "10.233.0.2:$port" --detach --once \
    --tls-ca "$work/ca.pem" --tls-cert "$work/b.pem" --tls-key "$work/b-key.pem" > "$log" 2>&1 &
  local recv=$!
  pids+=("$recv")
  until_true 10 grep -qs "waiting for a source" "$log" || fail "$strategy: receive did not start: $(cat "$log")"

  nsenter --net="/run/netns/$a" "$bin" send --pid "$src" --to "10.233.0.2:$port" \
    --strategy "$strategy" --json "$work/$strategy.json" \
    --tls-ca "$work/ca.pem" --tls-cert "$work/a.pem" --tls-key "$work/a-key.pem" \
    > "$work/$strategy.send.log" 2>&1 || fail "$strategy: send failed: $(cat "$work/$strategy.send.log")"
  wait "$recv" || fail "$strategy: receive failed: $(cat "$log")"
  local moved
  moved=$(sed -n 's/^restored pid \([0-9]*\).*/\1/p' "$log")
  [ -n "$moved" ] || fail "$strategy: receive named no restored pid: $(cat "$log")"
  pids+=("$moved")

  # a's copy is gone (killed after b answered), b's counts on by one.
  until_true 5 bash -c "! kill -0 $src 2>/dev/null" || fail "$strategy: the source $src still runs"
  local before
  before=$(last_number "$out")
  until_true 5 grows_past "$out" "$((before + 3))" || fail "$strategy: the restored counter does not count"
  awk 'NR > 1 && $1 != prev + 1 { bad = 1 } { prev = $1 } END { exit bad }' "$out" \
    || fail "$strategy: the count has a gap or a repeat: $(tr '\n' ' ' < "$out")"
  kill -INT "$dump_pid"; wait "$dump_pid" 2>/dev/null || true
  every_connection_starts_with_a_tls_client_hello "$cap" || fail "$strategy: $(cat "$work/why")"
  kill -KILL "$moved"
  echo "ok: $strategy over mutual TLS ($(wc -l < "$work/openers") connections, each opened with a TLS ClientHello), count $before -> $(last_number "$out") on host b"
}

for s in stop-and-copy page-server lazy; do
  migrate "$s"
done
