#!/usr/bin/env bash
# What crates.io and docs.rs will see, checked on this machine (make
# publish-check, as root: the fresh project dumps and restores a process).
#
#  1. Every published crate is packaged (cargo package, offline): the
#     libraries and criu-cli (the `criu-rs` binary).
#  2. A fresh project outside the workspace depends on the *packaged*
#     libraries (unpacked, patched in for crates.io) with every feature,
#     holds the packaged criu-cli as a second member, and builds with no
#     CRIU source on disk in sight (CRIU_SOURCE_DIR points nowhere) and no
#     network (--offline).
#  3. docs.rs's build, simulated on those packaged sources: nightly rustdoc
#     (docs.rs uses nightly), `--cfg docsrs`, DOCS_RS=1, pkg-config finding
#     no libcriu, every feature, warnings denied.
#  4. The fresh project runs: it dumps a process, restores it as a child,
#     decodes the checkpoint's pstree.img with criu::image, and waits for
#     the restored process.
#  5. The declared rust-version: the fresh project (every feature of
#     criu-rs and criu-image, the dump/restore program, criu-cli) is
#     checked and built with that toolchain, on the same lock file. The
#     set-up installs it (scripts/setup.sh); without it this step fails.
#  6. A dry-run publish of criu-sys (the others need their dependencies on
#     crates.io first); the only step that uses the network.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# The published libraries, and every published package (criu-cli is a
# binary: packaged and built, but it has no library for docs.rs).
libs=(criu-sys criu-image criu-rs criu-oci criu-docker)
crates=("${libs[@]}" criu-cli)
out=$root/target/publish-check
fresh=$out/fresh
unpacked=$out/unpacked
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)
export CARGO_NET_OFFLINE=true
# Nothing may read CRIU's source tree (criu-image's types are committed).
export CRIU_SOURCE_DIR=/nonexistent/criu-source

step() { printf '\n== %s\n' "$*"; }

step "1. packaging ${crates[*]}"
pkg_args=()
for c in "${crates[@]}"; do pkg_args+=(-p "$c"); done
# --no-verify: step 2 builds every package from its tarball, with every
# feature, which is what verification does (and more).
cargo package --no-verify --allow-dirty "${pkg_args[@]}" --target-dir "$out/package"
rm -rf "$unpacked" && mkdir -p "$unpacked"
for c in "${crates[@]}"; do
	tar -xzf "$out/package/package/$c-$version.crate" -C "$unpacked"
done
# cargo package gives every file the same old mtime (2006), and cargo
# tells a path dependency's changes by mtime: without this, the steps below
# would reuse what an earlier run built from older sources.
find "$unpacked" -type f -exec touch {} +

