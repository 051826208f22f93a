//! Migration between two network-namespace hosts, with real CRIU, TCP and
//! faults. Needs root. (Every strategy under every fault, with both kinds
//! of directories: `fault_matrix.rs`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use criu::migrate::{
    DestConfig, DestReport, SourceConfig, SourceReport, SourceState, Step, Strategy,
};
use criu::TransferKind;
use criu_testkit::hosts::{netns_of, Migration, TwoHosts};
use criu_testkit::{fixture, Workload};

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
            || src_cfg(SourceConfig::new(strategy).work_dir(&src_dir)),
            || dest_cfg(DestConfig::new().work_dir(&dst_dir)),
            relay,
        )
        .unwrap()
}

fn check_strategy(strategy: Strategy) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let out = dir.path().join("out.log");
    let mut w = fixture::counter_on(&hosts.a, &out, 8);
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
    assert_owner_only(
        &dir.path().join("dst/images"),
        &dir.path().join("src/images"),
    );
    if strategy == Strategy::StopAndCopy {
        // A directory the caller chose keeps its images whole (in the
        // crate's own directory, the pages are freed once sent).
        let pages = pages_image_bytes(&dir.path().join("src/images"));
        assert!(
            pages.0 >= 8 << 20 && pages.1 >= pages.0,
            "src/images keeps its pages: {} of {} bytes",
            pages.1,
            pages.0
        );
    }
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

/// The sizes of the pages images in `dir`, and the bytes they take.
fn pages_image_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap())
        .fold((0, 0), |(len, used), m| {
            (len + m.len(), used + m.blocks() * 512)
        })
}

/// Stop-and-copy with both sides' images in the crate's own directories
/// in memory (the default), where the source frees its pages images as
/// they are streamed: every word arrives.
/// Moves a 32 MiB counter with stop-and-copy, the images in memory on
/// both hosts and the destination's settings from `dest`; `check` sees
/// both reports, then the restored copy's memory is checked word for word
/// and the copy is gone once its report is dropped.
fn stop_and_copy_in_memory(
    dest: impl FnOnce() -> DestConfig<'static> + Send,
    check: impl FnOnce(&SourceReport, &DestReport),
) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 32);
    let sum = w.memory_checksum().unwrap();
    w.wait_for_seq(50, WAIT).unwrap();
    let run = hosts
        .migrate(
            w.pid(),
            || SourceConfig::new(Strategy::StopAndCopy),
            dest,
            None,
        )
        .unwrap();
    let src = run.src.unwrap_or_else(|e| panic!("stop-and-copy: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("stop-and-copy: {e}"));
    w.reap(WAIT).unwrap();
    let pid = dst.child.pid();
    assert_eq!(src.restored_pid, pid);
    check(&src, &dst);
    let (sum_after, ok) = w.verify_memory(pid, WAIT).unwrap();
    assert!(ok && sum_after == sum, "memory pattern intact");
    drop(dst);
    assert!(!criu_testkit::alive(pid));
}

#[test]
fn stop_and_copy_in_memory_moves_the_workload_word_for_word() {
    stop_and_copy_in_memory(DestConfig::new, |src, _| {
        assert!(
            src.transfer.bytes >= 32 << 20,
            "{} bytes",
            src.transfer.bytes
        );
    });
}

/// `DestConfig::restore_lazily`: stop-and-copy's destination leaves the
/// memory to a lazy-pages daemon of its own reading the received images;
/// the copy is reported once every page is in, and its memory is the
/// source's word for word. Where CRIU cannot restore lazily, a loud skip.
#[test]
fn stop_and_copy_restored_lazily_moves_the_workload_word_for_word() {
    let test = "migrate::stop_and_copy_restored_lazily_moves_the_workload_word_for_word";
    if !criu::Criu::new().feature_check().unwrap().lazy_pages {
        criu_testkit::skip::skip(test, "CRIU cannot restore lazily here (no userfaultfd)");
        return;
    }
    let lazily = || DestConfig::new().restore_lazily(true);
    stop_and_copy_in_memory(lazily, |_, dst| {
        // CRIU filled only what cannot be lazy (the stack, non-anonymous
        // memory) before the tree resumed: far less than the 32 MiB.
        let filled = dst.restore.stats.and_then(|s| s.pages_restored);
        eprintln!("pages filled before the resume: {filled:?}");
        let filled = filled.expect("the restore's statistics count its pages");
        assert!(filled < 1024, "{filled} pages filled before the resume");
    });
}

#[test]
fn page_server_moves_the_workload_to_host_b() {
    check_strategy(Strategy::PageServer);
}

#[test]
fn lazy_moves_the_workload_to_host_b() {
    check_strategy(Strategy::Lazy);
}

/// Received images are readable by their owner only: the directory 0700,
/// each file that came over the stream (named as in the source's `sent`
/// directory) 0600, or 0700 if it was executable, as README and
/// RELIABILITY.md promise. (Files CRIU itself writes there during the
/// restore, `restore.log` and `stats-restore`, get CRIU's own 0644, inside
/// the 0700 directory.)
fn assert_owner_only(images: &Path, sent: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(images), 0o700, "{}", images.display());
    let mut files = 0;
    for e in std::fs::read_dir(sent).unwrap().flatten() {
        let received = images.join(e.file_name());
        if !received.exists() {
            continue; // pages of a page-server or lazy dump never crossed
        }
        let m = mode(&received);
        assert!(m == 0o600 || m == 0o700, "{received:?} has mode {m:o}");
        files += 1;
    }
    assert!(files > 0, "images arrived");
}

