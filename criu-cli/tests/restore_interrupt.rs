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

use std::process::{Command, Stdio};

use criu_testkit::aftermath::start_time;

use common::bin;
use common::moves::{
    assert_cancelled_by_sigint, copies, counter, error_row, free_port, hold_criu_at, poll,
    receive_with, runs_once,
};

/// Moves a counter (stop-and-copy) to a `receive` whose CRIU holds the
/// restore at `action`, SIGINTs the receive there, and checks that the
/// restored copy that existed then is gone (not even a zombie), that
/// the source runs on, once, that nothing is left in /dev/shm, and what
/// both commands said.
fn sigint_to_receive_after_criu_restored(action: &str) {
    let what = format!("SIGINT to receive at CRIU's {action}");
    let dir = tempfile::tempdir().unwrap();
    let counter = counter(dir.path(), 8, true);
    let source = counter.pid;
    let (conf, marker) = hold_criu_at(dir.path(), action);
    let port = free_port();
    let recv_json = dir.path().join("recv.json");
    let recv = receive_with(
        port,
        &["--plain", "--json", recv_json.to_str().unwrap()],
        Some(&conf),
    );
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
    unsafe { libc::kill(recv.child.id() as i32, libc::SIGINT) };
    let out = send.wait_with_output().unwrap();
    let (recv_code, recv_err) = recv.finish();
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
            common::state(copy)
        );
    }
    runs_once(&counter, dir.path(), &what);
    let row = error_row(&std::fs::read_to_string(&recv_json).unwrap_or_default());
    assert_cancelled_by_sigint(recv_code, &row, &recv_err);
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
