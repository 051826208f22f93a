#!/usr/bin/env bash
# Checks that bad environments fail early with a message a person can act on:
#  1. the set-up script run by a non-root user;
#  2. criu-sys built where pkg-config cannot find libcriu and no override is set.
set -uo pipefail
cd "$(dirname "$0")/.."
fail=0

out=$(setpriv --reuid=65534 --regid=65534 --clear-groups bash scripts/setup.sh 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "must run as root" <<<"$out"; then
  echo "ok: setup as non-root fails: $out"
else
  echo "FAIL: setup as non-root gave rc=$rc: $out"; fail=1
fi

target=${CARGO_TARGET_DIR:-target}/no-libcriu
out=$(env -u CRIU_LIB_DIR -u CRIU_INCLUDE_DIR PKG_CONFIG_LIBDIR=/nonexistent PKG_CONFIG_PATH=/nonexistent \
      cargo build -q -p criu-sys --target-dir "$target" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "scripts/setup.sh" <<<"$out" && grep -q "CRIU_LIB_DIR" <<<"$out"; then
  echo "ok: criu-sys without libcriu fails and names the set-up script and the overrides"
else
  echo "FAIL: criu-sys without libcriu gave rc=$rc:"; echo "$out" | tail -20; fail=1
fi

out=$(CRIU_LIB_DIR=/nonexistent cargo build -q -p criu-sys --target-dir "$target" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "CRIU_LIB_DIR=/nonexistent holds no libcriu.so" <<<"$out"; then
  echo "ok: a wrong CRIU_LIB_DIR is named in the error"
else
  echo "FAIL: wrong CRIU_LIB_DIR gave rc=$rc:"; echo "$out" | tail -20; fail=1
fi
exit $fail
