#!/usr/bin/env bash
# Builds criu-rs (with clippy, all targets) in every feature set a user
# would pick: the core alone, the core with JSON reports, the defaults, and
# everything.
set -euo pipefail
cd "$(dirname "$0")/.."
sets=(
  "--no-default-features"
  "--no-default-features --features serde"
  ""
  "--all-features"
)
for f in "${sets[@]}"; do
  echo "features: criu-rs ${f:-(default)}"
  # shellcheck disable=SC2086 # the flags are words on purpose
  cargo clippy -q -p criu-rs $f --all-targets -- -D warnings
done