/// After a failed migration: the source runs on, nothing is left in the
/// destination's directory (not even a partial directory), and both sides
/// return errors, which are handed back for specific checks.
fn assert_failed_cleanly(
    run: Migration,
    w: &mut Workload,
    dir: &Path,
) -> (criu::Error, criu::Error) {
    let e = run.src.expect_err("the source reports the failure");
    let d = run.dst.expect_err("the destination fails");
    assert!(w.is_running(), "the source process is alive: {e}");
    assert!(w.advances(WAIT), "and running: {e}");
    let left: Vec<_> = std::fs::read_dir(dir.join("dst")).unwrap().collect();
    assert!(
        left.is_empty(),
        "nothing left behind on the destination: {left:?}"
    );
    (e, d)
}

/// The source's error says it resumed its process, as a migration error.
fn assert_resumed(e: &criu::Error) {
    assert_eq!(
        e.source_state(),
        Some(SourceState::Resumed),
        "the error says the source resumed: {e}"
    );
}

/// The step a migration error names.
fn step(e: &criu::Error) -> Step {
    e.migration_error()
        .unwrap_or_else(|| panic!("a migration error: {e}"))
        .step()
}

/// One migration of a fresh 4 MiB workload on fresh hosts, with the given
/// relay and configs; returns the run's errors after the common checks.
fn failed_migration(
    strategy: Strategy,
    src_cfg: impl FnOnce(SourceConfig<'static>) -> SourceConfig<'static> + Send,
    dest_cfg: impl FnOnce(DestConfig<'static>) -> DestConfig<'static> + Send,
    relay: Option<criu_testkit::hosts::Relay>,
) -> (criu::Error, criu::Error) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 4);
    let run = migrate_between(
        &hosts,
        w.pid(),
        strategy,
        dir.path(),
        src_cfg,
        dest_cfg,
        relay,
    );
    assert_failed_cleanly(run, &mut w, dir.path())
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
fn a_checksum_mismatch_leaves_the_source_running() {
    let (e, d) = failed_migration(Strategy::StopAndCopy, |c| c, |c| c, Some(flip_a_byte));
    assert_resumed(&e);
    assert_eq!(
        d.cause().transfer_kind(),
        Some(TransferKind::Corrupt),
        "{d}"
    );
}

#[test]
fn a_page_server_killed_mid_dump_after_the_source_stopped_leaves_the_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 8);
    let pid = w.pid();
    // The real `criu page-server` of this test: its images dir is unique.
    let needle = dir.path().join("dst/images").to_string_lossy().into_owned();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    // query-ext-files comes after CRIU connected to the page server and
    // seized the (already stopped) tree, before it dumps any memory: kill
    // the page server there, and wait until it is gone.
    let run = migrate_between(
        &hosts,
        pid,
        Strategy::PageServer,
        dir.path(),
        move |c| {
            c.customize(move |o| {
                let (needle, record) = (needle.clone(), record.clone());
                o.on_notify(move |n| {
                    if matches!(n.event, criu::Event::QueryExtFiles) {
                        let server = criu_testkit::find_process(&needle);
                        let stopped = criu_testkit::task_state(pid);
                        if let Some(p) = server {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(p),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        let gone = criu_testkit::wait_until(WAIT, || {
                            server.is_some_and(|p| !criu_testkit::alive(p))
                        });
                        *record.lock().unwrap() = Some((server, stopped, gone));
                    }
                    std::ops::ControlFlow::Continue(())
                });
            })
        },
        |c| c,
        None,
    );
    let (server, stopped, gone) = seen.lock().unwrap().expect("query-ext-files arrived");
    assert!(
        server.is_some(),
        "the page server was running during the dump"
    );
    assert!(
        matches!(stopped, Some('T' | 't')),
        "the source was stopped (and seized by CRIU) before the kill: {stopped:?}"
    );
    assert!(gone, "the page server died");
    let (e, d) = assert_failed_cleanly(run, &mut w, dir.path());
    eprintln!("page server killed: {e} / {d}");
    assert_resumed(&e);
    assert_eq!(step(&e), Step::Dump, "{e}");
    let dump_err = e.cause();
    assert!(
        matches!(dump_err, criu::Error::Refused { .. }),
        "{dump_err}"
    );
    assert!(!dump_err.log_errors().is_empty(), "{dump_err}");
}

