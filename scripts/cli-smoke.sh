#!/usr/bin/env bash
# The criu-rs command as a user gets it: `cargo install`ed from the
# packaged crate into a temporary root, then check, dump, restore, stats, inspect, crit's
# decode/encode/info/x, export/import and push/pull (OCI layout) on real
# processes, the flags a checkpoint was made with needed again to restore
# it, and the help, man page and completions. First, that the command
# (and the examples) depend on no test kit and no Docker client. Cleans up by pid.
set -euo pipefail
trap '[[ $- == *e* ]] && echo "FAIL: cli-smoke.sh line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

# 1. What the command is built from: what `cargo install` builds (normal
# and build dependencies, default features) has no Docker client and no
# test kit. Its tests are another matter: tests/docker.rs drives two
# Docker hosts through the test kit, a dev-dependency that no user builds.
deps=$(cargo tree -p criu-cli -e normal,build --prefix none)
if grep -Eq '^(bollard|criu-testkit) ' <<< "$deps"; then
  echo "FAIL: criu-cli depends on bollard or criu-testkit:"; grep -E '^(bollard|criu-testkit) ' <<< "$deps" | sort -u; exit 1
fi
deps=$(cargo tree -p criu-cli -e normal,build --features docker --prefix none)
if grep -Eq '^criu-testkit ' <<< "$deps"; then
  echo "FAIL: criu-cli with its docker feature depends on criu-testkit"; exit 1
fi
# The examples teach the published crates alone: no test kit, no Docker
# client, and each short enough to read in a minute.
deps=$(cargo tree -p criu-rs-examples -e normal,build,dev --prefix none)
if grep -Eq '^(bollard|criu-testkit) ' <<< "$deps"; then
  echo "FAIL: criu-rs-examples depends on bollard or criu-testkit:"; grep -E '^(bollard|criu-testkit) ' <<< "$deps" | sort -u; exit 1
fi
for f in examples/*.rs; do
  [ "$(wc -l < "$f")" -le 150 ] || { echo "FAIL: $f has $(wc -l < "$f") lines (an example reads in a minute: ~150 at most)"; exit 1; }
done

work=$(mktemp -d /tmp/criu-rs-cli-XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${CLI_SMOKE_KEEP:-}" ] && trap - EXIT

# 2. Installed as a user installs it: from the packaged crate (what
# crates.io will serve), its dependencies on this workspace's crates
# resolved to their packaged sources too, with the package's own lock file,
# offline (debug, reusing this build's cache; unpacked at a fixed path so
# that a next run reuses what this one built).
crates=(criu-sys criu-image criu-rs criu-oci criu-docker criu-cli)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
pkg=$PWD/target/cli-smoke
pkg_args=(); for c in "${crates[@]}"; do pkg_args+=(-p "$c"); done
CARGO_NET_OFFLINE=true cargo package -q --no-verify --allow-dirty "${pkg_args[@]}" --target-dir "$pkg"
patches=()
for c in "${crates[@]}"; do
  [ "$c" = criu-cli ] || patches+=(--config "patch.crates-io.$c.path=\"$pkg/unpacked/$c-$version\"")
done
# Unpacked afresh only when a package changed (cargo tells a path
# dependency's changes by mtime, and cargo package dates every file 2006:
# the files are touched so that what an older run built is not reused).
sums=$(cd "$pkg/package" && sha256sum "${crates[@]/%/-$version.crate}")
if [ "$sums" != "$(cat "$pkg/unpacked.sha256" 2>/dev/null)" ]; then
  rm -rf "$pkg/unpacked" "$pkg/unpacked.sha256" && mkdir -p "$pkg/unpacked"
  for c in "${crates[@]}"; do tar -xzf "$pkg/package/$c-$version.crate" -C "$pkg/unpacked"; done
  find "$pkg/unpacked" -type f -exec touch {} +
  # Inside this workspace's directory cargo would take it for a stray
  # member: it is a workspace of its own, as it is on a user's disk.
  printf '\n[workspace]\n' >> "$pkg/unpacked/criu-cli-$version/Cargo.toml"
  echo "$sums" > "$pkg/unpacked.sha256"
fi
cargo install -q --path "$pkg/unpacked/criu-cli-$version" --root "$work/root" --debug --locked \
  --offline --target-dir target "${patches[@]}"
bin=$work/root/bin/criu-rs
[ -x "$bin" ] || { echo "FAIL: cargo install left no $bin"; exit 1; }
"$bin" --help | grep "Exit codes" > /dev/null
"$bin" help dump | grep -- "--tcp-established" > /dev/null
"$bin" help send | grep "Exit codes" > /dev/null
"$bin" man | grep '^\.TH' > /dev/null
"$bin" man --out-dir "$work/man"
[ -s "$work/man/criu-rs.1" ] && [ -s "$work/man/criu-rs-send.1" ] || { echo "FAIL: no man pages"; exit 1; }
"$bin" completions bash | grep 'complete' > /dev/null
"$bin" check --json | grep '"ok":true' > /dev/null

# poll CMD...: retries for up to 10 s (no fixed sleeps).
poll() { for _ in $(seq 200); do "$@" && return 0; sleep 0.05; done; return 1; }
lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
grown() { [ "$(lines "$1")" -gt "$2" ]; }
# start_py SCRIPT ARGS...: a session leader with no descriptor of ours
# beyond 0-2 (CRIU cannot dump, say, a pipe whose other end it lacks).
start_py() {
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec setsid /usr/bin/python3 "$@" </dev/null >/dev/null 2>&1
  ) &
  pids+=($!)
}

# 3. A counter: dump (it stops), restore (it counts on), statistics.
cat > "$work/counter.py" <<'PY'
import sys, time
n = 0
while True:
    n += 1
    with open(sys.argv[1], "a") as f: f.write("%d\n" % n)
    time.sleep(0.02)
PY
start_py "$work/counter.py" "$work/out"
pid=$!
poll grown "$work/out" 2 || { echo "FAIL: the counter does not count"; exit 1; }
"$bin" dump --pid "$pid" --images-dir "$work/img" --json > "$work/dump.json"
{ wait "$pid"; } 2>/dev/null || true   # the dump killed it; reap it so its pid is free
grep -q "\"pid\":$pid" "$work/dump.json"
grep -q '"frozen_time"' "$work/dump.json"
set +e
"$bin" dump --pid "$pid" --images-dir "$work/img" 2> "$work/err"; rc=$?
set -e
[ "$rc" = 2 ] || { echo "FAIL: a dump into a used directory exited $rc"; cat "$work/err"; exit 1; }
grep -q "already holds a checkpoint" "$work/err"
grep -q "^hint: " "$work/err"
"$bin" restore --images-dir "$work/img" --json > "$work/restore.json"
restored=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$work/restore.json")
pids+=("$restored")
[ "$restored" = "$pid" ]
at=$(lines "$work/out")
poll grown "$work/out" "$at" || { echo "FAIL: the restored counter does not count"; exit 1; }
"$bin" stats --images-dir "$work/img" --json | grep '"restore_time"' > /dev/null

# 4. crit's commands on those images: x, info, decode | encode round trip.
"$bin" x "$work/img" ps | grep -E "^ *$pid .*python3" > /dev/null
"$bin" x "$work/img" mems | grep "counter.py\|python3" > /dev/null
"$bin" info "$work/img/pstree.img" | grep '"magic": "PSTREE"' > /dev/null
for img in "$work"/img/*.img; do
  case ${img##*/} in pages-*) continue ;; esac
  "$bin" decode -i "$img" | "$bin" encode -o "$work/re.img"
  cmp -s "$img" "$work/re.img" || { echo "FAIL: decode | encode changed ${img##*/}"; exit 1; }
  "$bin" decode --pretty -i "$img" | "$bin" encode | cmp -s "$img" - \
    || { echo "FAIL: decode --pretty | encode changed ${img##*/}"; exit 1; }
