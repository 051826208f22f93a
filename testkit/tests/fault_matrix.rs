//! The fault matrix: every migration strategy x every fault x {the crate's
//! default in-memory directories, a caller's work directory}, one test per
//! cell (`STRATEGY::FAULT::DIRS`), each a fresh pair of hosts and a 4 MiB
//! counting workload. After every fault the same checks, which can fail
//! (`criu_testkit::aftermath`): the source was really held (stopped, not
//! counting) while it had to be; the counter has no value twice and none
//! lost (or, where the fault makes two copies run, exactly the duplicate
//! the crate documents); the application runs the number of times the
//! outcome says; no process of the test's own is left (CRIU, its daemons,
//! a restored copy), none in either host's network namespace; nothing left
//! in the destination's work directory or in `/dev/shm` (each cell has a
//! `/dev/shm` of its own, so the crate's in-memory directories are seen
//! exactly). Real CRIU, real namespaces; needs root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu::migrate::{DestConfig, SourceConfig, SourceState, Step, Strategy};
use criu::TransferKind;
use criu_testkit::aftermath::{self, consecutive, two_copies_from};
use criu_testkit::faults::{self, HeldProbe};
use criu_testkit::hosts::{Migration, RelayFn, TwoHosts};
use criu_testkit::{fixture, Workload};

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);
/// The workload's memory.
const MIB: usize = 4;
/// Bytes the cut relay passes once the source is held: inside the images
/// of every strategy (the page server's, without their pages, are some
/// 4 KiB).
const CUT_AFTER: usize = 512;
/// The workload's memory when the page server is killed as pages flow:
/// enough that they flow for a while.
const PAGE_SERVER_MIB: usize = 16;

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The stream is cut during the transfer, after the source stopped.
    Cut,
    /// The destination's restore is refused (a join-ns file that does not
    /// exist).
    RestoreRefused,
    /// The stream is cut right after the destination's `Restored`: the
    /// end of the migration (`Done`, `Kept`) is lost.
    LostEnd,
    /// The source's root dies while held, before the destination restores,
    /// and its pid goes to an unrelated process.
    PidReused,
    /// The destination's page server is killed once pages have reached
    /// its host (page-server strategy).
    PageServerKilled,
    /// The lazy-pages daemon's connection to the source is cut after the
    /// restore (lazy strategy).
    LazyCut,
}

/// Where both sides keep their images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dirs {
    /// The crate's default: private directories in `/dev/shm`.
    InMemory,
    /// The caller's work directories.
    WorkDir,
}

/// What the fault must leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The source runs on, alone; nothing restored is left.
    SourceRuns,
    /// The destination runs the tree, alone.
    DestRuns,
    /// Both copies run, and both sides say so.
    Twice,
}

impl Fault {
    fn outcome(self) -> Outcome {
        match self {
            Fault::Cut | Fault::RestoreRefused | Fault::PageServerKilled | Fault::LazyCut => {
                Outcome::SourceRuns
            }
            Fault::PidReused => Outcome::DestRuns,
            Fault::LostEnd => Outcome::Twice,
        }
    }
}

/// One cell's scene: hosts, the test's directory, the workload on host a.
struct Scene {
    hosts: TwoHosts,
    dir: tempfile::TempDir,
    out: PathBuf,
    w: Workload,
    probe: HeldProbe,
}