#[test]
fn the_callers_dump_notifications_still_arrive_during_a_migration() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 8);
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
    let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 8);
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
    let (e, d) = assert_failed_cleanly(run, &mut w, dir.path());
    assert_resumed(&e);
    let dump_err = e.cause();
    assert!(
        matches!(dump_err, criu::Error::NotificationRefused { event, reason, .. }
            if event == "post-dump" && reason == "not this time"),
        "{dump_err}"
    );
    // The destination hears the source's reason (before: "unexpected
    // frame 0x4d", the source's message where image frames were expected).
    assert_eq!(step(&d), Step::Dump, "the source's step: {d}");
    assert_eq!(d.source_state(), Some(SourceState::Resumed), "{d}");
    assert!(
        d.to_string().contains("not this time"),
        "the handler's reason reached the destination: {d}"
    );
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

/// What `SourceConfig::deadline` promises: every wait on the peer gets at
/// most the deadline. A silent destination makes exactly one wait expire
/// (the first answer the source waits for); the dump and sending a 4 MiB
/// workload's images take well under a second here; the margin on top of
/// the deadline (3 s, times the documented `criu_testkit::time_slack`)
/// still catches a wait that ignored the deadline (the stream's idle
/// timeout is 120 s).
const SILENT_DEADLINE: Duration = Duration::from_secs(2);
const SILENT_MARGIN: Duration = Duration::from_secs(3);

#[test]
fn a_destination_that_never_answers_is_bounded_by_the_deadline_for_every_strategy() {
    for strategy in Strategy::ALL {
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 4);
        let start = std::time::Instant::now();
        let run = migrate_between(
            &hosts,
            w.pid(),
            strategy,
            dir.path(),
            |c| c.deadline(SILENT_DEADLINE),
            |c| c,
            Some(swallow),
        );
        let took = start.elapsed();
        let e = run.src.expect_err("the source gives up");
        eprintln!("{strategy} silent destination: {took:?}: {e}");
        assert!(
            took >= SILENT_DEADLINE,
            "{strategy}: it waited for the deadline ({took:?}): {e}"
        );
        assert!(
            took < SILENT_DEADLINE + criu_testkit::slack(SILENT_MARGIN),
            "{strategy}: bounded by the deadline plus the margin: {took:?}"
        );
        match strategy {
            // Waiting for the page server's port: nothing was stopped yet.
            Strategy::PageServer => {
                assert_eq!(e.source_state(), Some(SourceState::Untouched), "{e}");
                assert_eq!(
                    e.cause().transfer_kind(),
                    Some(TransferKind::TimedOut),
                    "{e}"
                );
            }
            _ => assert_resumed(&e),
        }
        assert!(w.is_running() && w.advances(WAIT), "the source runs on");
        assert_eq!(
            std::fs::read_dir(dir.path().join("dst")).unwrap().count(),
            0
        );
    }
}

/// Bytes host a has sent on its links (every interface but the
/// loopback), from the calling thread's network namespace.
fn sent_on_links() -> u64 {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim() != "lo")
        .map(|(_, counters)| {
            // rx: 8 counters, then tx_bytes.
            let tx = counters.split_whitespace().nth(8).unwrap();
            tx.parse::<u64>().unwrap()
        })
        .sum()
}

#[test]
fn reported_bytes_include_shared_memory() {
    // Before: the page-server strategy counted `pages_written` only, and
    // reported 14.4 MiB of an application of which 37.2 MiB crossed.
    const SHARED_MIB: u64 = 16;
    for strategy in [Strategy::StopAndCopy, Strategy::PageServer] {
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let out = dir.path().join("out.log");
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--pid", "--fork", "--", "setsid"])
            .arg(env!("CARGO_BIN_EXE_criu-rs-workload"))
            .arg(&out)
            .args(["--interval-us", "1000", "--memory-mib", "4", "--shared-mib"])
            .arg(SHARED_MIB.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut w = hosts
            .a
            .run(|| Workload::start_wrapped(cmd, &out, 4))
            .unwrap()
            .unwrap();
        w.wait_for_seq(20, WAIT).unwrap();
        let before = hosts.a.run(sent_on_links).unwrap();
        let run = migrate_between(&hosts, w.pid(), strategy, dir.path(), |c| c, |c| c, None);
        let crossed = hosts.a.run(sent_on_links).unwrap() - before;
        let src = run.src.unwrap_or_else(|e| panic!("{strategy}: {e}"));
        let dst = run.dst.unwrap_or_else(|e| panic!("{strategy}: {e}"));
        w.reap(WAIT).unwrap();
        let reported = src.transfer.bytes + src.page_server_bytes;
        eprintln!("{strategy}: reported {reported} bytes, {crossed} crossed host a's link");
        assert!(
            reported > (SHARED_MIB + 4) << 20,
            "{strategy}: the shared and the private memory are counted: {reported}"
        );
        // What crossed adds the TCP/IP headers and the protocol's
        // messages (a few percent) to what was reported.
        assert!(
            reported <= crossed && reported as f64 >= crossed as f64 * 0.9,
            "{strategy}: reported {reported}, crossed {crossed}"
        );
        drop(dst);
    }
}
