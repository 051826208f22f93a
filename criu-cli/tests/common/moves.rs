//! What the tests of `send` and `receive` share (tests/migrate.rs,
//! tests/restore_interrupt.rs): the counter they move, a listening
//! `receive`, CRIU held at an action, and the checks that an interrupted
//! move left the application running once and nothing behind.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::{bin, poll_for, state};

const COUNTER: &str = r#"
import sys, time
buf = bytearray(b"x" * (int(sys.argv[2]) << 20))
n = 0
while True:
    n += 1
    with open(sys.argv[1], "a") as f: f.write("%d\n" % n)
    time.sleep(0.02)
"#;

/// Retries `f` every 20 ms for up to 10 s.
pub fn poll<T>(f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_for(Duration::from_secs(10), f)
}

/// A counter that appends a line to `out` every 20 ms, holding some MiB.
/// Killed (by pid) and reaped on drop.
pub struct Counter {
    pub child: Child,
    /// The tree's root (the counter itself, or its PID-namespace init).
    pub pid: i32,
    pub out: PathBuf,
}

/// Starts a counter in `dir` holding `mib` MiB, as the init of its own
/// PID namespace if `own_pid_ns`; returns once it counts.
pub fn counter(dir: &Path, mib: u32, own_pid_ns: bool) -> Counter {
    let script = dir.join("counter.py");
    std::fs::write(&script, COUNTER).unwrap();
    let out = dir.join("out");
    let mut cmd = if own_pid_ns {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "setsid", "/usr/bin/python3"]);
        c
    } else {
        Command::new("/usr/bin/python3")
    };
    // Its own working directory: CRIU's parasite makes a `proc.crtools`
    // directory in the dumped task's (for a task whose /proc is not its
    // PID namespace's), and two dumps in one directory at once collide.
    cmd.arg(&script)
        .arg(&out)
        .arg(mib.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    super::clean_start(&mut cmd, !own_pid_ns);
    let child = cmd.spawn().expect("starting the counter");
    let outer = child.id() as i32;
    let pid = if own_pid_ns {
        poll(|| {
            std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
        })
        .expect("unshare's child never appeared")
    } else {
        outer
    };
    let c = Counter { child, pid, out };
    // Filling a GiB takes a while on a loaded machine: up to a minute
    // for the first line, then it counts on as usual.
    let started = super::holds_within(Duration::from_secs(60), || c.lines() > 0);
    assert!(started && c.grows(), "the counter never counted");
    c
}

impl Counter {
    pub fn lines(&self) -> usize {
        std::fs::read_to_string(&self.out)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Whether the output grows within 10 s.
    pub fn grows(&self) -> bool {
        let at = self.lines();
        poll(|| (self.lines() > at).then_some(())).is_some()
    }

    pub fn state(&self) -> Option<char> {
        state(self.pid)
    }

    /// The values written, in order.
    pub fn values(&self) -> Vec<u64> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the pid this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live processes running the counter script of `dir`: the source copy
/// and any restored one.
pub fn copies(dir: &Path) -> Vec<i32> {
    criu_testkit::aftermath::copies(Path::new("/usr/bin/python3"), &dir.join("counter.py"))
}

/// A TCP port free on 127.0.0.1 (for a `receive --listen`).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `receive`, once it listens; its stderr is collected. Killed
/// (by pid) on drop if still running.
pub struct Receiver {
    pub child: Child,
    stderr: Option<JoinHandle<String>>,
}

/// Starts `receive --listen 127.0.0.1:port --once` with `extra`.
pub fn receive(port: u16, extra: &[&str]) -> Receiver {
    receive_with(port, extra, None)
}

/// As [`receive`], with CRIU_CONFIG_FILE set to `criu_config` in its
/// environment: a config file CRIU reads besides the one the core writes
/// for the restore (where `--criu-config` is refused).
pub fn receive_with(port: u16, extra: &[&str], criu_config: Option<&Path>) -> Receiver {
    let mut cmd = Command::new(bin());
    if let Some(conf) = criu_config {
        cmd.env("CRIU_CONFIG_FILE", conf);
    }
    let mut child = cmd
        .args([
            "receive",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--once",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(
        first.contains("waiting for a source"),
        "receive said {first:?}"
    );
    Receiver {
        child,
        stderr: Some(std::thread::spawn(move || rest(first, err))),
    }
}

fn rest(mut text: String, mut err: BufReader<ChildStderr>) -> String {
    let _ = err.read_to_string(&mut text);
    text
}

impl Receiver {
    /// Waits for it to exit: its exit code and everything it said.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        let said = self.stderr.take().map(|t| t.join().unwrap());
        (status.code(), said.unwrap_or_default())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The migration's images of `pid` left in /dev/shm, if any.
pub fn leftovers(pid: i32) -> Vec<PathBuf> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|d| {
            d.file_name()
                .to_string_lossy()
                .starts_with("criu-rs-migrate-")
        })
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|sub| sub.path().join(format!("core-{pid}.img")))
        .filter(|core| core.exists())
        .collect()
}

/// A CRIU config file whose action script, at CRIU's `action`, creates
/// `marker` and then holds CRIU there for 3 s: a window in which a test
/// signals a command that is, for sure, in that phase.
pub fn hold_criu_at(dir: &Path, action: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let marker = dir.join(format!("at-{action}"));
    let script = dir.join(format!("hold-{action}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = {action} ] || exit 0\ntouch {}\nsleep 3\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.join(format!("hold-{action}.conf"));
    std::fs::write(&conf, format!("action-script {}\n", script.display())).unwrap();
    (conf, marker)
}

/// The `{"error": ...}` row a failed command wrote with `--json`.
pub fn error_row(text: &str) -> Value {
    let row: Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not a JSON row ({e}): {text:?}"));
    row["error"].clone()
}

/// What a command SIGINT cancelled says: exit 5, and its `--json` error
/// row (`row`) names the signal and the cancellation. `said` is its
/// stderr, for the message.
pub fn assert_cancelled_by_sigint(code: Option<i32>, row: &Value, said: &str) {
    assert_eq!(code, Some(5), "{said}");
    assert_eq!(row["exit"], 5, "{row}");
    assert_eq!(row["signal"], "SIGINT", "{row}");
    assert_eq!(row["cancelled"], true, "{row}");
}

/// What must hold after any move interrupted before its end: the source
/// counter of `dir` runs on, as the one copy, and nothing of the move is
/// left in /dev/shm.
pub fn runs_once(c: &Counter, dir: &Path, what: &str) {
    let running = poll(|| (c.state() != Some('T')).then_some(()));
    assert!(running.is_some(), "{what}: the source stays stopped");
    assert!(c.grows(), "{what}: the source does not count on");
    assert_eq!(copies(dir), [c.pid], "{what}: not exactly one copy runs");
    assert!(
        leftovers(c.pid).is_empty(),
        "{what}: images left in /dev/shm"
    );
}
