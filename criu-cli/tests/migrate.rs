//! `criu-rs send` and `receive` on this machine: a real process moved with
//! every strategy (plain and over mutual TLS), a peer with a certificate
//! of another CA refused before the source stops, and SIGINT, SIGTERM and
//! SIGHUP that resume the source (send) or end the wait (receive), at
//! every phase: pre-flight, pre-copy's passes, CRIU's dump, the transfer
//! (stop-and-copy's, and page-server's pages), the address hook, CRIU's
//! restore (held by an action script named by CRIU_CONFIG_FILE), lazy
//! serving and the final confirmation (reached through the address
//! hook's `announce`), each leaving the application running once. Each
//! moved workload is the init of its own PID namespace, so its pids are
//! free for the restore while the source still holds them. Needs root.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::moves::{
    assert_cancelled_by_sigint, copies, counter, error_row, free_port, hold_criu_at, leftovers,
    poll, receive, receive_with, runs_once, Counter, Receiver,
};
use common::{bin, state};

/// Moves a counter with `security` flags; checks it counts on there and
/// that the source is gone.
fn move_counter(strategy: &str, send_security: &[&str], recv_security: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 8, true);
    let port = free_port();
    let json = dir.path().join("recv.json");
    let mut recv_args = vec!["--detach", "--json", json.to_str().unwrap()];
    recv_args.extend_from_slice(recv_security);
    let r = receive(port, &recv_args);
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--strategy", strategy])
        .args(["--to", &format!("127.0.0.1:{port}"), "--json", "-"])
        .args(send_security)
        .output()
        .unwrap();
    let (code, recv_err) = r.finish();
    assert!(
        send.status.success(),
        "{strategy}: send failed: {}\nreceive: {recv_err}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert_eq!(code, Some(0), "{strategy}: receive: {recv_err}");
    let stdout = String::from_utf8_lossy(&send.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let received: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // The documented rows (`send --help`, `receive --help`): these keys.
    for key in [
        "strategy",
        "pid",
        "restored_pid",
        "transfer",
        "phases",
        "link",
        "to",
    ] {
        assert!(
            report.get(key).is_some(),
            "send --json lacks {key:?}: {report}"
        );
    }
    let keys: Vec<&str> = received
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "restored_pid",
            "strategy",
            "restore",
            "transfer",
            "source_confirmed",
            "link",
            "peer"
        ]
    );
    let restored = received["restored_pid"].as_i64().unwrap() as i32;
    assert_eq!(report["restored_pid"].as_i64(), Some(i64::from(restored)));
    assert_eq!(report["strategy"], strategy);
    // The restored copy counts on; the source copy is gone.
    let at = c.lines();
    let grew = poll(|| (c.lines() > at).then_some(()));
    // SAFETY: kill(2) of the pid this test's receive restored.
    let cleanup = || unsafe { libc::kill(restored, libc::SIGKILL) };
    if grew.is_none() {
        cleanup();
        panic!("{strategy}: the restored counter does not count");
    }
    let gone = poll(|| (state(c.pid).is_none() || state(c.pid) == Some('Z')).then_some(()));
    cleanup();
    assert!(gone.is_some(), "{strategy}: the source copy still runs");
    assert!(
        leftovers(c.pid).is_empty(),
        "{strategy}: images left in /dev/shm"
    );
}

#[test]
fn every_strategy_moves_a_process_in_plain_tcp() {
    for strategy in common::strategies("migrate::every_strategy_moves_a_process_in_plain_tcp") {
        move_counter(strategy, &["--plain"], &["--plain"]);
    }
}

/// A CA and a certificate for hosts `a` and `b`, made with openssl.
fn pki(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir(&d).unwrap();
    let sh = format!(
        r#"set -e
cd {d}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
  -subj /CN={name}-ca -days 2 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
for h in a b; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $h-key.pem -out $h.csr -subj /CN=$h 2>/dev/null
  printf 'subjectAltName=DNS:%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' $h > $h.ext
  openssl x509 -req -in $h.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $h.pem -days 2 -extfile $h.ext 2>/dev/null
done"#,
        d = d.display()
    );
    let out = Command::new("sh").arg("-c").arg(sh).output().unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn tls_args(pki: &Path, host: &str) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        pki.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        pki.join(format!("{host}.pem")).display().to_string(),
        "--tls-key".into(),
        pki.join(format!("{host}-key.pem")).display().to_string(),
    ]
}

#[test]
fn mutual_tls_moves_a_process_and_refuses_another_ca_before_stopping_it() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(dir.path(), "ours");
    let theirs = pki(dir.path(), "theirs");
    let a = tls_args(&ours, "a");
    let b = tls_args(&ours, "b");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    move_counter("stop-and-copy", &a, &b);

    // A source whose certificate another CA signed: refused, exit 4, and
    // its process never stopped.
    let c = counter(dir.path(), 8, false);
    let port = free_port();
    let r = receive(port, &b);
    let intruder = tls_args(&theirs, "a");
    let send = Command::new(bin())
        .args([
            "send",
            "--pid",
            &c.pid.to_string(),
            "--to",
            &format!("127.0.0.1:{port}"),
        ])
        .args(&intruder)
        .output()
        .unwrap();
    let (code, recv_err) = r.finish();
    assert_eq!(
        send.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(String::from_utf8_lossy(&send.stderr).contains("hint:"));
    assert_ne!(code, Some(0), "receive accepted a stranger: {recv_err}");
    assert!(recv_err.contains("refused"), "{recv_err}");
    assert_ne!(c.state(), Some('T'));
    assert!(c.grows(), "the refused source does not run");
}

