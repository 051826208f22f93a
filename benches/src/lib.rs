//! Shared pieces of the benchmarks: settings from the environment, where
//! images go, workloads, and a record of CRIU's own timings per run.
//!
//! Settings (all optional):
//! * `CRIU_RS_BENCH_SIZES`: memory sizes in MiB, comma-separated
//!   (default `1`: the quick mode; the published run uses
//!   `1,16,64,256,1024`).
//! * `CRIU_RS_BENCH_SAMPLES`: criterion samples per benchmark (default 10,
//!   criterion's minimum).
//! * `CRIU_RS_BENCH_FS`: `tmpfs`, `disk` or both (default both).
//! * `CRIU_RS_BENCH_REPS`: repetitions per migration (default 3).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu::{Criu, DumpReport, ImagesDir, Options};
use criu_testkit::{workload_bin, Workload};
use serde::Serialize;

/// Memory sizes to measure, in MiB (`CRIU_RS_BENCH_SIZES`, default 1).
pub fn sizes() -> Vec<usize> {
    sizes_from("CRIU_RS_BENCH_SIZES", 1)
}

/// Memory sizes of the migration benches, in MiB
/// (`CRIU_RS_BENCH_MIGRATION_SIZES`, default 16).
pub fn migration_sizes() -> Vec<usize> {
    sizes_from("CRIU_RS_BENCH_MIGRATION_SIZES", 16)
}

/// The comma-separated sizes in `var`, or `default` alone.
fn sizes_from(var: &str, default: usize) -> Vec<usize> {
    let raw = std::env::var(var).unwrap_or_default();
    let v: Vec<usize> = raw
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&s| s > 0)
        .collect();
    if v.is_empty() {
        vec![default]
    } else {
        v
    }
}

/// The migration strategies to measure: `CRIU_RS_BENCH_STRATEGIES`
/// (comma-separated names, e.g. `stop-and-copy,lazy`), or all of them.
pub fn strategies() -> Vec<criu::migrate::Strategy> {
    let raw = std::env::var("CRIU_RS_BENCH_STRATEGIES").unwrap_or_default();
    let named: Vec<criu::migrate::Strategy> = raw
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if named.is_empty() {
        criu::migrate::Strategy::ALL.to_vec()
    } else {
        named
    }
}

/// The smallest size measured (the peers are compared there, where fixed
/// costs dominate).
pub fn smallest() -> usize {
    sizes().into_iter().min().unwrap_or(1)
}

/// Criterion samples per benchmark (criterion takes no fewer than 10).
pub fn samples() -> usize {
    count_from("CRIU_RS_BENCH_SAMPLES", 10).max(10)
}

/// Repetitions per migration measurement.
pub fn reps() -> usize {
    count_from("CRIU_RS_BENCH_REPS", 3).max(1)
}

/// The number in `var`, or `default` when it is unset or not a number.
fn count_from(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A filesystem the images go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// `/dev/shm`.
    Tmpfs,
    /// `/var/tmp` (the root filesystem).
    Disk,
}

impl Fs {
    /// The filesystems selected by `CRIU_RS_BENCH_FS`.
    pub fn selected() -> Vec<Fs> {
        let raw = std::env::var("CRIU_RS_BENCH_FS").unwrap_or_else(|_| "tmpfs,disk".into());
        let mut v = Vec::new();
        if raw.contains("tmpfs") {
            v.push(Fs::Tmpfs);
        }
        if raw.contains("disk") {
            v.push(Fs::Disk);
        }
        if v.is_empty() {
            v.push(Fs::Tmpfs);
        }
        v
    }

    /// Its name in benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Fs::Tmpfs => "tmpfs",
            Fs::Disk => "disk",
        }
    }

    /// A fresh scratch directory on it, removed on drop.
    pub fn scratch(self) -> tempfile::TempDir {
        let base = match self {
            Fs::Tmpfs => Path::new("/dev/shm"),
            Fs::Disk => Path::new("/var/tmp"),
        };
        tempfile::Builder::new()
            .prefix("criu-rs-bench-")
            .tempdir_in(base)
            .expect("scratch directory")
    }
}

