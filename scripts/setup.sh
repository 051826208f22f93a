#!/usr/bin/env bash
# Provision this machine for criu-rs: Debian packages, and a CRIU >= 4.1
# (with libcriu, its headers and criu.pc) whose `criu check` passes.
#
# Idempotent: on a provisioned machine it installs and rebuilds nothing.
# Must run as root. See ../shared/ENVIRONMENT.md for why CRIU is built here.
set -euo pipefail

CRIU_VERSIONS=("4.2.1-1" "4.1.1-1")   # Debian source versions to try, in order
CRIU_SUITES=("sid" "trixie")           # suites whose deb-src provide them
CRIU_MIN="4.1"
PREFIX=/usr/local
STATE_DIR=${CRIU_RS_STATE_DIR:-/var/cache/criu-rs}

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (CRIU needs it, and so does installing packages); try: sudo $0"
command -v apt-get >/dev/null || die "apt-get not found: this script provisions Debian (12 or newer)"

PACKAGES=(
  # bindgen and the Rust build
  libclang-dev clang pkg-config gcc make
  # CRIU's build dependencies
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  python3-protobuf libnl-3-dev libnet1-dev libcap-dev libaio-dev libbsd-dev
  libgnutls28-dev uuid-dev libnftables-dev xz-utils
  # what tests and examples use
  iproute2 iptables busybox-static runc util-linux procps patch
  # the Docker engine (Engine 20.10, containerd, runc); tests and the
  # container example start their own daemons, the set-up starts none
  docker.io
  # the OCI registry that checkpoint images travel through (issue 14); its
  # service is never started: tests run their own in a network namespace
  docker-registry openssl zstd
  # tools nobody here wrote that read and write OCI images: criu-oci's
  # images are copied, built and unpacked with them (testkit/tests/registry.rs);
  # buildah also upgrades login/passwd to a point release
  skopeo buildah umoci
  # the TLS migration tests capture the hosts' link (testkit/tests/tls.rs)
  tcpdump
  # an unmodified server the CLI's tests move (criu-cli/tests/tcp_move.rs)
  # and, as a container's root filesystem of its binary and libraries, the
  # Docker migration tests (criu-docker)
  redis-server
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: is the package registry reachable?"
  # docker.io's postinst starts a system dockerd through invoke-rc.d (its
  # SysV script) where PID 1 is not systemd. That daemon would hold
  # /var/run/docker.sock and /var/lib/docker: deny service starts during the
  # install, unless a policy (e.g. a container image's) is in place already.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# criu-rs set-up: start no service while installing\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  install_ok=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || install_ok=
  if [ -n "$own_policy" ]; then rm -f "$policy"; fi
  [ -n "$install_ok" ] || die "apt-get install failed for: ${missing[*]}"
fi

# The distro's CRIU 3.x cannot work on this kernel; make sure it cannot shadow ours.
if dpkg-query -W -f='${Status}' criu 2>/dev/null | grep -q 'install ok installed'; then
  log "removing Debian's criu package (too old for this kernel)"
  apt-get remove -y -qq criu >/dev/null || die "could not remove the distro criu package"
fi

export PATH="$PREFIX/sbin:$PATH"
export PKG_CONFIG_PATH="$PREFIX/lib/x86_64-linux-gnu/pkgconfig:$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"

# CRIU probes the kernel on every call (~40 ms here) unless it can keep the
# result, its "kdat", in a file on tmpfs; it refuses any other filesystem,
# so that the cache cannot outlive a reboot or a kernel upgrade. /run is a
# tmpfs on most systems but not on these machines, and mounting over /run
# would hide what lives there (ip netns's /run/netns). So the CRIU built
# here keeps its cache in its own directory, on a tiny root-only tmpfs
# mounted by this script (a runtime mount, gone on reboot; until the next
# set-up CRIU then just probes, as before).
KDAT_DIR=/run/criu

# The cache file a CRIU binary uses (the path is compiled in).
kdat_file() { grep -aoE -m1 '/[[:alnum:]/._-]*criu\.kdat' "$1" 2>/dev/null | head -n1; }
on_tmpfs() { [ "$(stat -f -c %T "$1" 2>/dev/null)" = tmpfs ]; }

mkdir -p "$KDAT_DIR"
if ! mountpoint -q "$KDAT_DIR" && ! on_tmpfs "$KDAT_DIR"; then
  log "mounting a tmpfs on $KDAT_DIR for CRIU's kernel-probe cache"
  mount -t tmpfs -o size=1m,mode=0700,nosuid,nodev,noexec criu-kdat "$KDAT_DIR" \
    || die "cannot mount a tmpfs on $KDAT_DIR"
fi

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# The project's own patches to CRIU (patches/criu-*.patch, applied in name
# order when CRIU is built here; see docs/page-server-stall.md). A CRIU
# built here records the patches' sha256 sums in PATCH_MARKER, so that a
# CRIU built before a patch was added or changed is rebuilt, once.
PATCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/patches"
PATCH_MARKER="$STATE_DIR/criu-patches.sha256"
criu_patches() { compgen -G "$PATCH_DIR/criu-*.patch" | sort; }
patches_fingerprint() {
  local p
  while read -r p; do
    if [ -n "$p" ]; then printf '%s  %s\n' "$(sha256sum "$p" | cut -d' ' -f1)" "$(basename "$p")"; fi
  done < <(criu_patches)
}

# A CRIU this script built and installed (the kdat and patch checks only
# rebuild those, never a CRIU someone else installed).
built_here() { [ "$1" = "$PREFIX/sbin/criu" ] && compgen -G "$STATE_DIR/src/build-*.log" >/dev/null; }

# True when the CRIU built here carries exactly the current patches: the
# marker matches, and the source tree it was built from has each patch
# applied (reversing it would succeed).
patches_current() {
  local v=$1 tree="$STATE_DIR/src/criu-$1" p
  [ "$(cat "$PATCH_MARKER" 2>/dev/null)" = "$(patches_fingerprint)" ] || return 1
  while read -r p; do
    [ -n "$p" ] || continue
    patch -d "$tree" -p1 -R --dry-run --batch --silent < "$p" >/dev/null 2>&1 || {
      log "the CRIU $v source tree ($tree) lacks $(basename "$p")"
      return 1
    }
  done < <(criu_patches)
}

criu_ok() {
  local bin v pcv
  bin=$(command -v criu) || return 1
  v=$("$bin" --version 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" || return 1
  pcv=$(pkg-config --modversion criu 2>/dev/null) || return 1
  [ "$pcv" = "$v" ] || { log "criu binary $v and pkg-config criu $pcv disagree"; return 1; }
  "$bin" check >/dev/null 2>&1 || return 1
  local kf
  kf=$(kdat_file "$bin")
  if [ -n "$kf" ] && ! on_tmpfs "$(dirname "$kf")"; then
    if built_here "$bin"; then
      log "CRIU $v at $bin (built by this script) keeps its kernel-probe cache in $kf, not on tmpfs; rebuilding it to use $KDAT_DIR"
      return 1
    fi
    log "note: CRIU at $bin cannot cache its kernel probe ($kf is not on tmpfs); every call pays ~40 ms"
  fi
  if built_here "$bin"; then
    if ! patches_current "$v"; then
      log "CRIU $v at $bin was built by this script without the current patches ($PATCH_DIR); rebuilding it"
      return 1
    fi
  elif [ -n "$(criu_patches)" ]; then
    log "note: CRIU at $bin was not built by this script and lacks the patches in $PATCH_DIR: dumps through a page server stay frozen ~200 ms longer (docs/page-server-stall.md) and write their pages at half speed (docs/page-server-pipe.md), scripts/check-page-server.sh will fail, and without soft-dirty bits pre-dumps are unsupported (docs/precopy-uffd.md)"
  fi
  log "CRIU $v at $bin passes 'criu check'; keeping it"
}

# Applies the project's patches to a freshly unpacked CRIU tree, and checks
# that each one took (a reverse dry run must succeed).
apply_criu_patches() {
  local tree=$1 p
  if [ -n "$(criu_patches)" ] && ! command -v patch >/dev/null; then
    log "installing 'patch' to apply the project's CRIU patches"
    apt-get install -y -qq --no-install-recommends patch >/dev/null || die "cannot install the 'patch' tool"
  fi
  while read -r p; do
    [ -n "$p" ] || continue
    log "applying $(basename "$p") to $(basename "$tree")"
    patch -d "$tree" -p1 --forward --batch --silent < "$p" \
      || die "$(basename "$p") does not apply to $(basename "$tree"); it was written for CRIU 4.2.1"
    patch -d "$tree" -p1 -R --dry-run --batch --silent < "$p" >/dev/null \
      || die "$(basename "$p") did not apply cleanly to $tree"
  done < <(criu_patches)
}

# The mirror this machine already uses for Debian, read from its apt sources.
debian_mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || die "cannot find a Debian mirror in /etc/apt/sources.list{,.d}"
  printf '%s\n' "$uri"
}

build_criu() {
  local mirror aptdir srcdir tarball deb_ver up_ver want got logf i
  mirror=$(debian_mirror)
  aptdir="$STATE_DIR/apt"
  srcdir="$STATE_DIR/src"
  mkdir -p "$aptdir/lists/partial" "$srcdir"
  : > "$aptdir/sources.list"
  for s in "${CRIU_SUITES[@]}"; do
    echo "deb-src $mirror $s main" >> "$aptdir/sources.list"
  done
  # A private apt configuration: the system's sources stay as they are.
  local APT=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
             -o "Dir::State::Lists=$aptdir/lists")
  log "reading Debian source indexes (${CRIU_SUITES[*]}) into $aptdir"
  apt-get "${APT[@]}" update -qq >"$aptdir/update.log" 2>&1 \
    || die "apt-get update of the deb-src indexes failed (see $aptdir/update.log): is the package registry reachable?"

  for i in "${!CRIU_VERSIONS[@]}"; do
    deb_ver=${CRIU_VERSIONS[$i]}
    up_ver=${deb_ver%-*}
    tarball="$srcdir/criu_${up_ver}.orig.tar.xz"
    # showsrc prints one stanza per version; take the one asked for.
    want=$(apt-cache "${APT[@]}" showsrc criu 2>/dev/null | awk -v v="$deb_ver" '
      /^$/ {stanza_ver=""; f=0}
      /^Version:/ {stanza_ver=$2}
      /^Checksums-Sha256:/ {f=1; next}
      /^[^ ]/ {f=0}
      f && stanza_ver == v && $3 ~ /orig\.tar\.xz$/ {print $1; exit}')
    if [ -z "$want" ]; then
      log "criu $deb_ver is not in the source indexes; trying the next version"
      continue
    fi
    if [ ! -f "$tarball" ] || [ "$(sha256sum "$tarball" | cut -d' ' -f1)" != "$want" ]; then
      rm -f "$tarball"
      log "downloading criu $deb_ver source"
      # The mirror may serve the .orig tarball but 404 the .debian one, so
      # apt-get's exit code is not trusted: the checksum below decides.
      (cd "$srcdir" && apt-get "${APT[@]}" source --download-only "criu=$deb_ver" >"$srcdir/download.log" 2>&1) || true
    fi
    [ -f "$tarball" ] || { log "no tarball for criu $deb_ver (see $srcdir/download.log)"; continue; }
    got=$(sha256sum "$tarball" | cut -d' ' -f1)
    [ "$got" = "$want" ] || die "checksum mismatch for $tarball: got $got, the apt index says $want"
    log "sha256 of $(basename "$tarball") verified: $got"

    local build="$srcdir/criu-$up_ver"
    rm -f "$PATCH_MARKER"   # until the patched build is installed
    rm -rf "$build"
    tar -C "$srcdir" -xf "$tarball"
    [ -d "$build" ] || die "unpacking $tarball did not give $build"
    apply_criu_patches "$build"
    logf="$srcdir/build-$up_ver.log"
    log "building CRIU $up_ver (log: $logf)"
    if ! make -C "$build" -j"$(nproc)" RUNDIR="$KDAT_DIR" criu lib >"$logf" 2>&1; then
      tail -n 20 "$logf" >&2
      die "building CRIU $up_ver failed; full log: $logf"
    fi
    if ! make -C "$build" install-criu install-lib PREFIX="$PREFIX" RUNDIR="$KDAT_DIR" SKIP_PIP_INSTALL=1 >>"$logf" 2>&1; then
      tail -n 20 "$logf" >&2
      die "installing CRIU $up_ver failed; full log: $logf"
    fi
    ldconfig
    patches_fingerprint > "$PATCH_MARKER"
    return 0
  done
  die "no CRIU source version (${CRIU_VERSIONS[*]}) could be downloaded and verified"
}

if ! criu_ok; then
  build_criu
  hash -r
  criu_ok || die "CRIU was installed to $PREFIX but 'criu check' or pkg-config still fails; run 'criu check' to see why"
fi

# zdtm's static test programs (CRIU's own test suite) that
# testkit/tests/zdtm_precopy.rs runs through the crate, listed in
# testkit/zdtm/precopy.list. They are built from the source tree of the
# installed CRIU, in a copy ($STATE_DIR/zdtm): the build writes objects,
# dependency files and .gitignore entries next to the sources, and the
# source tree stays as the CRIU build left it. make rebuilds nothing that
# is up to date; the copy is renewed when the installed version changes.
ZDTM_LIST="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/testkit/zdtm/precopy.list"
build_zdtm() {
  local v src tree="$STATE_DIR/zdtm" names logf
  v=$(criu --version 2>/dev/null | awk '/^Version:/ {print $2}')
  src="$STATE_DIR/src/criu-$v/test/zdtm"
  if [ ! -f "$src/static/Makefile" ]; then
    log "note: no CRIU $v source tree at $src (CRIU was not built by this script): testkit/tests/zdtm_precopy.rs will fail until it is"
    return 0
  fi
  if [ "$(cat "$tree/SOURCE" 2>/dev/null)" != "$src" ]; then
    log "copying zdtm's test programs from $src to $tree"
    rm -rf "$tree"
    mkdir -p "$tree"
    cp -a "$src/Makefile.inc" "$src/lib" "$src/static" "$tree/"
    echo "$src" > "$tree/SOURCE"
  fi
  names=$(sed -e 's/#.*//' "$ZDTM_LIST" | awk 'NF {print $1}')
  logf="$tree/build.log"
  if ! make -C "$tree/static" -j"$(nproc)" $names >"$logf" 2>&1; then
    tail -n 20 "$logf" >&2
    die "building zdtm's test programs failed; full log: $logf"
  fi
}
build_zdtm

# CRIU's lazy-pages server asks for pipes of ~3.2 MiB (PIPE_MAX_SIZE in
# criu/include/page-pipe.h). Without CAP_SYS_RESOURCE (root here lacks it)
# F_SETPIPE_SZ may not exceed fs.pipe-max-size (default 1 MiB), and CRIU
# 4.2.1 ignores that failure, then fails serving pages with "splice: -1: Bad
# file descriptor". Raise the limit (a runtime sysctl; lost on reboot).
PIPE_MIN=4194304
if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt "$PIPE_MIN" ]; then
  log "raising fs.pipe-max-size to $PIPE_MIN for CRIU's lazy-pages server"
  echo "$PIPE_MIN" > /proc/sys/fs/pipe-max-size || die "cannot raise fs.pipe-max-size (lazy pages will fail)"
