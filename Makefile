# The two commands a new machine needs (both run the set-up first, as root):
#   make demo   - the main job
#   make test   - the whole test suite
SHELL := /bin/bash
export PATH := /usr/local/sbin:/usr/local/bin:$(PATH)

.PHONY: root setup demo test lint bad-env

root:
	@[ "$$(id -u)" = 0 ] || { echo "error: run as root (CRIU needs it): sudo make $(MAKECMDGOALS)" >&2; exit 1; }

setup: root
	bash scripts/setup.sh

demo: setup
	cargo build --release -p criu-testkit --bins
	cargo run --release -p criu-rs-examples --example migrate -- --strategy all --workload memory:256 --json migrate.json
	cargo run --release -p criu-rs-examples --example migrate_container -- --json migrate_container.json

test: setup
	cargo build -p criu-testkit --bins
	cargo test --workspace
	bash scripts/check-bad-env.sh
	bash scripts/cli-smoke.sh
	# The examples, end to end, on small workloads.
	cargo run -q -p criu-rs-examples --example dump_restore
	cargo run -q -p criu-rs-examples --example migrate -- --strategy all --workload memory:16 --warmup-ms 200
	cargo run -q -p criu-rs-examples --example migrate_container -- --interval 0.05 --warmup-ms 300

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
