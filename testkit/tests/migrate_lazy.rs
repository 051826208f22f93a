//! Lazy (post-copy) migration under faults: the pages never finish, and the
//! source's own CRIU settings. Real CRIU, two network-namespace hosts, root.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use criu::migrate::{DestConfig, SourceConfig, SourceState, Step, Strategy};
use criu::Criu;
use criu_testkit::hosts::TwoHosts;
use criu_testkit::{find_process, fixture};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `send` on host a with the caller's `criu`, `receive` on host b.
fn migrate_with<'a>(
    hosts: &TwoHosts,
    criu: &Criu,
    pid: i32,
    src: impl FnOnce() -> SourceConfig<'a> + Send,
    dst: impl FnOnce() -> DestConfig<'a> + Send,
) -> (
    criu::Result<criu::migrate::SourceReport>,
    criu::Result<criu::migrate::DestReport>,
    Duration,
) {
    let ((src, src_took), dst) = hosts
        .across(
            |listener| {
                let (mut stream, _) = listener.accept().unwrap();
                stream.set_read_timeout(Some(WAIT * 4)).unwrap();
                criu::migrate::receive(&Criu::new(), &mut stream, dst())
            },
            |addr| {
                let start = Instant::now();
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(WAIT * 4)).unwrap();
                let src = criu::migrate::send(criu, pid, &mut stream, src());
                (src, start.elapsed())
            },
        )
        .unwrap();
    (src, dst, src_took)
}

/// The destination's bound in the lazy tests.
const DEST_DEADLINE: Duration = Duration::from_secs(4);

/// Set at post-restore: the pid of the lazy-pages daemon that was stopped,
/// if one was found.
type StoppedDaemon = std::sync::Arc<std::sync::Mutex<Option<Option<i32>>>>;

/// Stops the destination's lazy-pages daemon (found by its unique images
/// directory) at post-restore, and records its pid.
fn stop_lazy_daemon_at_post_restore(
    dst_dir: &Path,
) -> (
    StoppedDaemon,
    impl Fn(&mut criu::Options<'_>) + Sync + Send + 'static,
) {
    let needle = dst_dir.join("images").to_string_lossy().into_owned();
    let stopped = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = stopped.clone();
    let customize = move |o: &mut criu::Options<'_>| {
        let (needle, record) = (needle.clone(), record.clone());
        o.on_notify(move |n| {
            if matches!(n.event, criu::Event::PostRestore) {
                let daemon = find_process(&needle);
                if let Some(p) = daemon {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGSTOP,
                    );
                }
                *record.lock().unwrap() = Some(daemon);
            }
            std::ops::ControlFlow::Continue(())
        });
    };
    (stopped, customize)
}

/// With a destination that waits for its daemon far longer, the source
/// must still give up at its own `lazy_timeout` (plus a margin of 3 s for
/// the dump and the restore of 4 MiB, which take well under a second),
/// stop serving pages and resume its process.
#[test]
fn the_source_gives_up_at_its_lazy_timeout_even_if_the_destination_waits_longer() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 4);
    let (src_dir, dst_dir) = fixture::migration_dirs(dir.path());
    let (stopped, customize) = stop_lazy_daemon_at_post_restore(&dst_dir);
    let lazy_timeout = Duration::from_secs(1);
    let (src, dst, src_took) = migrate_with(
        &hosts,
        &Criu::new(),
        w.pid(),
        || {
            SourceConfig::new(Strategy::Lazy)
                .work_dir(&src_dir)
                .lazy_timeout(lazy_timeout)
        },
        || {
            DestConfig::new()
                .work_dir(&dst_dir)
                .deadline(Duration::from_secs(20))
                .customize(customize)
        },
    );
    assert!(
        stopped.lock().unwrap().flatten().is_some(),
        "the daemon was stopped"
    );
    let e = src.expect_err("the source gives up");
    assert_lazy_pages_gave_up(&e);
    assert!(
        // The margin with the documented slack factor stays well below
        // the destination's 20 s, which a source that waits for it takes.
        src_took < lazy_timeout + criu_testkit::slack(Duration::from_secs(3)),
        "the source returned after {src_took:?}, not at its lazy_timeout: {e}"
    );
    assert!(dst.is_err());
    assert!(w.is_running() && w.advances(WAIT), "the source runs on");
}