impl Scene {
    fn new(mib: usize) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let out = dir.path().join("out.log");
        let w = fixture::counter_on(&hosts.a, &out, mib);
        w.wait_for_seq(20, WAIT).unwrap();
        fixture::migration_dirs(dir.path());
        let probe = HeldProbe::new(w.pid(), &out);
        Scene {
            hosts,
            dir,
            out,
            w,
            probe,
        }
    }

    fn side(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The unrelated process under the source's old pid.
enum Innocent {
    /// Ours (clone3 with `set_tid`).
    Ours(criu_testkit::pid::PidHolder),
    /// Another program's, which took the freed pid first (pids wrap
    /// quickly on a busy machine): its pid and start time.
    Theirs(i32, Option<u64>),
}

/// The start time of `pid` (`/proc/PID/stat` field 22), which tells a
/// process from a later one under the same pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// What a fault's hooks recorded.
#[derive(Default)]
struct Record {
    /// The unrelated process that took the source's pid.
    innocent: Option<Innocent>,
    /// The daemon the fault killed or cut, and whether that was done.
    daemon: Option<(i32, bool)>,
}

type Shared = std::sync::Arc<std::sync::Mutex<Record>>;

/// Runs the cell `id` (its test's path in this binary).
fn run(id: &str, strategy: Strategy, fault: Fault, dirs: Dirs) {
    if strategy == Strategy::PreCopy && !criu::Criu::new().feature_check().unwrap().mem_track {
        // A failure unless the Makefile allow-lists it for this machine.
        criu_testkit::skip::skip(
            &format!("fault_matrix::{id}"),
            "CRIU cannot track memory changes here (no soft-dirty bits, and a CRIU \
             without patches/criu-uffd-wp-track.patch: run `make setup`)",
        );
        return;
    }
    aftermath::isolated(|| cell(strategy, fault, dirs));
}

fn cell(strategy: Strategy, fault: Fault, dirs: Dirs) {
    let what = format!("{strategy} / {fault:?} / {dirs:?}");
    let mib = match fault {
        Fault::PageServerKilled => PAGE_SERVER_MIB,
        _ => MIB,
    };
    let mut sc = Scene::new(mib);
    let sum = sc.w.memory_checksum().expect("the workload's checksum");
    let record: Shared = Shared::default();
    let run = migrate(&sc, strategy, fault, dirs, &record);
    let seen = sc.probe.seen();
    eprintln!(
        "{what}:\n  source: {:?}\n  destination: {:?}\n  held: {seen:?}",
        run.src.as_ref().map(|r| r.restored_pid),
        run.dst.as_ref().map(|r| r.child.pid())
    );
    let seen = seen.unwrap_or_else(|| panic!("{what}: the held source was sampled"));
    assert!(
        seen.held(),
        "{what}: the source was stopped and did not count while held: {seen:?}"
    );
    let mut record = std::mem::take(&mut *record.lock().unwrap());
    expect_errors(&what, strategy, fault, &run);
    if matches!(fault, Fault::PageServerKilled | Fault::LazyCut) {
        let (pid, done) = record.daemon.expect("the daemon was found");
        assert!(done, "{what}: the fault was injected into daemon {pid}");
    }
    let stop = seen.seq;
    // The hosts' processes, right after the migration returned.
    let restored = run.dst.as_ref().ok().map(|d| d.child.pid());
    match fault.outcome() {
        Outcome::SourceRuns => {
            assert_eq!(
                aftermath::empty_netns(&sc.hosts.b, WAIT),
                Ok(()),
                "{what}: nothing left on host b"
            );
            assert!(sc.w.is_running() && sc.w.advances(WAIT), "{what}: runs on");
            assert_eq!(copies(&sc).len(), 1, "{what}: exactly one copy runs");
            let (now, ok) = sc.w.verify_memory(sc.w.pid(), WAIT).unwrap();
            assert!(ok && now == sum, "{what}: the source's memory is intact");
        }
        Outcome::DestRuns => {
            sc.w.reap(WAIT).unwrap();
            let pid = restored.expect("restored");
            sc.w.wait_for_seq(stop + 20, WAIT).unwrap();
            assert_eq!(
                copies(&sc),
                vec![pid],
                "{what}: only the restored copy runs"
            );
            let (now, ok) = sc.w.verify_memory(pid, WAIT).unwrap();
            assert!(ok && now == sum, "{what}: the restored memory is intact");
        }
        Outcome::Twice => {
            let pid = restored.expect("restored");
            sc.w.wait_for_seq(stop + 20, WAIT).unwrap();
            let mut both = copies(&sc);
            both.sort();
            let mut expected = vec![sc.w.pid(), pid];
            expected.sort();
            assert_eq!(
                both, expected,
                "{what}: the source and the restored copy run"
            );
        }
    }
    let ticks = sc.w.ticks();
    match (fault.outcome(), fault) {
        (Outcome::Twice, _) => {
            let both_count = criu_testkit::wait_until(WAIT, || {
                two_copies_from(&sc.w.ticks(), stop).is_ok_and(|twice| twice > 0)
            });
            let ticks = sc.w.ticks();
            let twice = two_copies_from(&ticks, stop).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                both_count,
                "{what}: both copies count on from {stop} ({twice})"
            );
        }
        // The restored copy ran until the destination saw its daemon fail
        // (the crate's docs say so): what it counted, the source counts again.
        (_, Fault::LazyCut) => {
            let twice = two_copies_from(&ticks, stop).unwrap_or_else(|e| panic!("{what}: {e}"));
            eprintln!("{what}: the restored copy counted {twice} before it was killed");
        }
        _ => consecutive(&ticks).unwrap_or_else(|e| panic!("{what}: {e}")),
    }
    match record.innocent.take() {
        Some(Innocent::Ours(mut innocent)) => assert!(
            innocent.is_running(),
            "{what}: the process that reused the source's pid was left alone"
        ),
        // Not ours: if it has ended, it may have done so by itself.
        Some(Innocent::Theirs(pid, started)) => {
            if criu_testkit::alive(pid) && start_time(pid) == started {
                eprintln!("{what}: pid {pid}, taken by another program first, still runs");
            } else {
                eprintln!("{what}: pid {pid}, taken by another program first, is gone");
            }
        }
        None if fault == Fault::PidReused => panic!("{what}: the pid was not reused"),
        None => {}
    }
    // The destination's directory: the images stay in a caller's after a
    // success, nothing after a failure. The in-memory ones: gone.
    let dst_left: Vec<_> = std::fs::read_dir(sc.side("dst"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    match (dirs, run.dst.is_ok()) {
        // Pre-copy's passes stay beside the images.
        (Dirs::WorkDir, true) => assert!(
            dst_left.iter().any(|n| n == "images")
                && dst_left.iter().all(|n| {
                    n == "images"
                        || (strategy == Strategy::PreCopy
                            && n.to_string_lossy().starts_with("pass-"))
                }),
            "{what}: {dst_left:?}"
        ),
        _ => assert!(dst_left.is_empty(), "{what}: left in dst: {dst_left:?}"),
    }
    assert_eq!(
        aftermath::shm_entries(),
        Vec::<PathBuf>::new(),
        "{what}: nothing left in /dev/shm"
    );
    // Then everything goes: nothing of the test's may outlive it.
    drop(run);
    drop(record);
    let Scene { hosts, dir, w, .. } = sc;
    drop(w);
    for h in [&hosts.a, &hosts.b] {
        assert_eq!(
            aftermath::empty_netns(h, WAIT),
            Ok(()),
            "{what}: nothing left in {}",
            h.name
        );
    }
    assert_eq!(
        aftermath::no_own_processes(dir.path(), WAIT),
        Ok(()),
        "{what}: no process of the test's own left"
    );
}

fn copies(sc: &Scene) -> Vec<i32> {
    aftermath::copies(Path::new(BIN), &sc.out)
}

/// Runs the migration of `sc`'s workload with `fault` injected.
fn migrate(sc: &Scene, strategy: Strategy, fault: Fault, dirs: Dirs, record: &Shared) -> Migration {
    let (src_dir, dst_dir) = (sc.side("src"), sc.side("dst"));
    let probe = sc.probe.clone();
    let pid = sc.w.pid();
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = (sc.hosts.b.netns_inode().unwrap(), sc.hosts.b.netns_path());
    let src_cfg = || {
        let c = SourceConfig::new(strategy);
        let c = match dirs {
            Dirs::InMemory => c,
            Dirs::WorkDir => c.work_dir(&src_dir),
        };
        let (probe, record, armed) = (probe.clone(), record.clone(), armed.clone());
        c.customize(move |o| {
            let (probe, record, armed) = (probe.clone(), record.clone(), armed.clone());
            o.on_notify(move |n| {
                // Only the dump sends it (not pre-copy's passes), once the
                // tree is stopped and seized, before its memory is dumped.
                if matches!(n.event, criu::Event::QueryExtFiles) {
                    armed.store(true, std::sync::atomic::Ordering::SeqCst);
                    if fault == Fault::PageServerKilled {
                        kill_page_server_once_pages_flow(b.0, &probe, &record);
                    }
                }
                std::ops::ControlFlow::Continue(())
            });
        })
    };
    let source_host = std::net::IpAddr::V4(sc.hosts.a.addr);
    let dst_cfg = || {
        // The stream may pass a relay on host b: the lazy pages come from
        // host a, named (the destination connects nowhere else).
        let c = DestConfig::new()
            .deadline(Duration::from_secs(20))
            .criu_peer(source_host);
        let c = match dirs {
            Dirs::InMemory => c,
            Dirs::WorkDir => c.work_dir(&dst_dir),
        };
        let (probe, b) = (probe.clone(), b.0);
        c.customize(move |o| {
            // Just before the restore: the source must be held.
            probe.sample();
            match fault {
                Fault::RestoreRefused => {
                    o.join_ns(criu::Namespace::Uts, "/nonexistent-criu-rs-ns", None);
                }
                Fault::LazyCut => {
                    // Stopped at post-restore, so that pages are still to
                    // come when its connection is cut.
                    o.on_notify(move |n| {
                        if matches!(n.event, criu::Event::PostRestore) {
                            if let Some(d) = faults::criu_daemon(b, "lazy-pages") {
                                faults::signal(d, nix::sys::signal::Signal::SIGSTOP);
                            }
                        }
                        std::ops::ControlFlow::Continue(())
                    });
                }
                _ => {}
            }
        })
    };
    let relay: Option<RelayFn> = match fault {
        Fault::Cut => Some(faults::cut_after(armed.clone(), probe.clone(), CUT_AFTER)),
        Fault::LostEnd => Some(faults::lose_the_end()),
        Fault::PidReused => {
            // After the restore (and the lazy pages), as the source says
            // it will kill its copy: CRIU has let the tree go by then.
            let record = record.clone();
            let reuse: faults::Hook = Box::new(move || {
                record.lock().unwrap().innocent = reuse_pid(pid);
            });
            Some(faults::on_messages(None, Some(reuse)))
        }
        Fault::LazyCut => {
            // The tree restored and running, its daemon stopped.
            let (record, b) = (record.clone(), b.clone());
            let cut: faults::Hook = Box::new(move || cut_lazy_pages(&b, &record));
            Some(faults::on_messages(Some(cut), None))
        }
        _ => None,
    };
    sc.hosts
        .migrate_through(pid, src_cfg, dst_cfg, relay)
        .unwrap()
}

/// Kills `pid` (the init of a PID namespace, reaped by its `unshare`),
/// then starts an unrelated process under the same pid (clone3's
/// `set_tid`).
fn reuse_pid(pid: i32) -> Option<Innocent> {
    faults::signal(pid, nix::sys::signal::Signal::SIGKILL);
    if !criu_testkit::wait_gone(pid, WAIT) {
        return None;
    }
    match criu_testkit::pid::PidHolder::sleep_as(pid, Duration::from_secs(600)) {
        Ok(holder) => Some(Innocent::Ours(holder)),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            Some(Innocent::Theirs(pid, start_time(pid)))
        }
        Err(_) => None,
    }
}

/// At the source's query-ext-files (CRIU is connected to the page server,
/// no page sent yet): from another thread, waits until the destination's
/// page server has its pages image open, stops it with pages flowing
/// into it (written, or waiting unread on its connection), samples the
/// held source and kills the page server.
fn kill_page_server_once_pages_flow(b: u64, probe: &HeldProbe, record: &Shared) {
    let Some(server) = faults::criu_daemon(b, "page-server") else {
        return;
    };
    let (probe, record) = (probe.clone(), record.clone());
    std::thread::spawn(move || {
        let pages = || {
            faults::open_paths(server).into_iter().find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
            })
        };
        let mut file = None;
        let opened = criu_testkit::wait_until(WAIT, || {
            file = pages();
            file.is_some()
        });
        let arrived = || {
            let written = file
                .as_ref()
                .and_then(|f| std::fs::metadata(f).ok())
                .map_or(0, |m| m.len());
            let queued: u64 = faults::tcp_connections(server)
                .iter()
                .map(|c| c.rx_queue)
                .sum();
            written + queued
        };
        let flowing = opened && stop_once_pages_flow(server, arrived);
        probe.sample();
        let bytes = arrived();
        // Recorded first: the migration may return as soon as it is dead.
        record.lock().unwrap().daemon = Some((server, flowing));
        faults::signal(server, nix::sys::signal::Signal::SIGKILL);
        eprintln!("page server {server} killed after {bytes} bytes of pages");
    });
}

