//! The CRIU flags `dump` and `restore` share take effect: each test dumps
//! a real process with and without one and sees the difference (CRIU's
//! refusal and the hint naming the flag, a tree left running or not, a
//! longer log, a deadline that fires, what CRIU's debug log says it did:
//! the network lock it used, the cgroup properties it saved). Covered:
//! --tcp-established, --file-locks, --leave-running, --log-level,
//! --criu-config, --deadline, --network-lock, --ext-unix-sk, --external,
//! --shell-job, --manage-cgroups, --tcp-close, --link-remap. Needs root.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, scopeguard};

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

/// The debug log of a dump into `dir` (`dump.log`).
fn dump_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default()
}

#[test]
fn network_lock_chooses_how_criu_locks_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), TCP);
    let base = [
        "--leave-running",
        "--tcp-established",
        "--log-level",
        "debug",
    ];
    let with = |name: &str, method: &str| {
        let images = dir.path().join(name);
        let out = dump(
            &w,
            &images,
            &[&base[..], &["--network-lock", method]].concat(),
        );
        (out, dump_log(&images))
    };
    let (ipt, ipt_log) = with("iptables", "iptables");
    assert!(ipt.status.success(), "{}", stderr(&ipt));
    assert!(ipt_log.contains("Running iptables"), "iptables: {ipt_log}");
    let (skip, skip_log) = with("skip", "skip");
    assert!(skip.status.success(), "{}", stderr(&skip));
    assert!(
        !skip_log.contains("Running iptables") && !skip_log.contains("Running nftables"),
        "skip still locked: {skip_log}"
    );
    // nftables: CRIU locks through libnftables (or says it was built
    // without it); either way not with iptables.
    let (_, nft_log) = with("nftables", "nftables");
    assert!(nft_log.contains("nftables"), "nftables: {nft_log}");
    assert!(!nft_log.contains("Running iptables"), "nftables: {nft_log}");
    assert!(w.runs());
}

/// A dgram socket connected to `READY.sock` (bound by the test, outside
/// the tree); writes its own inode to READY.
const UNIX_PEER: &str = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(sys.argv[1] + ".sock")
ino = os.fstat(s.fileno()).st_ino
with open(sys.argv[1] + ".tmp", "w") as f: f.write(str(ino))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True: time.sleep(1)
"#;

#[test]
fn ext_unix_sk_and_external_unix_let_a_socket_to_outside_be_dumped() {
    let dir = tempfile::tempdir().unwrap();
    let _peer = std::os::unix::net::UnixDatagram::bind(dir.path().join("ready.sock")).unwrap();
    let w = Workload::start(dir.path(), UNIX_PEER);
    let ino = std::fs::read_to_string(dir.path().join("ready")).unwrap();
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--ext-unix-sk"),
        "{}",
        stderr(&refused)
    );
    let ext = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--ext-unix-sk"],
    );
    assert!(ext.status.success(), "--ext-unix-sk: {}", stderr(&ext));
    // --external unix[INODE]: this one socket only.
    let spec = format!("unix[{}]", ino.trim());
    let one = dump(
        &w,
        &dir.path().join("c"),
        &["--leave-running", "--external", &spec],
    );
    assert!(one.status.success(), "--external {spec}: {}", stderr(&one));
    let other = dump(
        &w,
        &dir.path().join("d"),
        &["--leave-running", "--external", "unix[1]"],
    );
    assert_eq!(other.status.code(), Some(3), "{}", stderr(&other));
    assert!(w.runs());
}

/// Writes its pid to READY; started under a shell that is its session
/// leader (`shell_job_workload`), like a job of an interactive shell.
const OWN_PID: &str = r#"
import os, sys, time
with open(sys.argv[1] + ".tmp", "w") as f: f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True: time.sleep(1)
"#;

#[test]
fn shell_job_dumps_a_tree_whose_session_leader_is_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let py = dir.path().join("w.py");
    std::fs::write(&py, OWN_PID).unwrap();
    let ready = dir.path().join("ready");
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "/usr/bin/python3 \"$0\" \"$1\" & wait"])
        .arg(&py)
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    common::clean_start(&mut cmd, true);
    let shell = common::Killed(cmd.spawn().unwrap());
    assert!(
        common::holds_within(Duration::from_secs(10), || ready.exists()),
        "the job never started"
    );
    let pid = std::fs::read_to_string(&ready).unwrap();
    let pid: i32 = pid.trim().parse().unwrap();
    // SAFETY: kill(2) of the job this test started (its shell is reaped
    // by `shell`).
    let _job = scopeguard(move || unsafe {
        libc::kill(pid, libc::SIGKILL);
    });
    let dump_job = |name: &str, flags: &[&str]| {
        Command::new(bin())
            .args(["dump", "--pid", &pid.to_string(), "--leave-running"])
            .arg("--images-dir")
            .arg(dir.path().join(name))
            .args(flags)
            .output()
            .unwrap()
    };
    let refused = dump_job("a", &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("shell-job"),
        "{}",
        stderr(&refused)
    );
    let ok = dump_job("b", &["--shell-job"]);
    assert!(ok.status.success(), "--shell-job: {}", stderr(&ok));
    assert_eq!(common::state(pid).map(|s| s == 'T'), Some(false));
    drop(shell);
}

/// A cgroup of the v1 `cpu` hierarchy of this test's own, removed on drop
/// (once its tasks are gone).
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new() -> Cgroup {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = Path::new("/sys/fs/cgroup/cpu")
            .join(format!("criu-cli-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).expect("making a cpu cgroup (cgroup v1, as set up here)");
        Cgroup(dir)
    }

    fn add(&self, pid: &str) {
        std::fs::write(self.0.join("cgroup.procs"), pid).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn manage_cgroups_decides_whether_criu_dumps_cgroup_properties() {
    // A tree in a cgroup of its own (in CRIU's cgroups there is nothing to
    // dump): CRIU's log has a "Dumping value" line per property it saves,
    // with `full`, and none with `ignore`.
    let cg = Cgroup::new();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), IDLE);
    cg.add(&w.pid());
    let props = |mode: &str| {
        let images = dir.path().join(mode);
        let out = dump(
            &w,
            &images,
            &[
                "--leave-running",
                "--log-level",
                "debug",
                "--manage-cgroups",
                mode,
            ],
        );
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        dump_log(&images).matches("Dumping value").count()
    };
    let full = props("full");
    let ignore = props("ignore");
    assert!(full > 0, "--manage-cgroups full dumped no cgroup property");
    assert_eq!(
        ignore, 0,
        "--manage-cgroups ignore dumped cgroup properties"
    );
    assert!(w.runs());
    drop(w);
    drop(cg);
}

#[test]
fn tcp_close_dumps_a_connection_without_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), TCP);
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let closed = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--tcp-close"],
    );
    assert!(closed.status.success(), "--tcp-close: {}", stderr(&closed));
    assert!(w.runs());
}

/// Holds open a file whose name is gone while another link to it stays
/// (so CRIU cannot ghost-copy it: it must link-remap it).
const LINKED_AWAY: &str = r#"
import os, sys, time
a, b = sys.argv[1] + ".a", sys.argv[1] + ".b"
f = open(a, "w"); f.write("x")
f.flush()
os.link(a, b); os.unlink(a)
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

#[test]
fn link_remap_is_needed_for_a_file_open_under_a_removed_name() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), LINKED_AWAY);
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("link-remap"),
        "{}",
        stderr(&refused)
    );
    let ok = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--link-remap"],
    );
    assert!(ok.status.success(), "--link-remap: {}", stderr(&ok));
    assert!(w.runs());
}
