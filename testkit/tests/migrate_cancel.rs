//! Cancelling a migration (`criu::migrate::Cancel`) at each phase of each
//! strategy: the application runs exactly once, on the source, with its
//! memory intact, and nothing is left in /dev/shm or the process table.
//! Real CRIU between two network-namespace hosts. Needs root.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criu::migrate::{Cancel, DestConfig, SourceConfig, SourceState, Strategy};
use criu_testkit::hosts::{Migration, TwoHosts};
use criu_testkit::{aftermath, find_process, fixture, Workload};

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);

/// Where a test cancels.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The source, at CRIU's pre-dump notification.
    Dumping,
    /// The source, once the first image bytes went out.
    Transferring,
    /// The destination, at its restore's first notification.
    Restoring,
    /// The destination, at its restore's pre-resume notification: the
    /// tree is restored, and CRIU resumes it whatever the answer.
    Restored,
    /// The destination, at its restore's post-resume notification: the
    /// restored tree runs already.
    Resumed,
    /// The source, while a lazy dump serves pages to a destination whose
    /// lazy-pages daemon is stopped.
    LazyServing,
}

/// The restored copy CRIU named at post-restore, by pid and start time.
type Named = Arc<Mutex<Option<(i32, Option<u64>)>>>;

/// Live processes whose command line starts with the workload's binary
/// and names `out`: the source copy, and any restored copy.
fn copies(out: &Path) -> usize {
    let out = out.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.starts_with(BIN) && cmd.contains(&out) && criu_testkit::alive(pid)
        })
        .count()
}

/// Stops the lazy-pages daemon serving the destination from `dst_dir`
/// at post-restore (so the pages never all arrive) and then cancels
/// `cancel` a moment later, from another thread.
fn stop_daemon_then_cancel(o: &mut criu::Options<'_>, dst_dir: &Path, cancel: &Cancel) {
    let cancel = cancel.clone();
    let needle = dst_dir.to_string_lossy().into_owned();
    o.on_notify(move |n| {
        if matches!(n.event, criu::Event::PostRestore) {
            if let Some(p) = find_process(&needle) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGSTOP,
                );
            }
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                cancel.cancel();
            });
        }
        std::ops::ControlFlow::Continue(())
    });
}

/// Migrates a fresh 4 MiB workload with `strategy`, cancelling at
/// `phase`, and checks what must hold after any cancelled migration. Runs
/// with a `/dev/shm` of its own (`aftermath::isolated`), so that what the
/// crate leaves there is seen exactly, whatever runs beside it.
/// Every strategy: the built-in three, and pre-copy where CRIU can track
/// memory (soft-dirty bits, or the set-up's userfaultfd patch); without
/// it, pre-copy's absence is a loud skip, failing unless the Makefile
/// allow-lists it.
fn strategies() -> Vec<Strategy> {
    let mut all = Strategy::ALL.to_vec();
    if criu::Criu::new().feature_check().unwrap().mem_track {
        all.push(Strategy::PreCopy);
    } else {
        criu_testkit::skip::skip(
            "migrate_cancel::pre_copy",
            "CRIU cannot track memory changes here (no soft-dirty bits, and a CRIU \
             without patches/criu-uffd-wp-track.patch: run `make setup`)",
        );
    }
    all
}

fn cancel_at(strategy: Strategy, phase: Phase) {
    aftermath::isolated(|| cancel_at_in_isolation(strategy, phase));
}