#[test]
fn a_signal_during_send_resumes_the_source() {
    for (signal, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // Enough memory that the images cannot all sit in socket buffers.
        let c = counter(dir.path(), 96, false);
        // A destination that accepts and never reads: the send stalls
        // with the source stopped.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        // The silent destination gives no pre-flight answer either.
        let mut send = Command::new(bin())
            .args([
                "send",
                "--pid",
                &c.pid.to_string(),
                "--plain",
                "--no-preflight",
            ])
            .args(["--to", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stopped = poll(|| (c.state() == Some('T')).then_some(()));
        // SAFETY: kill(2) of the send this test started.
        unsafe { libc::kill(send.id() as i32, signal) };
        let mut err = String::new();
        send.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = send.wait().unwrap();
        drop(hold.join());
        assert!(stopped.is_some(), "{name}: the source never stopped: {err}");
        assert_eq!(status.code(), Some(5), "{name}: {err}");
        assert!(err.contains(name) && err.contains("resumed"), "{err}");
        runs_once(&c, dir.path(), name);
    }
}

#[test]
fn a_tree_whose_pids_are_taken_there_is_refused_before_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    // Not in a PID namespace of its own: on this one machine its pids are
    // taken at the destination (by itself).
    let c = counter(dir.path(), 8, false);
    let port = free_port();
    let r = receive(port, &["--plain"]);
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (w, pid) = (watching.clone(), c.pid);
    // Samples the source's state every millisecond: a dump stops it for
    // tens of ms, which this cannot miss.
    let sampler = std::thread::spawn(move || {
        let mut stopped = false;
        while w.load(std::sync::atomic::Ordering::SeqCst) {
            stopped |= state(pid) == Some('T');
            std::thread::sleep(Duration::from_millis(1));
        }
        stopped
    });
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--to", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let ever_stopped = sampler.join().unwrap();
    let (code, recv_err) = r.finish();
    let err = String::from_utf8_lossy(&send.stderr);
    assert_eq!(send.status.code(), Some(7), "{err}");
    assert!(
        err.contains(&format!("pid(s) {}", c.pid)) && err.contains("are taken here"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("unshare --pid"),
        "{err}"
    );
    assert_eq!(code, Some(7), "{recv_err}");
    assert!(
        !ever_stopped,
        "the source was stopped although the destination refused"
    );
    assert!(c.grows(), "the source does not run on");
}

#[test]
fn a_signal_while_waiting_for_the_pre_flight_answer_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 8, false);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let (mut s, _) = listener.accept()?;
        // Reads the request, never answers.
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        Ok::<_, std::io::Error>(s)
    });
    let mut send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--to", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = hold.join().unwrap().expect("the send's pre-flight request");
    // SAFETY: kill(2) of the send this test started.
    unsafe { libc::kill(send.id() as i32, libc::SIGINT) };
    let mut err = String::new();
    send.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = send.wait().unwrap();
    drop(held);
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(
        err.contains("pre-flight") && err.contains("nothing was stopped"),
        "{err}"
    );
    assert_ne!(c.state(), Some('T'));
    assert!(c.grows());
}

#[test]
fn a_signal_to_receive_mid_transfer_resumes_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 256, true);
    let port = free_port();
    let r = receive(port, &["--plain"]);
    let mut send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--to", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the source is stopped its images are on their way.
    let stopped = poll(|| (c.state() == Some('T')).then_some(()));
    // SAFETY: kill(2) of the receive this test started.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGINT) };
    let (code, recv_err) = r.finish();
    let mut err = String::new();
    send.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = send.wait().unwrap();
    assert!(stopped.is_some(), "the source never stopped");
    assert_eq!(code, Some(5), "receive: {recv_err}");
    assert!(
        recv_err.contains("SIGINT") && recv_err.contains("source resumes"),
        "{recv_err}"
    );
    assert!(
        !status.success(),
        "send succeeded although the receive was interrupted"
    );
    assert!(err.contains("resumed"), "send: {err}");
    runs_once(&c, dir.path(), "SIGINT to receive mid-transfer");
}

#[test]
fn a_signal_ends_a_waiting_receive() {
    let port = free_port();
    let r = receive(port, &["--plain"]);
    // SAFETY: kill(2) of the receive this test started.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
    let (code, err) = r.finish();
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("SIGTERM") && err.contains("nothing was received"),
        "{err}"
    );
}

#[test]
fn plain_says_what_it_risks() {
    for cmd in ["send", "receive"] {
        let out = Command::new(bin()).args([cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(
                "anyone who can reach the port can have code run as root on the receiver"
            ),
            "{cmd} --help: {help}"
        );
    }
}

#[test]
fn sigint_to_send_while_criu_dumps_resumes_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 8, true);
    let (conf, marker) = hold_criu_at(dir.path(), "pre-dump");
    let port = free_port();
    let r = receive(port, &["--plain"]);
    let send = Command::new(bin())
        .args([
            "send",
            "--pid",
            &c.pid.to_string(),
            "--plain",
            "--json",
            "-",
        ])
        .args(["--to", &format!("127.0.0.1:{port}"), "--criu-config"])
        .arg(&conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = poll(|| marker.exists().then_some(()));
    // SAFETY: kill(2) of the send this test started.
    unsafe { libc::kill(send.id() as i32, libc::SIGINT) };
    let out = send.wait_with_output().unwrap();
    let (code, recv_err) = r.finish();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(held.is_some(), "CRIU never reached pre-dump: {err}");
    let row = error_row(&String::from_utf8_lossy(&out.stdout));
    assert_cancelled_by_sigint(out.status.code(), &row, &err);
    assert_eq!(row["source_state"], "resumed", "{row}");
    assert_ne!(code, Some(0), "receive: {recv_err}");
    runs_once(&c, dir.path(), "SIGINT while dumping");
}