/// Starts the workload with `mib` MiB of touched memory, as our child in
/// its own session, writing to `out`.
pub fn workload(out: &Path, mib: usize) -> Workload {
    let bin = workload_bin();
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release -p criu-testkit --bins` first",
        bin.display()
    );
    Workload::spawn(&bin, out, Duration::from_millis(1), mib).expect("workload starts")
}

/// A criu-rs dump of `pid` into `images` through `criu`, logging to
/// `dump.log` there as every dump the benches compare does.
pub fn dump(criu: &Criu, pid: i32, images: &ImagesDir, leave_running: bool) -> DumpReport {
    criu.dump(
        Options::new()
            .pid(pid)
            .images_dir(images)
            .log_file("dump.log")
            .leave_running(leave_running),
    )
    .expect("criu-rs dump")
}

/// Makes this process the reaper of orphans below it, so that trees
/// restored detached (by the `criu` CLI) can be reaped at once instead of
/// by a slow init.
pub fn become_subreaper() {
    // SAFETY: a plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Kills `pid` and reaps it: our child, or an orphan we adopt as the
/// subreaper (a tree restored through `criu service` is adopted only once
/// the service's worker has exited, so wait up to 5 s for that).
pub fn kill_and_reap(pid: i32) {
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(nix::errno::Errno::ECHILD) = nix::sys::wait::waitpid(pid, None) {
        if std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One measured dump, as CRIU itself timed it.
#[derive(Debug, Serialize)]
pub struct StatsRecord<'a> {
    /// The benchmark.
    pub bench: &'a str,
    /// Filesystem of the images.
    pub fs: &'a str,
    /// Memory size, MiB.
    pub mib: usize,
    /// Wall time of the call, µs.
    pub wall_us: u64,
    /// CRIU's freezing_time, µs.
    pub freezing_time_us: u64,
    /// CRIU's frozen_time, µs.
    pub frozen_time_us: u64,
    /// CRIU's memdump_time, µs.
    pub memdump_time_us: u64,
    /// CRIU's memwrite_time, µs.
    pub memwrite_time_us: u64,
    /// Pages written.
    pub pages_written: u64,
}

/// Where records and generated reports go: `target/criu-rs-bench/`.
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let d = target.join("criu-rs-bench");
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Appends one record to `target/criu-rs-bench/criu-stats.jsonl`.
pub fn record(r: &StatsRecord<'_>) {
    let path = out_dir().join("criu-stats.jsonl");
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{}", serde_json::to_string(r).unwrap_or_default());
    }
}

/// The median of some values (0 for none).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Issue #28's workload for pre-copy: `criu-rs-precopy-workload` with
/// `mib` MiB, rewriting 4 pseudo-random pages a millisecond (16 MiB/s), in
/// its own PID namespace on host a.
pub fn writing_workload(
    hosts: &criu_testkit::hosts::TwoHosts,
    out: &Path,
    mib: usize,
) -> Result<Workload, Box<dyn std::error::Error>> {
    let bin = criu_testkit::built_bin(criu_testkit::find_bin(
        "criu-rs-precopy-workload",
        "CRIU_RS_PRECOPY_WORKLOAD_BIN",
    ))?;
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--", "setsid"])
        .arg(bin)
        .arg(out)
        .args(["--interval-us", "1000", "--pages-per-tick", "4"])
        .arg("--memory-mib")
        .arg(mib.to_string())
        // Not the bench's own: under `unshare --mount-proc` (CI's harness)
        // an inherited /dev/null is on a mount of another mount namespace,
        // which CRIU cannot dump ("Can't lookup mount=24 for fd=0").
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Ok(hosts.a.run(|| Workload::start_wrapped(cmd, out, mib))??)
}

/// One migration of a fresh [`writing_workload`] of `mib` MiB from host a
/// to host b with `strategy`; the restored copy must check out word for
/// word. The downtime to compare is the source report's
/// `stopped_to_restored`. With `keep`, each side's images go to a work
/// directory of its own on tmpfs, which keeps them whole until the end;
/// without, to the crate's own directories in memory (the default),
/// where the source frees its pages once sent.
pub fn migrate_writing(
    hosts: &criu_testkit::hosts::TwoHosts,
    strategy: criu::migrate::Strategy,
    mib: usize,
    keep: bool,
) -> Result<criu::migrate::SourceReport, Box<dyn std::error::Error>> {
    use criu::migrate::{DestConfig, SourceConfig};
    const WAIT: Duration = Duration::from_secs(120);
    let dir = tempfile::tempdir_in("/dev/shm")?;
    let mut w = writing_workload(hosts, &dir.path().join("out.log"), mib)?;
    w.wait_for_seq(w.last_seq() + 200, WAIT)?;
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src_dir)?;
    std::fs::create_dir_all(&dst_dir)?;
    let m = hosts.migrate(
        w.pid(),
        || match keep {
            true => SourceConfig::new(strategy).work_dir(&src_dir),
            false => SourceConfig::new(strategy),
        },
        || match keep {
            true => DestConfig::new().work_dir(&dst_dir),
            false => DestConfig::new(),
        },
        None,
    )?;
    let (src, dst) = (m.src?, m.dst?);
    w.reap(WAIT)?;
    w.forget();
    let (_, ok) = w.verify_memory(dst.child.pid(), WAIT)?;
    if !ok {
        return Err(format!("{strategy}: the restored memory is wrong").into());
    }
    Ok(src)
}
