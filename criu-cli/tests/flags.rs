//! The CRIU flags `dump` and `restore` share take effect: each test dumps
//! a real process with and without one and sees the difference (CRIU's
//! refusal and the hint naming the flag, a tree left running or not, a
//! longer log, a deadline that fires). Needs root.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_criu-rs")
}

/// A Python workload, session leader, killed and reaped by pid on drop.
struct Workload(Child);

impl Workload {
    fn start(dir: &Path, script: &str) -> Workload {
        let py = dir.join("w.py");
        std::fs::write(&py, script).unwrap();
        let ready = dir.join("ready");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&py)
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        common::clean_start(&mut cmd, true);
        let w = Workload(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the workload never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// Running (not stopped, not a zombie, not gone).
    fn runs(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()));
        stat.ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with(['S', 'R'])))
            .unwrap_or(false)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dump(w: &Workload, dir: &Path, flags: &[&str]) -> Output {
    Command::new(bin())
        .args(["dump", "--pid", &w.pid(), "--images-dir"])
        .arg(dir)
        .args(flags)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const TCP: &str = r#"
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

const LOCK: &str = r#"
import fcntl, sys, time
f = open(sys.argv[1] + ".lock", "w"); fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

const IDLE: &str = r#"
import sys, time
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

#[test]
fn tcp_established_is_needed_to_dump_a_connection_and_the_hint_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), TCP);
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(stderr(&refused)
        .contains("hint: the tree has established TCP connections: add --tcp-established"));
    assert!(w.runs(), "a refused dump left the tree stopped");
    let ok = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--tcp-established"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(w.runs());
}

#[test]
fn file_locks_is_needed_to_dump_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), LOCK);
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--file-locks"),
        "{}",
        stderr(&refused)
    );
    let ok = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--file-locks"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn leave_running_keeps_the_tree_and_its_absence_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), IDLE);
    let kept = dump(&w, &dir.path().join("a"), &["--leave-running", "--json"]);
    assert!(kept.status.success(), "{}", stderr(&kept));
    assert!(w.runs(), "--leave-running stopped the tree");
    let gone = dump(&w, &dir.path().join("b"), &[]);
    assert!(gone.status.success(), "{}", stderr(&gone));
    assert!(
        !w.runs(),
        "the tree runs on after a dump without --leave-running"
    );
    // --leave-running means nothing to restore: refused with a hint.
    let r = Command::new(bin())
        .args(["restore", "--images-dir"])
        .arg(dir.path().join("b"))
        .arg("--leave-running")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr(&r).contains("--leave-running applies to dump"));
}

#[test]
fn log_level_and_a_criu_config_file_reach_criu() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), TCP);
    // The config file carries what the flags do not: tcp-established here,
    // which the dump of a connection needs.
    let config = dir.path().join("criu.conf");
    std::fs::write(&config, "tcp-established\n").unwrap();
    let quiet = dump(
        &w,
        &dir.path().join("a"),
        &["--leave-running", "--criu-config", config.to_str().unwrap()],
    );
    assert!(
        quiet.status.success(),
        "the config file's tcp-established did not apply: {}",
        stderr(&quiet)
    );
    let loud = dump(
        &w,
        &dir.path().join("b"),
        &[
            "--leave-running",
            "--tcp-established",
            "--log-level",
            "debug",
        ],
    );
    assert!(loud.status.success(), "{}", stderr(&loud));
    let lines = |d: &str| {
        std::fs::read_to_string(dir.path().join(d).join("dump.log"))
            .unwrap()
            .lines()
            .count()
    };
    assert!(
        lines("b") > 10 * lines("a").max(1),
        "debug log {} lines, default {}",
        lines("b"),
        lines("a")
    );
    let missing = dump(
        &w,
        &dir.path().join("c"),
        &["--criu-config", "/nonexistent/criu.conf"],
    );
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn a_deadline_that_passes_fails_the_dump_and_leaves_the_tree_running() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), IDLE);
    let late = dump(&w, &dir.path().join("a"), &["--deadline", "1ms"]);
    assert_eq!(late.status.code(), Some(3), "{}", stderr(&late));
    assert!(stderr(&late).contains("deadline"), "{}", stderr(&late));
    assert!(
        stderr(&late).contains("hint: raise --deadline"),
        "{}",
        stderr(&late)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.runs() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(w.runs(), "the interrupted dump left the tree stopped");
}