#[test]
fn criu_config_is_refused_where_the_core_writes_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, _) = hold_criu_at(dir.path(), "pre-restore");
    let recv = Command::new(bin())
        .args([
            "receive",
            "--listen",
            "127.0.0.1:1",
            "--plain",
            "--criu-config",
        ])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(recv.status.code(), Some(2), "{recv:?}");
    let send = Command::new(bin())
        .args(["send", "--pid", "1", "--to", "127.0.0.1:1", "--plain"])
        .args(["--strategy", "lazy", "--criu-config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(send.status.code(), Some(2), "{send:?}");
}

#[test]
fn peer_name_refuses_a_certificate_of_another_host_before_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(dir.path(), "names");
    let named = |host: &str, peer: &str| {
        let mut v = tls_args(&ours, host);
        v.extend(["--peer-name".to_string(), peer.to_string()]);
        v
    };
    // Each end names the other: the move goes through.
    let (a, b) = (named("a", "b"), named("b", "a"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    move_counter("stop-and-copy", &a, &b);

    // The destination expects a source named c (the source's certificate
    // names a), then the source expects a destination named c: refused
    // either way, exit 4, and the source never stopped.
    for (send_peer, recv_peer) in [("b", "c"), ("c", "a")] {
        let what = format!("send --peer-name {send_peer}, receive --peer-name {recv_peer}");
        let c = counter(dir.path(), 8, false);
        let port = free_port();
        let recv_args = named("b", recv_peer);
        let recv_args: Vec<&str> = recv_args.iter().map(String::as_str).collect();
        let r = receive(port, &recv_args);
        let send = Command::new(bin())
            .args(["send", "--pid", &c.pid.to_string(), "--json", "-"])
            .args(["--to", &format!("127.0.0.1:{port}")])
            .args(named("a", send_peer))
            .output()
            .unwrap();
        let (code, recv_err) = r.finish();
        let err = String::from_utf8_lossy(&send.stderr);
        assert_eq!(send.status.code(), Some(4), "{what}: {err}");
        assert_eq!(error_row(&String::from_utf8_lossy(&send.stdout))["exit"], 4);
        assert_ne!(code, Some(0), "{what}: receive accepted: {recv_err}");
        assert_ne!(c.state(), Some('T'), "{what}");
        assert!(c.grows(), "{what}: the refused source does not run");
    }
}

/// The children of `parent` (of any of its threads).
fn children(parent: u32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The name of `pid` (its comm, which reading touches no memory of it).
fn comm(pid: i32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end().to_string())
}

/// The pid of a child of `parent` whose command line contains `needle`.
/// Only CRIU's processes are read (a lazily restored tree's command line
/// may wait for a page).
fn child_running(parent: u32, needle: &str) -> Option<i32> {
    children(parent).into_iter().find(|&pid| {
        if comm(pid).as_deref() != Some("criu") {
            return false;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmd).contains(needle)
    })
}

/// Waits until none of `pids` runs (gone, or a zombie).
fn all_gone(pids: &[i32]) -> bool {
    poll(|| {
        pids.iter()
            .all(|&p| matches!(state(p), None | Some('Z')))
            .then_some(())
    })
    .is_some()
}

/// Kills `pids` (copies a failed check found left behind).
fn kill_all(pids: &[i32]) {
    for &p in pids {
        // SAFETY: kill(2) of a copy of this test's counter.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// What a move interrupted by a test ended with, on both ends.
struct Interrupted {
    send_code: Option<i32>,
    send_row: Value,
    send_err: String,
    recv_code: Option<i32>,
    recv_row: Value,
    recv_err: String,
}

impl Interrupted {
    /// From the send's output (`send_err`: its stderr), the receive's
    /// exit code and stderr, and the `--json` file it wrote.
    fn ended(
        send: &std::process::Output,
        send_err: String,
        recv_code: Option<i32>,
        recv_err: String,
        recv_json: &Path,
    ) -> Interrupted {
        let recv_text = std::fs::read_to_string(recv_json).unwrap_or_default();
        Interrupted {
            send_code: send.status.code(),
            send_row: error_row(&String::from_utf8_lossy(&send.stdout)),
            send_err,
            recv_code,
            recv_row: error_row(&recv_text),
            recv_err,
        }
    }
}

/// Moves a counter (stop-and-copy) to a `receive` whose CRIU holds the
/// restore at its action `action` (an action script named by
/// CRIU_CONFIG_FILE: `--criu-config` is refused there), and SIGINTs the
/// receive (`to_receive`) or the send there. Checks that the
/// half-restored tree existed then and is gone after, and that the
/// source runs on, once.
fn sigint_while_criu_restores(to_receive: bool, action: &str) -> Interrupted {
    let what = match to_receive {
        true => "SIGINT to receive while CRIU restores",
        false => "SIGINT to send while CRIU restores",
    };
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 8, true);
    let (conf, marker) = hold_criu_at(dir.path(), action);
    let port = free_port();
    let recv_json = dir.path().join("recv.json");
    let r = receive_with(
        port,
        &["--plain", "--json", recv_json.to_str().unwrap()],
        Some(&conf),
    );
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--json", "-", "--to", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = poll(|| marker.exists().then_some(()));
    // The half-restored tree: CRIU and the tree's root it forked, both
    // children of the receive (the root is restored as its child).
    let tree = children(r.child.id());
    let target = if to_receive { r.child.id() } else { send.id() };
    // SAFETY: kill(2) of a command this test started.
    unsafe { libc::kill(target as i32, libc::SIGINT) };
    let out = send.wait_with_output().unwrap();
    let (recv_code, recv_err) = r.finish();
    let send_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        held.is_some(),
        "{what}: CRIU never reached {action}: {send_err}\nreceive: {recv_err}"
    );
    assert!(
        tree.len() >= 2,
        "{what}: CRIU had forked no tree at {action}: {tree:?}"
    );
    if !all_gone(&tree) {
        kill_all(&tree);
        panic!(
            "{what}: the half-restored tree {tree:?} is left\nsend: {send_err}\n\
             receive: {recv_err}"
        );
    }
    runs_once(&c, dir.path(), what);
    Interrupted::ended(&out, send_err, recv_code, recv_err, &recv_json)
}

#[test]
fn sigint_to_receive_while_criu_restores_kills_the_copy_and_resumes_the_source() {
    let i = sigint_while_criu_restores(true, "post-setup-namespaces");
    let (err, row) = (&i.recv_err, &i.recv_row);
    assert_cancelled_by_sigint(i.recv_code, row, err);
    assert_eq!(row["step"], "restore", "{row}");
    // The source decides, and says so: it resumed its copy.
    assert_ne!(i.send_code, Some(0), "send: {}", i.send_err);
    assert_eq!(i.send_row["source_state"], "resumed", "{}", i.send_row);
}

#[test]
fn sigint_to_send_while_criu_restores_kills_the_copy_and_resumes_the_source() {
    let i = sigint_while_criu_restores(false, "post-setup-namespaces");
    let (err, row) = (&i.send_err, &i.send_row);
    assert_cancelled_by_sigint(i.send_code, row, err);
    assert_eq!(row["step"], "restore", "{row}");
    assert_eq!(row["source_state"], "resumed", "{row}");
    assert_ne!(i.recv_code, Some(0), "receive: {}", i.recv_err);
    assert!(
        i.recv_row.is_object(),
        "receive wrote no error row: {}",
        i.recv_err
    );
}

/// Sends `sig` to `pid` through a pidfd taken while the caller knows it
/// alive (no other process can be signalled); false if it is gone.
fn signal_by_pidfd(pid: i32, sig: i32) -> bool {
    // SAFETY: pidfd_open(2); the descriptor is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return false;
    }
    // SAFETY: pidfd_send_signal(2) with no siginfo, then close(2) of the
    // descriptor opened above.
    unsafe {
        let sent = libc::syscall(libc::SYS_pidfd_send_signal, fd as i32, sig, 0usize, 0u32) == 0;
        libc::close(fd as i32);
        sent
    }
}

/// Moves a 1 GiB counter with `--strategy lazy` and SIGINTs the receive
/// (`to_receive`) or the send once the destination has restored and
/// continued its copy, while its lazy-pages daemon still fetches the
/// pages. For the receive the daemon is then held (SIGSTOP, never
/// continued: CRIU's daemon fails on the EINTR a continue gives its
/// epoll_wait), so its fetch cannot end first. Checks that the restored
/// copy is gone after and that the source runs on, once.
fn sigint_while_lazy_pages_are_served(to_receive: bool) -> Interrupted {
    let what = match to_receive {
        true => "SIGINT to receive while lazy pages are served",
        false => "SIGINT to send while lazy pages are served",
    };
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 1024, true);
    let port = free_port();
    let recv_json = dir.path().join("recv.json");
    // --detach: a move that completed regardless ends the receive too.
    let r = receive(
        port,
        &["--plain", "--detach", "--json", recv_json.to_str().unwrap()],
    );
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--strategy", "lazy", "--json", "-"])
        .args(["--to", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let receiver = r.child.id();
    // Started (and ready) before the restore.
    let daemon = poll(|| child_running(receiver, "lazy-pages"));
    // The copy once the destination's CRIU is done and the destination
    // continued it (CRIU restores it stopped), just before it reports the
    // restore. Found by its name: its command line is in memory the
    // daemon may not have served yet.
    let copy = poll(|| {
        if child_running(receiver, "restore").is_some() {
            return None;
        }
        children(receiver).into_iter().find(|&p| {
            comm(p).as_deref() == Some("python3") && !matches!(state(p), Some('T' | 't'))
        })
    });
    let serving = match (daemon, to_receive) {
        // Held only once the copy runs: the restore needs some pages.
        (Some(d), true) if copy.is_some() => {
            signal_by_pidfd(d, libc::SIGSTOP)
                && poll(|| (state(d) == Some('T')).then_some(())).is_some()
        }
        (Some(d), false) => !matches!(state(d), None | Some('Z')),
        _ => false,
    };
    if to_receive {
        // The report of the restore follows the continue at once; this
        // is ample for it, and the held daemon keeps the window open.
        std::thread::sleep(Duration::from_millis(500));
    }
    let target = if to_receive { r.child.id() } else { send.id() };
    // SAFETY: kill(2) of a command this test started.
    unsafe { libc::kill(target as i32, libc::SIGINT) };
    let out = send.wait_with_output().unwrap();
    let (recv_code, recv_err) = r.finish();
    let send_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let copy = copy.unwrap_or_else(|| {
        panic!("{what}: the restored copy never ran: {send_err}\nreceive: {recv_err}")
    });
    assert!(
        serving,
        "{what}: the lazy-pages daemon ({daemon:?}) had ended before the signal: \
         {send_err}\nreceive: {recv_err}"
    );
    if !all_gone(&[copy]) {
        kill_all(&[copy]);
        panic!("{what}: the restored copy {copy} is left\nsend: {send_err}\nreceive: {recv_err}");
    }
    runs_once(&c, dir.path(), what);
    Interrupted::ended(&out, send_err, recv_code, recv_err, &recv_json)
}

#[test]
fn sigint_to_receive_while_lazy_pages_are_served_resumes_the_source() {
    let i = sigint_while_lazy_pages_are_served(true);
    let (err, row) = (&i.recv_err, &i.recv_row);
    assert_cancelled_by_sigint(i.recv_code, row, err);
    assert_eq!(row["step"], "lazy-pages", "{row}");
    assert_ne!(i.send_code, Some(0), "send: {}", i.send_err);
    assert_eq!(i.send_row["source_state"], "resumed", "{}", i.send_row);
}

#[test]
fn sigint_to_send_while_lazy_pages_are_served_resumes_the_source() {
    let i = sigint_while_lazy_pages_are_served(false);
    let (err, row) = (&i.send_err, &i.send_row);
    assert_cancelled_by_sigint(i.send_code, row, err);
    assert_eq!(row["step"], "lazy-pages", "{row}");
    assert_eq!(row["source_state"], "resumed", "{row}");
    assert_ne!(i.recv_code, Some(0), "receive: {}", i.recv_err);
    assert!(
        i.recv_row.is_object(),
        "receive wrote no error row: {}",
        i.recv_err
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_under(&p));
        } else {
            found.push(p);
        }
    }
    found
}