step "2. a fresh project on the packaged crates"
rm -rf "$fresh" && mkdir -p "$fresh/src"
{
	cat <<TOML
[package]
name = "criu-rs-publish-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
criu-sys = "$version"
criu-rs = { version = "$version", features = ["migrate", "serde", "tls", "image"] }
criu-image = "$version"
criu-oci = "$version"
criu-docker = "$version"
libc = "0.2"

[patch.crates-io]
TOML
	for c in "${libs[@]}"; do
		echo "$c = { path = \"$unpacked/$c-$version\" }"
	done
	# The workspace's profile, so the dependencies it built are reused.
	sed -n '/^\[profile.dev.package/,/^opt-level/p' Cargo.toml
	echo '[workspace]'
	echo 'members = [".", "criu-cli"]'
} >"$fresh/Cargo.toml"
# The packaged CLI, built as a member of the fresh project (its
# dependencies on the libraries resolve to the packaged ones above).
cp -r "$unpacked/criu-cli-$version" "$fresh/criu-cli"
# The workspace's lock file pins the same dependency versions (offline).
cp Cargo.lock "$fresh/Cargo.lock"
cat >"$fresh/src/main.rs" <<'RUST'
//! The README's example on a real process, built from the packaged crates.
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use criu::image::proto::PstreeEntry;
use criu::image::Image;
use criu::{Criu, ImagesDir, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile_dir()?;
    let mut workload = Command::new("sleep");
    // Its own stdio: CRIU refuses to restore a file that grew since the dump.
    workload.arg("600").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setsid and close_range are async-signal-safe. CRIU dumps
    // session leaders; and the workload keeps only its stdio, since a
    // descriptor it would inherit from whatever runs this check (one
    // opened in another mount namespace, say) may be one CRIU cannot dump.
    unsafe {
        workload.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    let mut workload = workload.spawn()?;
    let pid = workload.id() as i32;

    let criu = Criu::new();
    let images = ImagesDir::create(dir.join("ck"))?;
    let dump = criu.dump(Options::new().pid(pid).images_dir(&images).log_file("dump.log"))?;
    workload.wait()?; // CRIU killed it after the dump
    let stats = dump.stats.ok_or("no dump statistics")?;
    println!("dumped {pid}: stopped for {:?}, {} pages", stats.stopped_time(), stats.pages_written);

    let tree: Vec<PstreeEntry> = Image::open(dir.join("ck/pstree.img"))?.typed()?;
    assert_eq!(tree[0].pid as i32, pid, "pstree.img names the dumped pid");
    let _limits = criu_oci::Limits::default();
    let _docker = criu_docker::ReceiveConfig::new().limits(criu::transfer::Limits::default());

    let (mut child, report) =
        criu.restore_child(Options::new().images_dir(&images).log_file("restore.log"))?;
    assert_eq!(child.pid(), pid, "restored with its pid");
    println!("restored {} in {:?}", child.pid(), report.wall_time);
    child.kill()?;
    child.wait()?;
    std::fs::remove_dir_all(&dir)?;
    println!("publish-check: dump, decode and restore from the packaged crates: ok");
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("criu-rs-publish-check-{}", std::process::id()));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
RUST
# (The program only: the CLI's binary would take the name of the
# workspace's own in target/; it is built from its package in step 5.)
(cd "$fresh" && cargo build --offline -p criu-rs-publish-check --target-dir "$root/target")

step "3. docs.rs's build of each crate, simulated on the packaged sources"
# (Every feature: the fresh project enables all of criu-rs's.)
if rustup run nightly rustc --version >/dev/null 2>&1; then
	doc_toolchain=(+nightly)
	doc_flags="--cfg docsrs -D warnings"
else
	echo "warning: no nightly toolchain (docs.rs uses one): documenting with stable and RUSTC_BOOTSTRAP=1" >&2
	doc_toolchain=()
	doc_flags="--cfg docsrs -D warnings"
	export RUSTC_BOOTSTRAP=1
fi
for c in "${libs[@]}"; do
	(cd "$fresh" && env DOCS_RS=1 PKG_CONFIG_LIBDIR=/nonexistent PKG_CONFIG_PATH=/nonexistent \
		RUSTDOCFLAGS="$doc_flags" \
		cargo "${doc_toolchain[@]}" doc --offline --no-deps -p "$c" \
		--target-dir "$out/docs")
done

step "4. the fresh project dumps and restores a process"
(cd "$fresh" && "$root/target/debug/criu-rs-publish-check")

case $msrv in *.*.*) msrv_toolchain=$msrv ;; *) msrv_toolchain=$msrv.0 ;; esac
step "5. rust-version $msrv (toolchain $msrv_toolchain)"
if ! rustup run "$msrv_toolchain" rustc --version >/dev/null 2>&1; then
	echo "error: toolchain $msrv_toolchain, the workspace's rust-version, is not installed (rustup toolchain list: $(rustup toolchain list | tr '\n' ' '))." >&2
	echo "error: make setup installs it, or: rustup toolchain install $msrv_toolchain --profile minimal" >&2
	exit 1
fi
# Every member of the fresh project (the program, criu-cli with every
# feature) and every feature of criu-rs and criu-image, built as a user of
# that Rust would;
# the lock file is the workspace's, so a dependency whose own
# rust-version is newer fails here.
(cd "$fresh" && cargo "+$msrv_toolchain" build --offline --workspace --all-features --target-dir "$out/msrv")

step "6. dry-run publish of criu-sys (asks crates.io's index: the one step online)"
CARGO_NET_OFFLINE=false cargo publish --dry-run --allow-dirty -p criu-sys --target-dir "$out/package"

echo
echo "publish-check: ok"
