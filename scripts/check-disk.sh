#!/usr/bin/env bash
# Prints the free space where CI builds and where the tests write, and warns
# when it is short. A full disk shows up later as many unrelated failures
# (the receivers refuse files that would eat their reserve, see
# criu::transfer::Limits::keep_free), so the cause is named here first.
set -euo pipefail
cd "$(dirname "$0")/.."
# What a cold build, the tests and publish-check take together, measured
# with the dev profile's line tables only: about 12 GiB.
need_gib=${CRIU_RS_DISK_NEED_GIB:-16}
for dir in . "${TMPDIR:-/tmp}" /dev/shm; do
	[ -d "$dir" ] || continue
	avail=$(df --output=avail -B1G "$dir" | tail -n 1 | tr -d ' ')
	echo "check-disk: ${avail} GiB available under $(realpath "$dir")"
done
avail=$(df --output=avail -B1G . | tail -n 1 | tr -d ' ')
if [ "$avail" -lt "$need_gib" ]; then
	echo "check-disk: WARNING: ${avail} GiB free here, a build and the tests want about ${need_gib} GiB;" \
		"expect failures from a full disk (remove old target/ directories)" >&2
fi