/// SIGINTs the receive (`to_receive`) or the send of a `--strategy
/// pre-copy` move while its first pass runs (CRIU pre-dumps the running
/// tree, the pages go out), `id` naming the test for a skip. Checks that
/// a pass had begun, that the receive kept nothing of it and that the
/// tree runs on, once; `None` when pre-copy cannot run here.
fn sigint_during_pre_copy_passes(to_receive: bool, id: &str) -> Option<Interrupted> {
    let what = match to_receive {
        true => "SIGINT to receive during pre-copy's passes",
        false => "SIGINT to send during pre-copy's passes",
    };
    if !common::strategies(id).contains(&"pre-copy") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // Enough memory that the first pass takes a while.
    let c = counter(dir.path(), 512, true);
    let (send_work, recv_work) = (dir.path().join("send-work"), dir.path().join("recv-work"));
    std::fs::create_dir(&send_work).unwrap();
    std::fs::create_dir(&recv_work).unwrap();
    let port = free_port();
    let recv_json = dir.path().join("recv.json");
    let r = receive(
        port,
        &[
            "--plain",
            "--json",
            recv_json.to_str().unwrap(),
            "--work-dir",
            recv_work.to_str().unwrap(),
        ],
    );
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--strategy", "pre-copy", "--json", "-", "--work-dir"])
        .arg(&send_work)
        .args(["--to", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first pass under way: CRIU's pre-dump writes its directory.
    let passing = poll(|| {
        let pass = |f: &PathBuf| f.components().any(|c| c.as_os_str() == "pass-1");
        files_under(&send_work).iter().any(pass).then_some(())
    });
    let target = if to_receive { r.child.id() } else { send.id() };
    // SAFETY: kill(2) of a command this test started.
    unsafe { libc::kill(target as i32, libc::SIGINT) };
    let out = send.wait_with_output().unwrap();
    let (recv_code, recv_err) = r.finish();
    let send_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        passing.is_some(),
        "{what}: no pass began: {send_err}\nreceive: {recv_err}"
    );
    let left = files_under(&recv_work);
    assert!(left.is_empty(), "{what}: the receive left {left:?}");
    runs_once(&c, dir.path(), what);
    Some(Interrupted::ended(
        &out, send_err, recv_code, recv_err, &recv_json,
    ))
}

#[test]
fn sigint_to_send_during_pre_copy_passes_resumes_the_source() {
    let id = "migrate::sigint_to_send_during_pre_copy_passes_resumes_the_source";
    let Some(i) = sigint_during_pre_copy_passes(false, id) else {
        return;
    };
    let row = &i.send_row;
    assert_cancelled_by_sigint(i.send_code, row, &i.send_err);
    assert_eq!(row["source_state"], "resumed", "{row}");
    assert!(
        row["step"] == "dump" || row["step"] == "transfer",
        "not in a pass: {row}"
    );
    assert_ne!(i.recv_code, Some(0), "receive: {}", i.recv_err);
}

#[test]
fn sigint_to_receive_during_pre_copy_passes_resumes_the_source() {
    let id = "migrate::sigint_to_receive_during_pre_copy_passes_resumes_the_source";
    let Some(i) = sigint_during_pre_copy_passes(true, id) else {
        return;
    };
    let row = &i.recv_row;
    assert_cancelled_by_sigint(i.recv_code, row, &i.recv_err);
    // The source decides, and says so: it resumed its tree.
    assert_ne!(i.send_code, Some(0), "send: {}", i.send_err);
    assert_eq!(i.send_row["source_state"], "resumed", "{}", i.send_row);
}

/// A `--work-dir` that does not exist is a bad command line (status 2),
/// found before anything starts: the send stops nothing, the receive
/// does not listen.
#[test]
fn a_missing_work_dir_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 8, false);
    let missing = dir.path().join("no-such-dir");
    let port = free_port();
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain", "--work-dir"])
        .arg(&missing)
        .args(["--to", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&send.stderr);
    assert_eq!(send.status.code(), Some(2), "send: {err}");
    assert!(err.contains("hint:"), "send: {err}");
    assert!(c.grows(), "the source does not run on");
    let listen = format!("127.0.0.1:{port}");
    let mut receive = Command::new(bin())
        .args(["receive", "--listen", &listen, "--plain", "--work-dir"])
        .arg(&missing)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = poll(|| receive.try_wait().unwrap());
    if status.is_none() {
        let _ = receive.kill();
        let _ = receive.wait();
        panic!("receive waits for a source with a missing --work-dir");
    }
    assert_eq!(status.unwrap().code(), Some(2), "receive");
    assert!(!missing.exists(), "a --work-dir was made");
}

