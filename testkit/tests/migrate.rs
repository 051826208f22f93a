//! Migration between two network-namespace hosts, with real CRIU, TCP and
//! faults. Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use criu::migrate::{DestConfig, SourceConfig, Strategy};
use criu::DaemonConfig;
use criu_testkit::hosts::{netns_of, Migration, TwoHosts};
use criu_testkit::Workload;

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);

/// Runs a migration from host a to host b, through `relay` if given.
fn migrate_between(
    hosts: &TwoHosts,
    pid: i32,
    strategy: Strategy,
    dir: &Path,
    src_cfg: impl FnOnce(SourceConfig<'static>) -> SourceConfig<'static> + Send,
    dest_cfg: impl FnOnce(DestConfig<'static>) -> DestConfig<'static> + Send,
    relay: Option<criu_testkit::hosts::Relay>,
) -> Migration {
    let (src_dir, dst_dir) = (dir.join("src"), dir.join("dst"));
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::create_dir_all(&dst_dir).unwrap();
    hosts
        .migrate(
            pid,
            || src_cfg(SourceConfig::new(strategy, &src_dir)),
            || dest_cfg(DestConfig::new(&dst_dir)),
            relay,
        )
        .unwrap()
}

/// The workload on host a, as the init of its own PID namespace: on one
/// machine the two "hosts" share pid numbers, and the source copy keeps its
/// pids (stopped) until the destination has restored.
fn spawn_on_a(hosts: &TwoHosts, out: &Path, mib: usize) -> Workload {
    hosts
        .a
        .run(|| Workload::spawn_in_pid_ns(BIN.as_ref(), out, Duration::from_millis(1), mib))
        .unwrap()
        .unwrap()
}

fn check_strategy(strategy: Strategy) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let out = dir.path().join("out.log");
    let mut w = spawn_on_a(&hosts, &out, 8);
    let sum = w.memory_checksum().unwrap();
    w.wait_for_seq(50, WAIT).unwrap();
    let before = netns_of(w.pid()).unwrap();
    assert_eq!(before, hosts.a.netns_inode().unwrap());

    let run = migrate_between(&hosts, w.pid(), strategy, dir.path(), |c| c, |c| c, None);
    let src = run.src.unwrap_or_else(|e| panic!("{strategy}: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("{strategy}: {e}"));
    w.reap(WAIT).unwrap();
    let seq_at_stop = w.last_seq();
    let pid = dst.child.pid();
    assert_eq!(src.restored_pid, pid);
    assert_eq!(
        netns_of(pid).unwrap(),
        hosts.b.netns_inode().unwrap(),
        "now on host b"
    );
    w.wait_for_seq(seq_at_stop + 50, WAIT).unwrap();
    let (sum_after, ok) = w.verify_memory(pid, WAIT).unwrap();
    assert!(ok && sum_after == sum, "{strategy}: memory pattern intact");
    let ticks = w.ticks();
    assert!(
        ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1),
        "{strategy}: no repeat, no reset"
    );
    assert!(src.transfer.bytes > 0);
    if strategy == Strategy::PageServer {
        assert!(
            src.page_server_bytes >= 8 << 20,
            "pages went through the page server"
        );
    }
    drop(dst);
    assert!(!criu_testkit::alive(pid));
}

#[test]
fn stop_and_copy_moves_the_workload_to_host_b() {
    check_strategy(Strategy::StopAndCopy);
}

#[test]
fn page_server_moves_the_workload_to_host_b() {
    check_strategy(Strategy::PageServer);
}

#[test]
fn lazy_moves_the_workload_to_host_b() {
    check_strategy(Strategy::Lazy);
}

/// After a failed migration: the source runs on, nothing is left in the
/// destination's directory, and the error explains.
fn assert_failed_cleanly(run: Migration, w: &mut Workload, dir: &Path, expect: &str) {
    let e = run.src.expect_err("the source reports the failure");
    let text = format!("{e}");
    assert!(
        text.contains("resumed"),
        "the error says the source resumed: {text}"
    );
    let d = run.dst.expect_err("the destination fails");
    let dtext = d.to_string();
    assert!(
        dtext.contains(expect) || text.contains(expect),
        "expected {expect:?} in: {text} / {dtext}"
    );
    assert!(w.is_running(), "the source process is alive");
    assert!(w.advances(WAIT), "and running");
    let left: Vec<_> = std::fs::read_dir(dir.join("dst")).unwrap().collect();
    assert!(
        left.is_empty(),
        "nothing left behind on the destination: {left:?}"
    );
}

fn cut_after_64k(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 65536];
    if from.read_exact(&mut buf).is_ok() {
        let _ = to.write_all(&buf);
    }
    // Both ends are dropped here: the stream is cut mid-transfer.
}

fn flip_a_byte(mut from: TcpStream, mut to: TcpStream) {
    let mut back_from = to.try_clone().unwrap();
    let mut back_to = from.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_from, &mut back_to);
    });
    let mut buf = vec![0u8; 65536];
    let mut total = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Flip one byte well inside the first large file.
        if total <= 200_000 && total + n > 200_000 {
            buf[200_000 - total] ^= 0x55;
        }
        total += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn a_stream_cut_mid_transfer_leaves_the_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"), 8);
    let run = migrate_between(
        &hosts,
        w.pid(),
        Strategy::StopAndCopy,
        dir.path(),
        |c| c,
        |c| c,
        Some(cut_after_64k),
    );
    assert_failed_cleanly(run, &mut w, dir.path(), "truncated");
}

