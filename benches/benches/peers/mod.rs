//! The four ways to dump and restore that the benchmarks compare:
//! criu-rs, raw criu-sys calls, the `criu` command line and rust-criu.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criu::{Criu, ImagesDir, Options};

/// One dump implementation: dumps `pid` into `dir` (killing it).
pub type DumpFn = fn(i32, &Path);
/// One restore implementation: restores from `dir`, returns the root pid
/// (our child or an orphan we reap).
pub type RestoreFn = fn(&Path) -> i32;

/// criu-rs's own time per dump and per restore of the `criu-rs` peer, in
/// µs: the whole call (opening the images directory included, as the
/// other peers' times include theirs) minus the libcriu call's wall time
/// from its report.
pub static OWN_US: Mutex<(Vec<f64>, Vec<f64>)> = Mutex::new((Vec::new(), Vec::new()));

fn own_us(total: Duration, libcriu: Duration) -> f64 {
    total.saturating_sub(libcriu).as_secs_f64() * 1e6
}

pub fn dump_criu_rs(pid: i32, dir: &Path) {
    let t = Instant::now();
    let report = dump_with(&Criu::new(), pid, dir);
    let own = own_us(t.elapsed(), report.wall_time);
    OWN_US.lock().unwrap().0.push(own);
}

/// A criu-rs dump through `criu`, however it reaches CRIU.
pub fn dump_with(criu: &Criu, pid: i32, dir: &Path) -> criu::DumpReport {
    criu_rs_benches::dump(criu, pid, &ImagesDir::open(dir).unwrap(), false)
}

pub fn dump_raw_sys(pid: i32, dir: &Path) {
    let d = std::fs::File::open(dir).unwrap();
    let log = CString::new("dump.log").unwrap();
    let mut o: *mut criu_sys::criu_opts = std::ptr::null_mut();
    // SAFETY: the documented libcriu sequence on a handle that starts NULL.
    let rc = unsafe {
        criu_sys::criu_local_init_opts(&mut o);
        criu_sys::criu_local_set_pid(o, pid);
        criu_sys::criu_local_set_images_dir_fd(o, d.as_raw_fd());
        criu_sys::criu_local_set_log_file(o, log.as_ptr());
        let rc = criu_sys::criu_local_dump(o);
        criu_sys::criu_local_free_opts(o);
        rc
    };
    assert_eq!(rc, 0, "raw criu-sys dump");
}

pub fn dump_cli(pid: i32, dir: &Path) {
    let ok = Command::new("criu")
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dir)
        .args(["-o", "dump.log"])
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "criu dump");
}

pub fn dump_rust_criu(pid: i32, dir: &Path) {
    let d = std::fs::File::open(dir).unwrap();
    let mut c = rust_criu::Criu::new().expect("rust-criu");
    c.set_pid(pid);
    c.set_images_dir_fd(d.as_raw_fd());
    c.set_log_file("dump.log".into());
    c.dump().expect("rust-criu dump");
}

pub fn restore_criu_rs(dir: &Path) -> i32 {
    let t = Instant::now();
    let images = ImagesDir::open(dir).unwrap();
    let (child, report) = Criu::new()
        .restore_child(Options::new().images_dir(&images).log_file("restore.log"))
        .expect("criu-rs restore");
    let own = own_us(t.elapsed(), report.wall_time);
    OWN_US.lock().unwrap().1.push(own);
    child.detach()
}

pub fn restore_raw_sys(dir: &Path) -> i32 {
    let d = std::fs::File::open(dir).unwrap();
    let log = CString::new("restore.log").unwrap();
    let mut o: *mut criu_sys::criu_opts = std::ptr::null_mut();
    // SAFETY: as in dump_raw_sys.
    let pid = unsafe {
        criu_sys::criu_local_init_opts(&mut o);
        criu_sys::criu_local_set_images_dir_fd(o, d.as_raw_fd());
        criu_sys::criu_local_set_log_file(o, log.as_ptr());
        let pid = criu_sys::criu_local_restore_child(o);
        criu_sys::criu_local_free_opts(o);
        pid
    };
    assert!(pid > 0, "raw criu-sys restore");
    pid
}

pub fn restore_cli(dir: &Path) -> i32 {
    let pidfile = dir.join("restored.pid");
    let _ = std::fs::remove_file(&pidfile);
    let ok = Command::new("criu")
        .args(["restore", "-d", "-D"])
        .arg(dir)
        .args(["-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "criu restore");
    std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub fn restore_rust_criu(dir: &Path) -> i32 {
    let d = std::fs::File::open(dir).unwrap();
    let mut c = rust_criu::Criu::new().expect("rust-criu");
    c.set_images_dir_fd(d.as_raw_fd());
    c.set_log_file("restore.log".into());
    // rust-criu does not return the pid; the root keeps its dumped pid.
    c.set_rst_sibling(true);
    c.restore().expect("rust-criu restore");
    ImagesDir::open(dir).unwrap().root_pid().unwrap()
}
