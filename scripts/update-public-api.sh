#!/usr/bin/env bash
# Regenerates api/CRATE.txt, the public API of each published crate (one
# item a line, with signatures), or with --check fails when the committed
# listing differs from the code's, so that any change to the public API
# shows in review.
#
#   scripts/update-public-api.sh           # write api/*.txt
#   scripts/update-public-api.sh --check   # compare only (make api-check)
#
# How: rustdoc's JSON output (nightly's rustdoc; with only a stable
# toolchain, RUSTC_BOOTSTRAP=1 unlocks the same flag), read by
# scripts/public-api.py. Built as docs.rs builds (DOCS_RS=1, no libcriu),
# every feature, offline.
set -euo pipefail

cd "$(dirname "$0")/.."
mode=${1:-write}
case $mode in
write | --check) ;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac
# Every published library. criu-cli is left out: it is a binary
# (`criu-rs`) with no library target, so it has no Rust API to list (its
# interface is its command line, checked by scripts/cli-smoke.sh).
crates=(criu-sys criu-image criu-rs criu-oci criu-docker)
target=target/publish-check/api
if rustup run nightly rustc --version >/dev/null 2>&1; then
	toolchain=(+nightly)
else
	toolchain=()
	export RUSTC_BOOTSTRAP=1
fi
export CARGO_NET_OFFLINE=true DOCS_RS=1 PKG_CONFIG_LIBDIR=/nonexistent PKG_CONFIG_PATH=/nonexistent

fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
for c in "${crates[@]}"; do
	features=()
	[ "$c" = criu-rs ] && features=(--all-features)
	cargo "${toolchain[@]}" rustdoc -q -p "$c" --lib "${features[@]}" --target-dir "$target" \
		-- -Z unstable-options --output-format json
	python3 scripts/public-api.py "$target/doc/$(echo "$c" | sed 's/criu-rs/criu/; s/-/_/g').json" >"$fresh/$c.txt"
done

if [ "$mode" = --check ]; then
	stale=0
	for c in "${crates[@]}"; do
		if ! diff -u "api/$c.txt" "$fresh/$c.txt" >&2; then
			echo "error: the public API of $c differs from api/$c.txt (above: - committed, + code)" >&2
			stale=1
		fi
	done
	if [ "$stale" = 1 ]; then
		echo "if the change is meant, run scripts/update-public-api.sh and commit api/" >&2
		exit 1
	fi
	echo "the public API of ${crates[*]} matches api/"
else
	mkdir -p api
	for c in "${crates[@]}"; do cp "$fresh/$c.txt" "api/$c.txt"; done
	wc -l api/*.txt
fi