/// An `--address-hook` that logs each step to `LOG`, and at step
/// `HOLD_AT` touches `HELD` and waits (up to 30 s) for `GO`.
const HELD_HOOK: &str = r#"#!/bin/sh
echo "$1" >> "$LOG"
if [ "$1" = "$HOLD_AT" ]; then
  touch "$HELD"
  i=0; while [ ! -e "$GO" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
fi
"#;

/// Ctrl-C (SIGINT to the send's process group, as a terminal sends it)
/// while `--address-hook` runs its `move-to-dest` step: the send exits 5
/// at step connections, the hook moves the address back and unlocks, the
/// destination's copy is killed and the source runs on, once.
#[test]
fn ctrl_c_while_the_address_hook_moves_the_address_resumes_the_source() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let what = "Ctrl-C during the address hook";
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 8, true);
    let (log, held, go) = (
        dir.path().join("hook.log"),
        dir.path().join("held"),
        dir.path().join("go"),
    );
    let hook = dir.path().join("hook.sh");
    std::fs::write(&hook, HELD_HOOK).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let recv_json = dir.path().join("recv.json");
    let r = receive(
        port,
        &[
            "--plain",
            "--tcp-established",
            "--json",
            recv_json.to_str().unwrap(),
        ],
    );
    // Its own process group, as a terminal's foreground job: Ctrl-C
    // reaches the send and the hook it runs.
    let send = Command::new(bin())
        .args([
            "send",
            "--pid",
            &c.pid.to_string(),
            "--plain",
            "--json",
            "-",
        ])
        .args(["--to", &format!("127.0.0.1:{port}"), "--tcp-established"])
        .arg("--address-hook")
        .arg(&hook)
        .env("LOG", &log)
        .env("HOLD_AT", "move-to-dest")
        .env("HELD", &held)
        .env("GO", &go)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reached = poll(|| held.exists().then_some(()));
    // SAFETY: kill(2) of the process group of the send this test started.
    unsafe { libc::kill(-(send.id() as i32), libc::SIGINT) };
    let out = send.wait_with_output().unwrap();
    std::fs::write(&go, "").unwrap();
    let send_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut r = r;
    let ended = poll(|| r.child.try_wait().unwrap()).is_some();
    if !ended {
        let _ = r.child.kill();
    }
    let (recv_code, recv_err) = r.finish();
    assert!(
        reached.is_some(),
        "{what}: the hook never ran move-to-dest: {send_err}"
    );
    assert!(ended, "{what}: the receive still waits: {recv_err}");
    let row = error_row(&String::from_utf8_lossy(&out.stdout));
    assert_cancelled_by_sigint(out.status.code(), &row, &send_err);
    assert_eq!(row["step"], "connections", "{row}");
    assert_eq!(row["source_state"], "resumed", "{row}");
    // The address went back where it was, and the lock came off.
    let steps = std::fs::read_to_string(&log).unwrap_or_default();
    let steps: Vec<&str> = steps.lines().collect();
    assert_eq!(steps, ["lock", "move-to-dest", "move-back", "unlock"]);
    assert_ne!(recv_code, Some(0), "receive: {recv_err}");
    runs_once(&c, dir.path(), what);
}

