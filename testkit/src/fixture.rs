//! What many integration tests set up the same way: the counting workload
//! in a test's directory, a plain dump of it, and a `criu` that records
//! its starts. For tests: these panic, with the step named, when the
//! set-up fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu::{Criu, ImagesDir, Options};

use crate::hosts::Host;
use crate::{existing_workload_bin, Workload};

/// The workload's interval between two counter lines.
pub const TICK: Duration = Duration::from_millis(1);

/// How long a fixture waits for the workload to be reaped.
const WAIT: Duration = Duration::from_secs(30);

fn bin() -> PathBuf {
    existing_workload_bin().expect("the workload binary")
}

/// The counting workload (with `mib` MiB of patterned memory), our child,
/// writing its counter to `dir/out.log`.
pub fn counter(dir: &Path, mib: usize) -> Workload {
    Workload::spawn(&bin(), &dir.join("out.log"), TICK, mib).expect("the workload starts")
}

/// The counting workload as the init of its own PID namespace on `host`,
/// writing to `out`: on one machine two hosts share pid numbers, and a
/// migrated source copy keeps its pids until the destination restored.
pub fn counter_on(host: &Host, out: &Path, mib: usize) -> Workload {
    host.run(|| Workload::spawn_in_pid_ns(&bin(), out, TICK, mib))
        .expect("entering the host")
        .expect("the workload starts")
}

/// A counter (with `mib` MiB of patterned memory) dumped into `dir/img`
/// (logging to `dump.log` there) and reaped, ready to be restored.
pub fn dumped(dir: &Path, mib: usize) -> (Workload, ImagesDir) {
    let mut w = counter(dir, mib);
    let images = ImagesDir::create(dir.join("img")).expect("the images directory");
    Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .log_file("dump.log"),
        )
        .expect("the dump");
    w.reap(WAIT).expect("reaping the dumped workload");
    (w, images)
}

/// A `criu` in `dir` that appends its arguments to `log` at each start,
/// then runs the real one: what a test gives `Criu::with_binary` to see
/// which `criu` an operation started, and how.
pub fn recording_criu(dir: &Path, log: &Path) -> PathBuf {
    let path = dir.join("recording-criu");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nexec criu \"$@\"\n",
        log.display()
    );
    std::fs::write(&path, script).expect("writing the recording criu");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("making the recording criu executable");
    path
}

/// `root/src` and `root/dst`, created: the two sides' directories of a
/// migration test.
pub fn migration_dirs(root: &Path) -> (PathBuf, PathBuf) {
    let (src, dst) = (root.join("src"), root.join("dst"));
    std::fs::create_dir_all(&src).expect("creating src");
    std::fs::create_dir_all(&dst).expect("creating dst");
    (src, dst)
}