/// Stops `server` with pages flowing into it: more than 64 KiB `arrived`
/// (the protocol's own messages are far smaller).
///
/// The server opens the pages image before it answers the dump's request
/// to open it: a stop that lands between the two leaves the dump waiting
/// for that answer and no page ever flows. So a stop that sees no pages
/// within `TRY` is undone, and the server runs a moment before the next.
fn stop_once_pages_flow(server: i32, arrived: impl Fn() -> u64) -> bool {
    const TRY: Duration = Duration::from_millis(500);
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        faults::signal(server, nix::sys::signal::Signal::SIGSTOP);
        if criu_testkit::wait_until(TRY, || arrived() > 64 << 10) {
            return true;
        }
        faults::signal(server, nix::sys::signal::Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// When the destination's `Restored` passes: cuts the (stopped) lazy-pages
/// daemon's connection to the source (`ss -K`, a reset at both ends), and
/// continues it.
fn cut_lazy_pages(b: &(u64, PathBuf), record: &Shared) {
    let Some(daemon) = faults::criu_daemon(b.0, "lazy-pages") else {
        return;
    };
    let conns = faults::tcp_connections(daemon);
    let cut = conns
        .iter()
        .all(|c| faults::cut_connection(&b.1, c.local_port, c.remote).is_ok());
    faults::signal(daemon, nix::sys::signal::Signal::SIGCONT);
    eprintln!("lazy-pages daemon {daemon}: cut {conns:?}");
    record.lock().unwrap().daemon = Some((daemon, cut && !conns.is_empty()));
}

/// The errors each fault must give, by type and kind.
fn expect_errors(what: &str, strategy: Strategy, fault: Fault, run: &Migration) {
    let step = |e: &criu::Error| e.migration_error().map(|m| m.step());
    match fault {
        Fault::Cut => {
            let e = run.src.as_ref().expect_err(what);
            let d = run.dst.as_ref().expect_err(what);
            assert_eq!(e.source_state(), Some(SourceState::Resumed), "{what}: {e}");
            assert_eq!(step(d), Some(Step::Transfer), "{what}: {d}");
            assert_eq!(
                d.cause().transfer_kind(),
                Some(TransferKind::Truncated),
                "{what}: {d}"
            );
        }
        Fault::RestoreRefused => {
            let e = run.src.as_ref().expect_err(what);
            let d = run.dst.as_ref().expect_err(what);
            assert_eq!(e.source_state(), Some(SourceState::Resumed), "{what}: {e}");
            assert_eq!(step(e), Some(Step::Restore), "{what}: {e}");
            assert_eq!(step(d), Some(Step::Restore), "{what}: {d}");
            assert!(
                matches!(d.cause(), criu::Error::Refused { .. }),
                "{what}: {d}"
            );
            assert_eq!(
                d.cause().operation(),
                Some(criu::Operation::RestoreChild),
                "{what}: {d}"
            );
            // CRIU 4.2.1 rejects the join-ns option before it opens a log.
            assert_eq!(
                d.cause().errno(),
                Some(nix::errno::Errno::EBADRQC),
                "{what}: {d}"
            );
        }
        Fault::LostEnd => {
            let dst = run.dst.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(!dst.source_confirmed, "{what}: unconfirmed");
            let e = run.src.as_ref().expect_err(what);
            assert_eq!(
                e.source_state(),
                Some(SourceState::PossiblyRunningTwice),
                "{what}: {e}"
            );
        }
        Fault::PidReused => {
            let src = run.src.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
            let dst = run.dst.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(dst.source_confirmed, "{what}");
            assert_eq!(src.restored_pid, dst.child.pid(), "{what}");
        }
        Fault::PageServerKilled => {
            assert_eq!(strategy, Strategy::PageServer);
            let e = run.src.as_ref().expect_err(what);
            assert!(run.dst.is_err(), "{what}: the destination fails too");
            assert_eq!(e.source_state(), Some(SourceState::Resumed), "{what}: {e}");
            assert_eq!(step(e), Some(Step::Dump), "{what}: {e}");
            assert!(
                matches!(e.cause(), criu::Error::Refused { .. }),
                "{what}: {e}"
            );
        }
        Fault::LazyCut => {
            assert_eq!(strategy, Strategy::Lazy);
            let e = run.src.as_ref().expect_err(what);
            let d = run.dst.as_ref().expect_err(what);
            assert_eq!(e.source_state(), Some(SourceState::Resumed), "{what}: {e}");
            assert_eq!(step(e), Some(Step::LazyPages), "{what}: {e}");
            assert_eq!(step(d), Some(Step::LazyPages), "{what}: {d}");
        }
    }
}

/// One test per cell: `STRATEGY::FAULT::{in_memory, work_dir}`.
macro_rules! matrix {
    ($($strategy:ident = $s:expr => [$($fault:ident = $f:expr),* $(,)?];)*) => {
        $(mod $strategy {
            use super::*;
            $(mod $fault {
                use super::*;
                #[test]
                fn in_memory() {
                    let id = concat!(stringify!($strategy), "::", stringify!($fault), "::in_memory");
                    run(id, $s, $f, Dirs::InMemory);
                }
                #[test]
                fn work_dir() {
                    let id = concat!(stringify!($strategy), "::", stringify!($fault), "::work_dir");
                    run(id, $s, $f, Dirs::WorkDir);
                }
            })*
        })*
    };
}

matrix! {
    stop_and_copy = Strategy::StopAndCopy => [
        cut = Fault::Cut,
        restore_refused = Fault::RestoreRefused,
        lost_end = Fault::LostEnd,
        pid_reused = Fault::PidReused,
    ];
    page_server = Strategy::PageServer => [
        cut = Fault::Cut,
        restore_refused = Fault::RestoreRefused,
        lost_end = Fault::LostEnd,
        pid_reused = Fault::PidReused,
        page_server_killed = Fault::PageServerKilled,
    ];
    lazy = Strategy::Lazy => [
        cut = Fault::Cut,
        restore_refused = Fault::RestoreRefused,
        lost_end = Fault::LostEnd,
        pid_reused = Fault::PidReused,
        lazy_pages_cut = Fault::LazyCut,
    ];
    pre_copy = Strategy::PreCopy => [
        cut = Fault::Cut,
        restore_refused = Fault::RestoreRefused,
        lost_end = Fault::LostEnd,
        pid_reused = Fault::PidReused,
    ];
}