#[test]
fn a_checksum_mismatch_leaves_the_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"), 8);
    let run = migrate_between(
        &hosts,
        w.pid(),
        Strategy::StopAndCopy,
        dir.path(),
        |c| c,
        |c| c,
        Some(flip_a_byte),
    );
    assert_failed_cleanly(run, &mut w, dir.path(), "checksum mismatch");
}

#[test]
fn a_page_server_that_dies_leaves_the_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"), 8);
    // A "criu" that dies as a page server would when killed.
    let fake = dir.path().join("dying-criu");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Error (fake): killed' >&2\nkill -9 $$\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&fake).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = migrate_between(
        &hosts,
        w.pid(),
        Strategy::PageServer,
        dir.path(),
        |c| c,
        move |c| {
            let mut d = DaemonConfig::new();
            d.binary(&fake);
            c.daemons(d)
        },
        None,
    );
    let e = run.src.expect_err("the source reports the failure");
    assert!(e.to_string().contains("page server"), "{e}");
    let d = run.dst.expect_err("the destination fails");
    assert!(
        d.to_string()
            .contains("page server: exited before it was ready"),
        "{d}"
    );
    assert!(w.is_running() && w.advances(WAIT), "the source runs on");
    assert_eq!(
        std::fs::read_dir(dir.path().join("dst")).unwrap().count(),
        0
    );
}

#[test]
fn a_failed_destination_restore_leaves_the_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"), 8);
    let run = migrate_between(
        &hosts,
        w.pid(),
        Strategy::StopAndCopy,
        dir.path(),
        |c| c,
        |c| {
            c.customize(|o| {
                o.join_ns(criu::Namespace::Uts, "/nonexistent-criu-rs-ns", None);
            })
        },
        None,
    );
    assert_failed_cleanly(run, &mut w, dir.path(), "restore");
}

#[test]
fn the_callers_dump_notifications_still_arrive_during_a_migration() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"), 8);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let run = migrate_between(
        &hosts,
        w.pid(),
        Strategy::Lazy,
        dir.path(),
        |c| {
            c.customize(move |o| {
                let log = log.clone();
                o.on_notify(move |n| {
                    log.lock().unwrap().push(n.event.name().to_string());
                    std::ops::ControlFlow::Continue(())
                });
            })
        },
        |c| c,
        None,
    );
    run.src.unwrap();
    let dst = run.dst.unwrap();
    w.reap(WAIT).unwrap();
    let seen = seen.lock().unwrap().clone();
    for event in ["pre-dump", "post-dump", "status-ready"] {
        assert!(seen.iter().any(|e| e == event), "{event} in {seen:?}");
    }
    drop(dst);
}

#[test]
fn a_source_notification_refusing_the_dump_leaves_the_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"), 8);
    let run = migrate_between(
        &hosts,
        w.pid(),
        Strategy::StopAndCopy,
        dir.path(),
        |c| {
            c.customize(|o| {
                o.on_notify(|n| match n.event {
                    criu::Event::PostDump => std::ops::ControlFlow::Break("not this time".into()),
                    _ => std::ops::ControlFlow::Continue(()),
                });
            })
        },
        |c| c,
        None,
    );
    assert_failed_cleanly(run, &mut w, dir.path(), "not this time");
}

#[test]
fn hosts_are_removed_on_drop() {
    let names = {
        let hosts = TwoHosts::new().unwrap();
        let listing = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout).to_string();
        assert!(listing.contains(&hosts.a.name) && listing.contains(&hosts.b.name));
        let reach = hosts
            .a
            .run(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((hosts.b.addr, 9)),
                    Duration::from_secs(2),
                )
            })
            .unwrap();
        // Port 9 has no listener: refused (not unreachable) proves the link.
        assert_eq!(
            reach.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        (hosts.a.name.clone(), hosts.b.name.clone())
    };
    let listing = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(!listing.contains(&names.0) && !listing.contains(&names.1));
}

fn swallow(mut from: TcpStream, to: TcpStream) {
    // A destination that takes everything and never answers.
    drop(to);
    let _ = std::io::copy(&mut from, &mut std::io::sink());
}

#[test]
fn a_destination_that_never_answers_is_bounded_by_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"), 8);
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::create_dir_all(&dst_dir).unwrap();
    let start = std::time::Instant::now();
    let run = hosts
        .migrate(
            w.pid(),
            || SourceConfig::new(Strategy::StopAndCopy, &src_dir).deadline(Duration::from_secs(3)),
            || DestConfig::new(&dst_dir),
            Some(swallow),
        )
        .unwrap();
    let e = run.src.expect_err("the source gives up");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "bounded: {:?}",
        start.elapsed()
    );
    assert!(e.to_string().contains("resumed"), "{e}");
    assert!(w.is_running() && w.advances(WAIT), "the source runs on");
    assert_eq!(std::fs::read_dir(&dst_dir).unwrap().count(), 0);
}