done
set +e
echo '{"magic": "PSTREE", "entries": [{"pid": "x"}]}' | "$bin" encode > /dev/null 2> "$work/err"; rc=$?
set -e
[ "$rc" = 6 ] || { echo "FAIL: encode of bad JSON exited $rc"; exit 1; }

# 5. Archives and OCI images of the same checkpoint.
"$bin" export --images-dir "$work/img" -o "$work/ck.tar.gz" --name counter --json | grep '"files"' > /dev/null
"$bin" import -i "$work/ck.tar.gz" --target "$work/imported" > /dev/null
"$bin" push --images-dir "$work/img" "oci:$work/layout:counter" --json | grep '"manifest_digest"' > /dev/null
"$bin" pull "oci:$work/layout:counter" --target "$work/pulled" > /dev/null
for d in imported pulled; do
  diff <("$bin" x "$work/img" ps) <("$bin" x "$work/$d/checkpoint" ps) \
    || { echo "FAIL: the $d checkpoint differs"; exit 1; }
done

# 6. A process with an established TCP connection: it dumps only with
# --tcp-established (the error says so), and restores only with it.
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
start_py "$tcp/tcp.py" "$tcp/ready" "$tcp/out"
tpid=$!
poll test -s "$tcp/ready" || { echo "FAIL: the TCP process did not start"; exit 1; }
set +e
"$bin" dump --pid "$tpid" --images-dir "$tcp/refused" 2> "$work/err"; rc=$?
set -e
[ "$rc" = 3 ] || { echo "FAIL: a dump of a TCP connection without the flag exited $rc"; cat "$work/err"; exit 1; }
grep -q "^hint: .*--tcp-established" "$work/err" || { echo "FAIL: no hint"; cat "$work/err"; exit 1; }
poll grown "$tcp/out" "$(lines "$tcp/out")" || { echo "FAIL: the refused dump left it stopped"; exit 1; }
"$bin" dump --pid "$tpid" --images-dir "$tcp/img" --tcp-established --file-locks > /dev/null
{ wait "$tpid"; } 2>/dev/null || true
if "$bin" restore --images-dir "$tcp/img" 2> "$work/err"; then
  echo "FAIL: a checkpoint with an established connection restored without --tcp-established"; exit 1
fi
if grep -q "File exists" "$work/err"; then echo "FAIL: the pid was still taken"; cat "$work/err"; exit 1; fi
# The half-restored task is nobody's child now: wait until PID 1 reaps it.
poll test ! -e "/proc/$tpid" || { echo "FAIL: pid $tpid still taken"; exit 1; }
"$bin" restore --images-dir "$tcp/img" --tcp-established --file-locks --deadline 30s --json > "$work/tcp-restore.json"
tcp_restored=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$work/tcp-restore.json")
pids+=("$tcp_restored")
[ "$tcp_restored" = "$tpid" ]
at=$(lines "$tcp/out")
poll grown "$tcp/out" "$at" || { echo "FAIL: the restored connection carries no data"; exit 1; }
"$bin" inspect --images-dir "$tcp/img" --json | grep '"state":"ESTABLISHED"' > /dev/null
"$bin" inspect --images-dir "$tcp/img" | grep "argv: .*tcp.py" > /dev/null
"$bin" decode --pretty -i "$tcp/img/files.img" | grep '"state": "ESTABLISHED"' > /dev/null
"$bin" x "$tcp/img" fds | grep "INETSK" > /dev/null
echo "cli smoke: ok (installed criu-rs; dumped and restored pid $pid; crit round trips; archive and OCI layout; TCP pid $tpid restored with its flags)"