/// The destination's lazy-pages daemon is stopped at post-restore (after the
/// restorer handed it the userfaultfds, before it is told to fetch the rest), so
/// the pages are never all served: the source gives up after its
/// `lazy_timeout`, resumes its process, and the destination, bounded by
/// its `deadline`, kills its daemon and the restored copy.
#[test]
fn lazy_pages_that_never_finish_are_bounded_by_lazy_timeout_and_the_source_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 4);
    let (src_dir, dst_dir) = fixture::migration_dirs(dir.path());
    let (stopped, customize) = stop_lazy_daemon_at_post_restore(&dst_dir);
    let start = Instant::now();
    let (src, dst, _) = migrate_with(
        &hosts,
        &Criu::new(),
        w.pid(),
        || {
            SourceConfig::new(Strategy::Lazy)
                .work_dir(&src_dir)
                .lazy_timeout(Duration::from_secs(1))
        },
        || {
            DestConfig::new()
                .work_dir(&dst_dir)
                .deadline(DEST_DEADLINE)
                .customize(customize)
        },
    );
    let took = start.elapsed();
    let daemon = stopped.lock().unwrap().expect("post-restore arrived");
    assert!(
        daemon.is_some(),
        "the lazy-pages daemon ran during the restore"
    );
    let e = src.expect_err("the source gives up");
    let d = dst.expect_err("the destination gives up");
    eprintln!("lazy timeout after {took:?}: {e} / {d}");
    assert_lazy_pages_gave_up(&e);
    let step = d.migration_error().map(|m| m.step());
    assert_eq!(step, Some(Step::LazyPages), "{d}");
    assert!(matches!(d.cause(), criu::Error::Daemon { .. }), "{d}");
    assert!(w.is_running() && w.advances(WAIT), "the source runs on");
    assert!(
        !criu_testkit::alive(daemon.unwrap()),
        "the stopped daemon was killed"
    );
    assert_eq!(std::fs::read_dir(&dst_dir).unwrap().count(), 0);
}

/// The source's error of a lazy migration whose pages were not all
/// served: at the lazy-pages step, with the source resumed.
fn assert_lazy_pages_gave_up(e: &criu::Error) {
    let m = e.migration_error().expect("a migration error");
    assert_eq!(m.step(), Step::LazyPages, "{e}");
    assert_eq!(m.source_state(), SourceState::Resumed, "{e}");
}

/// Migrates a fresh workload of `mib` MiB with `strategy` (its config
/// adjusted by `src_cfg`) through a `criu` that records its starts, checks
/// that the dump started that `criu` and that the tree moved, and returns
/// the source's report.
fn through_a_recording_criu<'a>(
    strategy: Strategy,
    mib: usize,
    src_cfg: impl FnOnce(SourceConfig<'a>) -> SourceConfig<'a> + Send,
) -> criu::migrate::SourceReport {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), mib);
    let (src_dir, dst_dir) = fixture::migration_dirs(dir.path());
    let marker = dir.path().join("criu-started");
    let wrapper = fixture::recording_criu(dir.path(), &marker);
    let (src, dst, _) = migrate_with(
        &hosts,
        &Criu::with_binary(&wrapper),
        w.pid(),
        || src_cfg(SourceConfig::new(strategy).work_dir(&src_dir)),
        || DestConfig::new().work_dir(&dst_dir),
    );
    let src = src.unwrap();
    let dst = dst.unwrap();
    w.reap(WAIT).unwrap();
    let started = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(
        started.lines().any(|l| l.starts_with("swrk")),
        "the {strategy} dump started CRIU through the caller's binary: {started:?}"
    );
    assert_eq!(src.restored_pid, dst.child.pid());
    src
}

/// The lazy dump must go through the caller's `Criu` (here a wrapper that
/// records each start of CRIU), as the other strategies' dumps do.
#[test]
fn a_lazy_migration_dumps_through_the_callers_criu() {
    through_a_recording_criu(Strategy::Lazy, 4, |c| c);
}

/// The same wrapper sees the stop-and-copy dump: what the lazy test above
/// expects is what the other strategies do today.
#[test]
fn a_stop_and_copy_migration_dumps_through_the_callers_criu() {
    let mut progress = Vec::new();
    let src = through_a_recording_criu(Strategy::StopAndCopy, 1, |c| {
        c.progress(|done, total| progress.push((done, total)))
    });
    // SourceConfig::progress: called as images go out, never backwards,
    // ending at the bytes sent; the total is 0 until it is known (the
    // pages go out while the dump writes them).
    assert!(!progress.is_empty(), "progress was reported");
    assert!(
        progress.windows(2).all(|p| p[0].0 <= p[1].0),
        "{progress:?}"
    );
    assert!(
        progress
            .iter()
            .all(|p| p.1 == 0 || p.1 == src.transfer.bytes),
        "the total is the bytes sent"
    );
    let bytes = src.transfer.bytes;
    assert_eq!(progress.last(), Some(&(bytes, bytes)));
}