/// Where `v` first differs from 1, 2, 3...: `None` when the counter ran
/// once, on from its own memory.
fn first_break(v: &[u64]) -> Option<usize> {
    (0..v.len()).find(|&i| v[i] != i as u64 + 1)
}

/// Whether the accepted connection on local TCP `port` holds bytes its
/// process has not read (`/proc/net/tcp`: state 01, rx_queue above 0).
fn unread_at(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local = f.get(1).and_then(|a| a.rsplit_once(':'));
        let local = local.and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        let rx = f.get(4).and_then(|q| q.split_once(':'));
        let rx = rx.and_then(|(_, n)| u64::from_str_radix(n, 16).ok());
        local == Some(port) && f.get(3) == Some(&"01") && rx.is_some_and(|n| n > 0)
    })
}

/// A stop-and-copy move with `--tcp-established` whose `--address-hook`
/// ([`HELD_HOOK`]) holds at `announce`: the destination has restored its
/// copy, continued it and reported it, and waits for the source's
/// verdict (step `confirm`); the source waits for its hook. Whatever a
/// failed check leaves is killed on drop (the hook released).
struct AtConfirm {
    c: Counter,
    port: u16,
    r: Option<Receiver>,
    send: Option<Child>,
    log: PathBuf,
    go: PathBuf,
    recv_json: PathBuf,
    /// The destination's copy.
    copy: i32,
    dir: tempfile::TempDir,
}

fn held_at_confirm(recv_extra: &[&str]) -> AtConfirm {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 8, true);
    let (log, held, go) = (
        dir.path().join("hook.log"),
        dir.path().join("held"),
        dir.path().join("go"),
    );
    let hook = dir.path().join("hook.sh");
    std::fs::write(&hook, HELD_HOOK).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let recv_json = dir.path().join("recv.json");
    let mut args = vec!["--plain", "--tcp-established", "--json"];
    args.push(recv_json.to_str().unwrap());
    args.extend_from_slice(recv_extra);
    let r = receive(port, &args);
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--json", "-", "--to", &format!("127.0.0.1:{port}")])
        .args(["--tcp-established", "--address-hook"])
        .arg(&hook)
        .env("LOG", &log)
        .env("HOLD_AT", "announce")
        .env("HELD", &held)
        .env("GO", &go)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reached = poll(|| held.exists().then_some(()));
    let copy = poll(|| copies(dir.path()).into_iter().find(|&p| p != c.pid));
    let mut m = AtConfirm {
        c,
        port,
        r: Some(r),
        send: Some(send),
        log,
        go,
        recv_json,
        copy: copy.unwrap_or(0),
        dir,
    };
    if reached.is_none() || copy.is_none() {
        std::fs::write(&m.go, "").unwrap();
        let out = m.send.take().unwrap().wait_with_output().unwrap();
        panic!(
            "the hook never held at announce ({reached:?}) or no copy was restored \
             ({copy:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    m
}

impl AtConfirm {
    /// The steps the address hook ran, in order.
    fn hook_steps(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().map(str::to_string).collect()
    }
}

impl Drop for AtConfirm {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.go, "");
        for child in self
            .send
            .iter_mut()
            .chain(self.r.iter_mut().map(|r| &mut r.child))
        {
            // SAFETY: kill(2) of a command this test started (a stopped
            // receive is continued, so that it can die).
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_all(&copies(self.dir.path()));
    }
}

