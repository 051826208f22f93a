//! SIGINT to `criu-rs receive` after CRIU restored the tree: at its
//! post-restore or pre-resume action (held there by an action script that
//! CRIU_CONFIG_FILE names), past the point where CRIU would kill the tree
//! itself on a refusal. CRIU answers a refused pre-resume or post-resume
//! notification by logging it and resuming the tree; the receive must
//! still kill and reap its restored copy, and the source resume, so that
//! the application runs once. Each moved workload is the init of its own
//! PID namespace, so its pids are free for the restore while the source
//! still holds them. Needs root.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{bin, clean_start, poll_for, state, Killed};

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
fn poll<T>(f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_for(Duration::from_secs(10), f)
}

/// The source counter: `unshare` (our child) and the counter, the init of
/// the PID namespace it made, both killed on drop.
struct Source {
    _outer: Killed,
    pid: i32,
}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the counter this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

/// A counter appending a line to `dir/out` every 20 ms, holding 8 MiB,
/// as the init of its own PID namespace.
fn counter(dir: &Path) -> Source {
    let script = dir.join("counter.py");
    std::fs::write(&script, COUNTER).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "setsid", "/usr/bin/python3"])
        .arg(&script)
        .arg(dir.join("out"))
        .arg("8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    clean_start(&mut cmd, false);
    let outer = Killed(cmd.spawn().expect("starting the counter"));
    let id = outer.0.id();
    let pid = poll(|| {
        std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
    })
    .expect("unshare's child never appeared");
    let source = Source { _outer: outer, pid };
    assert!(grows(dir), "the counter never counted");
    source
}

fn lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("out"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Whether the counter's output grows within 10 s.
fn grows(dir: &Path) -> bool {
    let at = lines(dir);
    poll(|| (lines(dir) > at).then_some(())).is_some()
}

/// The live (not zombie) processes running this test's counter script:
/// the source copy and any restored one.
fn copies(dir: &Path) -> Vec<i32> {
    let needle = dir.join("counter.py").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.starts_with("/usr/bin/python3")
                && cmd.contains(&needle)
                && !matches!(state(pid), None | Some('Z'))
        })
        .collect()
}

/// When `pid` started (`/proc/PID/stat`'s 22nd field): with the pid, what
/// tells a process from a later one that took its pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// A CRIU config file whose action script, at CRIU's `action`, creates
/// `marker` and then holds CRIU there for 3 s.
fn hold_criu_at(dir: &Path, action: &str) -> (PathBuf, PathBuf) {
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

/// The migration images of `pid` left in /dev/shm.
fn leftovers(pid: i32) -> Vec<PathBuf> {
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

/// The `{"error": ...}` row a failed command wrote with `--json`.
fn error_row(text: &str) -> Value {
    let row: Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not a JSON row ({e}): {text:?}"));
    row["error"].clone()
}

/// Moves a counter (stop-and-copy) to a `receive` whose CRIU holds the
/// restore at `action`, SIGINTs the receive there, and checks that the
/// restored copy that existed then is gone (not even a zombie), that
/// the source runs on, once, that nothing is left in /dev/shm, and what
/// both commands said.
fn sigint_to_receive_after_criu_restored(action: &str) {
    let what = format!("SIGINT to receive at CRIU's {action}");
    let dir = tempfile::tempdir().unwrap();
    let counter = counter(dir.path());
    let source = counter.pid;
    let (conf, marker) = hold_criu_at(dir.path(), action);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let recv_json = dir.path().join("recv.json");
    let mut recv = Command::new(bin())
        .env("CRIU_CONFIG_FILE", &conf)
        .args(["receive", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--once", "--plain", "--json"])
        .arg(&recv_json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(recv.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.contains("waiting for a source"), "receive: {first:?}");
    let recv_err = std::thread::spawn(move || {
        let _ = err.read_to_string(&mut first);
        first
    });
    let recv = Killed(recv);
    let send = Command::new(bin())
        .args(["send", "--pid", &source.to_string(), "--plain"])
        .args(["--json", "-", "--to", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = poll(|| marker.exists().then_some(()));
    // The restored copy, which CRIU has created by now.
    let restored: Vec<(i32, Option<u64>)> = copies(dir.path())
        .into_iter()
        .filter(|&p| p != source)
        .map(|p| (p, start_time(p)))
        .collect();
    // SAFETY: kill(2) of the receive this test started.
    unsafe { libc::kill(recv.0.id() as i32, libc::SIGINT) };
    let out = send.wait_with_output().unwrap();
    let mut recv = recv;
    let recv_code = recv.0.wait().unwrap().code();
    let recv_err = recv_err.join().unwrap();
    let send_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        held.is_some(),
        "{what}: CRIU never got there: {send_err}\nreceive: {recv_err}"
    );
    assert_eq!(
        restored.len(),
        1,
        "{what}: not one restored copy at {action}: {restored:?}"
    );
    let (copy, start) = restored[0];
    let left = poll(|| (start_time(copy) != start).then_some(())).is_none();
    if left {
        // SAFETY: kill(2) of the copy of this test's counter found left.
        unsafe { libc::kill(copy, libc::SIGKILL) };
        panic!(
            "{what}: the restored copy {copy} is left ({:?})\nsend: {send_err}\nreceive: {recv_err}",
            state(copy)
        );
    }
    let running = poll(|| (state(source) != Some('T')).then_some(()));
    assert!(running.is_some(), "{what}: the source stays stopped");
    assert!(grows(dir.path()), "{what}: the source does not count on");
    assert_eq!(
        copies(dir.path()),
        vec![source],
        "{what}: not exactly one copy"
    );
    assert!(
        leftovers(source).is_empty(),
        "{what}: images left in /dev/shm"
    );
    let row = error_row(&std::fs::read_to_string(&recv_json).unwrap_or_default());
    assert_eq!(recv_code, Some(5), "{what}: receive: {recv_err}");
    assert_eq!(row["cancelled"], true, "{row}");
    assert_eq!(row["step"], "restore", "{row}");
    assert_ne!(out.status.code(), Some(0), "{what}: send: {send_err}");
    let send_row = error_row(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(send_row["source_state"], "resumed", "{send_row}");
}

#[test]
fn sigint_to_receive_at_post_restore_kills_the_copy_and_resumes_the_source() {
    sigint_to_receive_after_criu_restored("post-restore");
}

#[test]
fn sigint_to_receive_at_pre_resume_kills_the_copy_and_resumes_the_source() {
    sigint_to_receive_after_criu_restored("pre-resume");
}
