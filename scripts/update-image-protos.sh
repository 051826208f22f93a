#!/usr/bin/env bash
# Regenerates criu-image/src/generated/ (the Rust types of CRIU's image
# protos, their encoded descriptor set, the magic table) from the CRIU
# source tree the set-up downloads, or, with --check, fails when the
# committed files differ from a fresh generation.
#
#   scripts/update-image-protos.sh           # write the files
#   scripts/update-image-protos.sh --check   # compare only (CI, make generated-check)
#
# CRIU_SOURCE_DIR overrides the tree (default: the set-up's 4.2.1).
set -euo pipefail

cd "$(dirname "$0")/.."
source_dir=${CRIU_SOURCE_DIR:-/var/cache/criu-rs/src/criu-4.2.1}
committed=criu-image/src/generated
mode=${1:-write}
case $mode in
write | --check) ;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac

if [ ! -d "$source_dir/images" ]; then
	echo "error: no CRIU source tree at $source_dir (run 'make setup', or set CRIU_SOURCE_DIR)" >&2
	exit 1
fi

fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
cargo run -q -p criu-image-codegen -- "$source_dir" "$fresh"

files=(images.rs images.fds magic.rs)
if [ "$mode" = --check ]; then
	stale=0
	for f in "${files[@]}"; do
		if ! cmp -s "$fresh/$f" "$committed/$f"; then
			echo "error: $committed/$f differs from a fresh generation from $source_dir" >&2
			[ "$f" = images.fds ] || diff -u "$committed/$f" "$fresh/$f" | head -40 >&2 || true
			stale=1
		fi
	done
	if [ "$stale" = 1 ]; then
		echo "run scripts/update-image-protos.sh and commit the result" >&2
		exit 1
	fi
	echo "criu-image's generated files match $source_dir"
else
	mkdir -p "$committed"
	for f in "${files[@]}"; do
		cp "$fresh/$f" "$committed/$f"
	done
	echo "wrote ${files[*]} to $committed from $source_dir"
fi