fn cancel_at_in_isolation(strategy: Strategy, phase: Phase) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let out = dir.path().join("out.log");
    let mut w = hosts
        .a
        .run(|| Workload::spawn_in_pid_ns(BIN.as_ref(), &out, Duration::from_millis(1), 4))
        .unwrap()
        .unwrap();
    let sum = w.memory_checksum();
    w.wait_for_seq(20, WAIT).unwrap();
    let (src_dir, dst_dir) = fixture::migration_dirs(dir.path());
    let (source, dest) = (Cancel::new(), Cancel::new());
    let restored: Named = Arc::default();
    let src_cfg = || {
        let c = SourceConfig::new(strategy)
            .work_dir(&src_dir)
            .cancel(&source);
        match phase {
            Phase::Dumping => c.customize(|o| {
                let source = source.clone();
                o.on_notify(move |n| {
                    if matches!(n.event, criu::Event::PreDump) {
                        source.cancel();
                    }
                    std::ops::ControlFlow::Continue(())
                });
            }),
            Phase::Transferring => c.progress(|done, _| {
                if done > 0 {
                    source.cancel();
                }
            }),
            _ => c,
        }
    };
    // In memory (to see that nothing stays in /dev/shm), but for the
    // lazy daemon to stop, which is found by its images directory.
    let dst_cfg = || {
        let c = match phase {
            Phase::LazyServing => DestConfig::new().work_dir(&dst_dir),
            _ => DestConfig::new(),
        };
        let c = c.cancel(&dest).deadline(Duration::from_secs(5));
        match phase {
            Phase::Restoring => c.customize(|o| {
                let dest = dest.clone();
                o.on_notify(move |_| {
                    dest.cancel();
                    std::ops::ControlFlow::Continue(())
                });
            }),
            Phase::Restored | Phase::Resumed => c.customize(|o| {
                let (dest, restored) = (dest.clone(), restored.clone());
                let at = match phase {
                    Phase::Restored => "pre-resume",
                    _ => "post-resume",
                };
                o.on_notify(move |n| {
                    if let (criu::Event::PostRestore, Some(pid)) = (&n.event, n.pid) {
                        *restored.lock().unwrap() = Some((pid, aftermath::start_time(pid)));
                    }
                    if n.event.name() == at {
                        dest.cancel();
                    }
                    std::ops::ControlFlow::Continue(())
                });
            }),
            Phase::LazyServing => c.customize(|o| stop_daemon_then_cancel(o, &dst_dir, &source)),
            Phase::Dumping | Phase::Transferring => c,
        }
    };
    let Migration { src, dst } = hosts.migrate(w.pid(), src_cfg, dst_cfg, None).unwrap();
    let what = format!("{strategy} cancelled while {phase:?}");
    let e = src.expect_err(&what);
    let d = dst.expect_err(&what);
    eprintln!("{what}: {e}\n  / {d}");
    match phase {
        Phase::Restoring | Phase::Restored | Phase::Resumed => {
            assert!(d.is_cancelled(), "{what}: {d}")
        }
        _ => assert!(e.is_cancelled(), "{what}: {e}"),
    }
    assert!(
        matches!(
            e.source_state(),
            Some(SourceState::Resumed | SourceState::Untouched)
        ),
        "{what}: {e}"
    );
    assert!(
        w.is_running() && w.advances(WAIT),
        "{what}: the source runs on"
    );
    let (now, ok) = w.verify_memory(w.pid(), WAIT).unwrap();
    assert!(ok && Some(now) == sum, "{what}: its memory is intact");
    assert_eq!(copies(&out), 1, "{what}: exactly one copy runs");
    if matches!(phase, Phase::Restored | Phase::Resumed) {
        let seen = *restored.lock().unwrap();
        let Some((pid, Some(start))) = seen else {
            panic!("{what}: CRIU named no restored root at post-restore: {seen:?}");
        };
        assert!(
            !aftermath::still_there(pid, start),
            "{what}: the restored copy {pid} is left ({:?})",
            criu_testkit::task_state(pid)
        );
    }
    let needle = dst_dir.to_string_lossy().into_owned();
    assert!(
        find_process(&needle).is_none(),
        "{what}: no CRIU daemon of the destination is left"
    );
    assert_eq!(
        std::fs::read_dir(&dst_dir).unwrap().count(),
        0,
        "{what}: nothing left in the destination's work directory"
    );
    let left = aftermath::shm_entries();
    assert!(left.is_empty(), "{what}: left in /dev/shm: {left:?}");
}

#[test]
fn cancelling_while_dumping_resumes_the_source_for_every_strategy() {
    for strategy in strategies() {
        cancel_at(strategy, Phase::Dumping);
    }
}

#[test]
fn cancelling_while_transferring_resumes_the_source_for_every_strategy() {
    for strategy in strategies() {
        cancel_at(strategy, Phase::Transferring);
    }
}

#[test]
fn cancelling_the_destination_while_restoring_resumes_the_source_for_every_strategy() {
    for strategy in strategies() {
        cancel_at(strategy, Phase::Restoring);
    }
}

#[test]
fn cancelling_the_destination_once_restored_kills_the_copy_for_every_strategy() {
    for strategy in strategies() {
        cancel_at(strategy, Phase::Restored);
    }
}

#[test]
fn cancelling_the_destination_once_resumed_kills_the_copy_for_every_strategy() {
    for strategy in strategies() {
        cancel_at(strategy, Phase::Resumed);
    }
}

#[test]
fn cancelling_while_lazy_pages_are_served_resumes_the_source() {
    cancel_at(Strategy::Lazy, Phase::LazyServing);
}