/// SIGINT to `receive` at the final confirmation (step `confirm`): its
/// copy restored and running, the source's verdict not in yet (the
/// source held in its address hook's `announce`). The receive exits 5 at
/// step confirm at once, without waiting for the source, and kills its
/// copy; the source, once its hook returns, hears the destination
/// dropped its copy, moves the address back and resumes: the counter
/// runs once, on from where it stopped, nothing left in /dev/shm.
#[test]
fn sigint_to_receive_at_confirm_kills_its_copy_and_resumes_the_source() {
    let what = "SIGINT to receive at confirm";
    let mut m = held_at_confirm(&[]);
    let copy_start = criu_testkit::aftermath::start_time(m.copy);
    let mut r = m.r.take().unwrap();
    // SAFETY: kill(2) of the receive this test started.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGINT) };
    // The source still holds in its hook: the receive ends on its own.
    let ended = poll(|| r.child.try_wait().unwrap()).is_some();
    let copy_gone =
        poll(|| (criu_testkit::aftermath::start_time(m.copy) != copy_start).then_some(()));
    std::fs::write(&m.go, "").unwrap();
    let out = m.send.take().unwrap().wait_with_output().unwrap();
    let send_err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !ended {
        let _ = r.child.kill();
    }
    let (recv_code, recv_err) = r.finish();
    assert!(
        ended,
        "{what}: the receive waited for the source: {recv_err}"
    );
    assert!(
        copy_gone.is_some(),
        "{what}: the destination's copy {} is left: {recv_err}",
        m.copy
    );
    let row = error_row(&std::fs::read_to_string(&m.recv_json).unwrap_or_default());
    assert_cancelled_by_sigint(recv_code, &row, &recv_err);
    assert_eq!(row["step"], "confirm", "{row}");
    // The source decides, and says so: it resumed its copy.
    assert_ne!(out.status.code(), Some(0), "send: {send_err}");
    let send_row = error_row(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(send_row["step"], "confirm", "{send_row}");
    assert_eq!(send_row["source_state"], "resumed", "{send_row}");
    // The address went back to the source, and its lock came off.
    let steps = m.hook_steps();
    assert_eq!(
        steps,
        ["lock", "move-to-dest", "announce", "move-back", "unlock"]
    );
    runs_once(&m.c, m.dir.path(), what);
    // The destination's copy counted on from the stop while it ran; the
    // resumed source then counts on from the same stop, from its memory:
    // one step back, to a value above 1, then 1 by 1 again.
    let v = m.c.values();
    assert_eq!(v.first(), Some(&1), "{what}: the counter went {v:?}");
    if let Some(i) = first_break(&v) {
        let tail: Vec<u64> = v[i..]
            .iter()
            .map(|x| (x + 1).saturating_sub(v[i]))
            .collect();
        assert!(
            v[i] > 1 && v[i] <= v[i - 1] && first_break(&tail).is_none(),
            "{what}: the counter went {:?} at {i}",
            &v[i.saturating_sub(3)..(i + 3).min(v.len())]
        );
    }
}

/// SIGINT to `send` at the final confirmation (step `confirm`): the
/// destination runs its copy and the source has sent its `Done`, but
/// the destination's answer is late (the receive is stopped for 4 s, as
/// a busy host would be: the `Done` waits unread in its socket). The
/// move is past its point of no return: the send neither gives up nor
/// resumes its copy, past the command's 3 s grace too; once the
/// destination answers it kills its copy and exits 0, saying the signal
/// came after the restore. One copy runs, the
/// destination's, on from the source's memory, and the destination says
/// the source confirmed.
#[test]
fn sigint_to_send_at_confirm_completes_the_move() {
    let what = "SIGINT to send at confirm";
    let mut m = held_at_confirm(&["--detach"]);
    let recv = m.r.as_ref().unwrap().child.id() as i32;
    // SAFETY: kill(2) of the receive this test started.
    unsafe { libc::kill(recv, libc::SIGSTOP) };
    let stopped = poll(|| (state(recv) == Some('T')).then_some(()));
    std::fs::write(&m.go, "").unwrap();
    // Past its hook, the source sends `Done` and waits for the answer.
    let done_sent = poll(|| unread_at(m.port).then_some(()));
    let send_pid = m.send.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) of the send this test started.
    unsafe { libc::kill(send_pid, libc::SIGINT) };
    // Longer than the command's grace (signals::GRACE, 3 s), after which
    // it sends nothing more to the destination but still awaits its
    // answer (it breaks the connection off whole only after
    // signals::LAST_WAIT, 30 s).
    std::thread::sleep(Duration::from_secs(4));
    let waited = m.send.as_mut().unwrap().try_wait().unwrap().is_none();
    // SAFETY: kill(2) of the receive this test started.
    unsafe { libc::kill(recv, libc::SIGCONT) };
    let out = m.send.take().unwrap().wait_with_output().unwrap();
    let send_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let (recv_code, recv_err) = m.r.take().unwrap().finish();
    assert!(stopped.is_some(), "{what}: the receive never stopped");
    assert!(
        done_sent.is_some(),
        "{what}: the source's Done never reached the receive: {send_err}"
    );
    assert!(
        waited,
        "{what}: the send did not wait for the answer: {send_err}"
    );
    assert_eq!(out.status.code(), Some(0), "send: {send_err}");
    assert!(send_err.contains("SIGINT"), "send: {send_err}");
    let report: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(recv_code, Some(0), "receive: {recv_err}");
    let received: Value = serde_json::from_slice(&std::fs::read(&m.recv_json).unwrap()).unwrap();
    assert_eq!(report["restored_pid"].as_i64(), Some(i64::from(m.copy)));
    assert_eq!(received["restored_pid"].as_i64(), Some(i64::from(m.copy)));
    assert_eq!(received["source_confirmed"], true, "{received}");
    assert_eq!(
        m.hook_steps(),
        ["lock", "move-to-dest", "announce", "unlock"]
    );
    // The source copy is gone; the destination's counts on, alone, 1 by
    // 1 from the source's memory.
    let gone = poll(|| matches!(m.c.state(), None | Some('Z')).then_some(()));
    assert!(gone.is_some(), "{what}: the source copy still runs");
    assert!(m.c.grows(), "{what}: the destination's copy does not count");
    assert_eq!(copies(m.dir.path()), [m.copy], "{what}: not one copy");
    let v = m.c.values();
    assert_eq!(
        first_break(&v),
        None,
        "{what}: the counter did not count on 1 by 1"
    );
    assert!(
        leftovers(m.c.pid).is_empty(),
        "{what}: images left in /dev/shm"
    );
}