fi

# pkg-config must find our criu.pc without the caller setting PKG_CONFIG_PATH.
pcdir=$(pkg-config --variable=pcfiledir criu)
if ! PKG_CONFIG_PATH= pkg-config --exists criu 2>/dev/null; then
  log "note: $pcdir is not on pkg-config's default path; set PKG_CONFIG_PATH=$pcdir (the Makefile does)"
fi
# crit (CRIU's own image decoder, the reference of testkit/tests/image.rs)
# imports crit/version.py, which only CRIU's pip install would write.
for d in "$STATE_DIR"/src/criu-*/crit/crit; do [ -d "$d" ] && [ ! -f "$d/version.py" ] && v=${d%/crit/crit} && echo "__version__ = \"${v##*/criu-}\"" > "$d/version.py"; done
# The workspace's declared rust-version (Cargo.toml), which make
# publish-check builds the packaged crates with. Installed once through
# rustup (a minimal profile: rustc, cargo, std); a failed download is
# said loudly but does not stop the set-up (only publish-check needs it).
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "${PATCH_DIR%/patches}/Cargo.toml" | head -n1)
if [ -n "$msrv" ]; then
  case $msrv in *.*.*) msrv_toolchain=$msrv ;; *) msrv_toolchain=$msrv.0 ;; esac
  if ! command -v rustup >/dev/null 2>&1; then
    log "WARNING: rustup not found: the rust-version toolchain $msrv_toolchain is NOT installed, and 'make publish-check' will fail until it is"
  elif rustup run "$msrv_toolchain" rustc --version >/dev/null 2>&1; then
    :
  else
    log "installing Rust $msrv_toolchain, the workspace's rust-version (for make publish-check)"
    if ! rustup toolchain install "$msrv_toolchain" --profile minimal; then
      log "WARNING: ########################################################################"
      log "WARNING: could not download Rust $msrv_toolchain (the workspace's rust-version)."
      log "WARNING: 'make publish-check' will fail until 'rustup toolchain install $msrv_toolchain --profile minimal' succeeds."
      log "WARNING: ########################################################################"
    fi
  fi
fi
log "ready: $(criu --version | head -n1), libcriu from $pcdir"