/// The size of the largest `pages-*.img` under `dir`: what a page server
/// writing there has received so far.
fn pages_received(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img"))
        })
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// SIGINTs the receive (`to_receive`) or the send of a `--strategy
/// page-server` move of a 1 GiB counter while the destination's page
/// server receives its pages: seen growing (two samples 20 ms apart,
/// below the counter's memory) just before the signal. Checks that the
/// receive kept nothing and that the tree runs on, once.
fn sigint_while_page_server_streams(to_receive: bool) -> Interrupted {
    let what = match to_receive {
        true => "SIGINT to receive while the page server receives pages",
        false => "SIGINT to send while the page server receives pages",
    };
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 1024, true);
    let recv_work = dir.path().join("recv-work");
    std::fs::create_dir(&recv_work).unwrap();
    let port = free_port();
    let recv_json = dir.path().join("recv.json");
    let r = receive(
        port,
        &[
            "--plain",
            "--json",
            recv_json.to_str().unwrap(),
            "--work-dir",
            recv_work.to_str().unwrap(),
        ],
    );
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--strategy", "page-server", "--json", "-"])
        .args(["--to", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut last = 0;
    let streaming = common::poll_for(Duration::from_secs(60), || {
        let now = pages_received(&recv_work);
        let growing = last > 0 && now > last && now < 1024 << 20;
        last = now;
        growing.then_some(now)
    });
    let target = if to_receive { r.child.id() } else { send.id() };
    // SAFETY: kill(2) of a command this test started.
    unsafe { libc::kill(target as i32, libc::SIGINT) };
    let out = send.wait_with_output().unwrap();
    let (recv_code, recv_err) = r.finish();
    let send_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        streaming.is_some(),
        "{what}: the page server never received pages ({last} bytes): \
         {send_err}\nreceive: {recv_err}"
    );
    let left = files_under(&recv_work);
    assert!(left.is_empty(), "{what}: the receive left {left:?}");
    runs_once(&c, dir.path(), what);
    Interrupted::ended(&out, send_err, recv_code, recv_err, &recv_json)
}

#[test]
fn sigint_to_send_while_the_page_server_streams_resumes_the_source() {
    let i = sigint_while_page_server_streams(false);
    let row = &i.send_row;
    assert_cancelled_by_sigint(i.send_code, row, &i.send_err);
    assert_eq!(row["source_state"], "resumed", "{row}");
    assert!(
        row["step"] == "dump" || row["step"] == "transfer",
        "not while the pages went: {row}"
    );
    assert_ne!(i.recv_code, Some(0), "receive: {}", i.recv_err);
}

#[test]
fn sigint_to_receive_while_the_page_server_streams_resumes_the_source() {
    let i = sigint_while_page_server_streams(true);
    let row = &i.recv_row;
    assert_cancelled_by_sigint(i.recv_code, row, &i.recv_err);
    assert_eq!(row["step"], "transfer", "{row}");
    // The source decides, and says so: it resumed its tree.
    assert_ne!(i.send_code, Some(0), "send: {}", i.send_err);
    assert_eq!(i.send_row["source_state"], "resumed", "{}", i.send_row);
}

/// The source's `Done` lost on the way (a relay stops passing anything to
/// the destination once its `Restored` has gone by): the receive keeps
/// its copy, reports it, and exits 8, since the source may run its own
/// too; and it does, having never heard `Kept`. Both copies are killed
/// here by pid.
#[test]
fn a_restore_the_source_never_confirmed_exits_8() {
    let dir = tempfile::tempdir().unwrap();
    let c = counter(dir.path(), 8, true);
    let port = free_port();
    let json = dir.path().join("recv.json");
    let r = receive(
        port,
        &["--plain", "--detach", "--json", json.to_str().unwrap()],
    );
    // Between the two: the relay that loses the end.
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let relaying = std::thread::spawn(move || {
        let (from_send, _) = relay.accept().unwrap();
        let to_receive = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        criu_testkit::faults::lose_the_end()(from_send, to_receive);
    });
    let send = Command::new(bin())
        .args(["send", "--pid", &c.pid.to_string(), "--plain"])
        .args(["--strategy", "stop-and-copy", "--json", "-"])
        .args(["--to", &format!("127.0.0.1:{relay_port}")])
        .output()
        .unwrap();
    let (recv_code, recv_err) = r.finish();
    relaying.join().unwrap();
    let received: Option<Value> = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let restored = received
        .as_ref()
        .and_then(|v| v["restored_pid"].as_i64())
        .map(|p| p as i32);
    // Both copies run: kill them before asserting.
    let running = copies(dir.path());
    kill_all(&running);
    let send_err = String::from_utf8_lossy(&send.stderr);
    let restored =
        restored.unwrap_or_else(|| panic!("no restore reported: {received:?}\n{recv_err}"));
    assert_eq!(recv_code, Some(8), "receive: {recv_err}");
    assert!(
        recv_err.contains("never confirmed") && recv_err.contains(&format!("pid {restored}")),
        "the receive names the restored pid and the missing word: {recv_err}"
    );
    let received = received.unwrap();
    assert_eq!(received["source_confirmed"], false, "{received}");
    // The source heard no `Kept`: it resumed, and says the stream broke off.
    assert_eq!(send.status.code(), Some(4), "send: {send_err}");
    let mut expected = vec![c.pid, restored];
    expected.sort();
    let mut running = running;
    running.sort();
    assert_eq!(
        running, expected,
        "the source resumed and the copy here runs on\nsend: {send_err}\nreceive: {recv_err}"
    );
}
