//! criu-rs against real CRIU: dump, restore, notifications, reports.
//! Needs root, like CRIU. Each test makes its own workload and directories
//! and removes them; tests may run in parallel.

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use criu::{Criu, DaemonConfig, Error, Event, ImagesDir, InvalidKind, Iteration, Options};
use criu_testkit::{alive, wait_gone, KillOnDrop, Workload};

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const TICK: Duration = Duration::from_millis(1);
const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        // CRIU_RS_TEST_KEEP=1 keeps the images and logs for a post-mortem.
        if std::env::var_os("CRIU_RS_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.dir.path().display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
        }
    }
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::Builder::new()
                .prefix("criu-rs-test-")
                .tempdir()
                .unwrap(),
        }
    }
    fn images(&self, name: &str) -> ImagesDir {
        ImagesDir::create(self.dir.path().join(name)).unwrap()
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn workload(&self, mib: usize) -> Workload {
        Workload::spawn(BIN.as_ref(), &self.path("out.log"), TICK, mib).unwrap()
    }
}

#[test]
fn dump_and_restore_continue_the_counter_and_keep_memory() {
    let s = Setup::new();
    let mut w = s.workload(8);
    let sum_before = w.memory_checksum().expect("workload reports its checksum");
    w.wait_for_seq(20, WAIT).unwrap();
    let images = s.images("img");
    let criu = Criu::new();
    let dump = criu
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .log_file("dump.log"),
        )
        .unwrap();
    w.reap(WAIT).unwrap();
    let seq_at_dump = w.last_seq();
    assert_eq!(dump.pid, w.pid());
    let stats = dump.stats.expect("CRIU wrote stats-dump");
    assert!(stats.pages_written >= 8 * 256, "8 MiB at least: {stats:?}");
    assert!(stats.frozen_time > Duration::ZERO);

    let restored = criu
        .restore(Options::new().images_dir(&images).log_file("restore.log"))
        .unwrap();
    let _guard = KillOnDrop(restored.pid);
    assert_eq!(restored.pid, w.pid(), "CRIU restores the original pid");
    assert!(restored.stats.is_some(), "CRIU wrote stats-restore");
    w.wait_for_seq(seq_at_dump + 20, WAIT).unwrap();

    // No repeat, no reset: the sequence is 1, 2, 3, ... without a gap.
    let ticks = w.ticks();
    for (i, t) in ticks.iter().enumerate() {
        assert_eq!(t.seq, i as u64 + 1, "tick {i} of the counter");
    }
    let (sum_after, ok) = w.verify_memory(restored.pid, WAIT).unwrap();
    assert!(ok, "the restored process found its memory pattern changed");
    assert_eq!(sum_after, sum_before);
}

#[test]
fn a_criu_service_serves_dumps_and_restores_and_goes_on_drop() {
    let s = Setup::new();
    let mut w = s.workload(1);
    let svc = DaemonConfig::new().service().unwrap();
    let service_pid = svc.pid().expect("running") as i32;
    let socket = svc.socket().to_path_buf();
    let criu = svc.client();

    let images = s.images("img");
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&images)
            .log_file("dump.log"),
    )
    .unwrap();
    w.reap(WAIT).unwrap();
    let seq = w.last_seq();
    let restored = criu
        .restore(Options::new().images_dir(&images).log_file("restore.log"))
        .unwrap();
    let _guard = KillOnDrop(restored.pid);
    assert_eq!(restored.pid, w.pid());
    w.wait_for_seq(seq + 5, WAIT).unwrap();
    assert!(alive(service_pid), "the service outlives its requests");

    // It refuses what needs a CRIU of the crate's own.
    let images2 = s.images("img2");
    let e = criu
        .dump(
            Options::new()
                .pid(restored.pid)
                .images_dir(&images2)
                .deadline(WAIT),
        )
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Conflict), "{e}");

    drop(svc);
    assert!(!alive(service_pid), "dropping the service ends it");
    assert!(!socket.exists(), "and removes its directory");
    let e = criu.check().unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
}

#[test]
fn leave_running_keeps_the_process_going() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let images = s.images("img");
    Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .leave_running(true),
        )
        .unwrap();
    assert!(images.holds_images());
    assert!(w.is_running());
    assert!(w.advances(WAIT));
}

#[test]
fn shell_job_dumps_a_job_of_a_shells_session() {
    let s = Setup::new();
    let mut w = Workload::spawn_shell_job(BIN.as_ref(), &s.path("out.log"), TICK).unwrap();
    let criu = Criu::new();
    let without = s.images("without");
    let err = criu
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&without)
                .leave_running(true),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(
        !err.log_errors().is_empty(),
        "the error carries CRIU's log lines: {err}"
    );
    let with = s.images("with");
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&with)
            .leave_running(true)
            .shell_job(true),
    )
    .unwrap();
    assert!(w.is_running());
    assert!(w.advances(WAIT));
}

#[test]
fn restore_child_returns_an_owned_child_that_is_reaped() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let images = s.images("img");
    let criu = Criu::new();
    criu.dump(Options::new().pid(w.pid()).images_dir(&images))
        .unwrap();
    w.reap(WAIT).unwrap();
    let seq = w.last_seq();
    let (mut child, report) = criu
        .restore_child(Options::new().images_dir(&images))
        .unwrap();
    w.forget();
    assert_eq!(child.pid(), report.pid);
    assert_eq!(child.pid(), w.pid());
    w.wait_for_seq(seq + 5, WAIT).unwrap();
    assert_eq!(child.try_wait().unwrap(), None, "still running");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!alive(w.pid()));
    assert!(
        wait_gone(w.pid(), Duration::from_secs(2)),
        "reaped, not a zombie"
    );
}

#[test]
fn dropping_a_restored_child_kills_and_reaps_it() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let images = s.images("img");
    let criu = Criu::new();
    criu.dump(Options::new().pid(w.pid()).images_dir(&images))
        .unwrap();
    w.reap(WAIT).unwrap();
    let (child, _) = criu
        .restore_child(Options::new().images_dir(&images))
        .unwrap();
    w.forget();
    let pid = child.pid();
    assert!(alive(pid));
    drop(child);
    assert!(wait_gone(pid, Duration::from_secs(2)));
}

#[test]
fn feature_check_agrees_with_the_cli() {
    let f = Criu::new().feature_check().unwrap();
    let cli = |name: &str| {
        Command::new("criu")
            .args(["check", "--feature", name])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert_eq!(f.mem_track, cli("mem_dirty_track"));
    assert_eq!(f.lazy_pages, cli("uffd-noncoop"));
    assert_eq!(f.pidfd_store, cli("pidfd_store"));
}

#[test]
fn version_and_check() {
    let criu = Criu::new();
    criu.check().unwrap();
    let v = criu.version().unwrap();
    assert_eq!(v, criu::Version::of_headers());
    assert!(criu.version_at_least(criu::Version::new(4, 1, 0)).unwrap());
    assert!(!criu.version_at_least(criu::Version::new(99, 0, 0)).unwrap());
}

#[test]
fn pre_dump_and_dump_iters_follow_memory_tracking() {
    let s = Setup::new();
    let mut w = s.workload(1);
    let criu = Criu::new();
    let mem_track = criu.feature_check().unwrap().mem_track;
    let pre = s.images("pre");
    let r = criu.pre_dump(Options::new().pid(w.pid()).images_dir(&pre));
    let iters_dir = s.images("iters");
    let mut asked = 0;
    let aborted = criu.dump_iters(Options::new().pid(w.pid()).images_dir(&iters_dir), |_| {
        asked += 1;
        Iteration::Abort
    });
    if !mem_track {
        for e in [r.unwrap_err(), aborted.unwrap_err()] {
            assert!(e.is_unsupported(), "{e}");
            assert!(e.to_string().contains("soft-dirty"), "{e}");
        }
        assert_eq!(asked, 0, "CRIU was not asked to pre-dump");
    } else {
        r.unwrap();
        assert!(matches!(
            aborted.unwrap_err(),
            Error::Aborted { iterations: 1, .. }
        ));
        assert!(
            w.advances(WAIT),
            "an aborted iterative dump leaves the task running"
        );
        let fin = s.images("final");
        let rep = criu
            .dump_iters(Options::new().pid(w.pid()).images_dir(&fin), |n| {
                if n < 2 {
                    Iteration::Again
                } else {
                    Iteration::Final
                }
            })
            .unwrap();
        assert_eq!(rep.iterations, 2);
        w.reap(WAIT).unwrap();
    }
    assert!(w.is_running() || mem_track);
}

#[test]
fn notifications_arrive_in_order_with_pids() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let pid = w.pid();
    let images = s.images("img");
    let criu = Criu::new();
    let seen = RefCell::new(Vec::new());
    criu.dump(Options::new().pid(pid).images_dir(&images).on_notify(|n| {
        seen.borrow_mut().push((n.event.name().to_string(), n.pid));
        ControlFlow::Continue(())
    }))
    .unwrap();
    w.reap(WAIT).unwrap();
    let dump_events: Vec<String> = seen.borrow().iter().map(|(e, _)| e.clone()).collect();
    let pos = |name: &str| dump_events.iter().position(|e| e == name);
    assert!(
        pos("pre-dump").is_some() && pos("post-dump").is_some(),
        "{dump_events:?}"
    );
    assert!(pos("pre-dump") < pos("post-dump"), "{dump_events:?}");

    seen.borrow_mut().clear();
    let restored = criu
        .restore(Options::new().images_dir(&images).on_notify(|n| {
            seen.borrow_mut().push((n.event.name().to_string(), n.pid));
            ControlFlow::Continue(())
        }))
        .unwrap();
    let _guard = KillOnDrop(restored.pid);
    let events: Vec<String> = seen.borrow().iter().map(|(e, _)| e.clone()).collect();
    let expected = ["pre-restore", "post-restore", "pre-resume", "post-resume"];
    let positions: Vec<Option<usize>> = expected
        .iter()
        .map(|n| events.iter().position(|e| e == n))
        .collect();
    assert!(positions.iter().all(Option::is_some), "{events:?}");
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "{events:?}");
    let setup_ns = seen
        .borrow()
        .iter()
        .find(|(e, _)| e == "setup-namespaces")
        .map(|(_, p)| *p);
    if let Some(p) = setup_ns {
        assert_eq!(
            p,
            Some(restored.pid),
            "setup-namespaces carries the root pid"
        );
    }
}

#[test]
fn refusing_post_dump_fails_the_dump_and_leaves_the_process_running() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let images = s.images("img");
    let err = Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .on_notify(|n| match n.event {
                    Event::PostDump => ControlFlow::Break("not today".into()),
                    _ => ControlFlow::Continue(()),
                }),
        )
        .unwrap_err();
    match &err {
        Error::NotificationRefused { event, reason, .. } => {
            assert_eq!(event, "post-dump");
            assert_eq!(reason, "not today");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(w.is_running());
    assert!(
        w.advances(WAIT),
        "the process resumed after the refused dump"
    );
}

#[test]
fn a_panicking_notification_closure_is_contained_and_resumed() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let images = s.images("img");
    let criu = Criu::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        criu.dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .on_notify(|n| {
                    if matches!(n.event, Event::PostDump) {
                        panic!("handler bug");
                    }
                    ControlFlow::Continue(())
                }),
        )
    }));
    let payload = result.expect_err("the panic is resumed in the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"handler bug"));
    assert!(w.is_running());
    assert!(
        w.advances(WAIT),
        "the process resumed after the failed dump"
    );
    // libcriu is usable afterwards.
    criu.check().unwrap();
}

#[test]
fn bad_input_gives_typed_errors() {
    let s = Setup::new();
    let criu = Criu::new();
    let images = s.images("img");

    let e = criu
        .dump(Options::new().pid(0).images_dir(&images))
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Malformed), "{e}");
    let e = criu
        .dump(Options::new().pid(-5).images_dir(&images))
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Malformed), "{e}");
    let e = criu
        .dump(
            Options::new()
                .pid(std::process::id() as i32)
                .images_dir(&images),
        )
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Malformed), "{e}");
    // kthreadd is pid 2 only in the first PID namespace: look one up.
    match kernel_thread() {
        Some(kthread) => {
            let e = criu
                .dump(Options::new().pid(kthread).images_dir(&images))
                .unwrap_err();
            assert!(e.to_string().contains("kernel thread"), "{e}");
        }
        None => eprintln!("no kernel thread visible in this PID namespace; not tried"),
    }
    // A pid that does not exist: above pid_max.
    let e = criu
        .dump(Options::new().pid(i32::MAX).images_dir(&images))
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(e.invalid_kind(), Some(InvalidKind::NoSuchProcess));
    assert!(e.to_string().contains("dump"), "names the operation: {e}");

    let e = ImagesDir::open(s.path("missing")).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    std::fs::write(s.path("file"), b"x").unwrap();
    assert!(ImagesDir::open(s.path("file")).is_err());
    std::os::unix::fs::symlink(s.path("img"), s.path("link")).unwrap();
    let e = ImagesDir::open(s.path("link")).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");

    // Restore from an empty directory.
    let e = criu
        .restore(Options::new().images_dir(&images))
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::NoImages), "{e}");
    // Missing images dir entirely.
    let e = criu.restore(&mut Options::new()).unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Missing), "{e}");
    let e = criu
        .dump(
            Options::new()
                .pid(1)
                .images_dir(&images)
                .log_file("x/y.log"),
        )
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Malformed), "{e}");
}

#[test]
fn dump_refuses_a_directory_that_holds_images_unless_allowed() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let images = s.images("img");
    let criu = Criu::new();
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&images)
            .leave_running(true),
    )
    .unwrap();
    let reopened = ImagesDir::open(images.path()).unwrap();
    let e = criu
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&reopened)
                .leave_running(true),
        )
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::ImagesExist), "{e}");
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&reopened)
            .leave_running(true)
            .overwrite_images(true),
    )
    .unwrap();
    assert!(w.is_running());
}

/// Truncates the first image file whose name starts with `prefix` to half.
fn truncate_image(dir: &ImagesDir, prefix: &str) {
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* image"));
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

#[test]
fn restore_from_truncated_images_is_a_clear_error() {
    // (A truncated pages-*.img is not used here: CRIU 4.2.1's restorer then
    // spins forever instead of failing; see the deadline option.)
    for prefix in ["core-", "pstree", "mm-"] {
        let s = Setup::new();
        let mut w = s.workload(1);
        let images = s.images("img");
        let criu = Criu::new();
        criu.dump(Options::new().pid(w.pid()).images_dir(&images))
            .unwrap();
        w.reap(WAIT).unwrap();
        truncate_image(&images, prefix);
        // CRIU's own answer is the subject here, so the crate's image check
        // (which refuses some of these itself) is off; see hardening.rs.
        let e = criu
            .restore(
                Options::new()
                    .images_dir(&images)
                    .log_file("restore.log")
                    .verify_images(false),
            )
            .unwrap_err();
        eprintln!("truncated {prefix}: {e}");
        assert!(matches!(e, Error::Refused { .. }), "{e}");
        assert!(!e.log_errors().is_empty(), "{e}");
        assert!(
            criu_testkit::dies_soon(w.pid()),
            "no process from the images is left running"
        );
    }
}

#[test]
fn restore_while_the_pid_is_taken_says_so() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let images = s.images("img");
    let criu = Criu::new();
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&images)
            .leave_running(true),
    )
    .unwrap();
    let e = criu
        .restore(Options::new().images_dir(&images).log_file("restore.log"))
        .unwrap_err();
    eprintln!("pid taken: {e}");
    assert!(e.is_pid_in_use(), "{e}");
    assert!(w.is_running());
}

#[test]
fn threads_checkpointing_different_processes_all_succeed() {
    let s = Setup::new();
    let workloads: Vec<Workload> = (0..4)
        .map(|i| Workload::spawn(BIN.as_ref(), &s.path(&format!("out{i}.log")), TICK, 0).unwrap())
        .collect();
    let dirs: Vec<ImagesDir> = (0..4).map(|i| s.images(&format!("img{i}"))).collect();
    let criu = Criu::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = workloads
            .iter()
            .zip(&dirs)
            .map(|(w, d)| {
                let criu = &criu;
                scope.spawn(move || {
                    criu.dump(
                        Options::new()
                            .pid(w.pid())
                            .images_dir(d)
                            .leave_running(true),
                    )
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    });
    for d in &dirs {
        assert!(d.holds_images());
    }
}

#[test]
fn two_dumps_of_one_pid_at_once_one_is_refused_cleanly() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let a = s.images("a");
    let b = s.images("b");
    let criu = Criu::new();
    let barrier = std::sync::Barrier::new(2);
    let (ra, rb) = std::thread::scope(|scope| {
        let ha = scope.spawn(|| {
            criu.dump(
                Options::new()
                    .pid(w.pid())
                    .images_dir(&a)
                    .leave_running(true)
                    .on_notify(|n| {
                        if matches!(n.event, Event::PreDump) {
                            barrier.wait();
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        ControlFlow::Continue(())
                    }),
            )
        });
        barrier.wait();
        let rb = criu.dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&b)
                .leave_running(true),
        );
        (ha.join().unwrap(), rb)
    });
    ra.unwrap();
    assert_eq!(rb.unwrap_err().invalid_kind(), Some(InvalidKind::Busy));
    assert!(w.is_running());
    assert!(w.advances(WAIT));
}

#[test]
fn reports_serialise_with_criu_field_names() {
    let s = Setup::new();
    let mut w = s.workload(0);
    let images = s.images("img");
    let rep = Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .leave_running(true),
        )
        .unwrap();
    let json = serde_json::to_value(&rep).unwrap();
    for key in [
        "pid",
        "wall_time_us",
        "freezing_time",
        "frozen_time",
        "memdump_time",
        "memwrite_time",
        "pages_scanned",
        "pages_written",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    assert_eq!(json["pid"], w.pid());
    assert!(w.is_running());
    // The same statistics are readable later from the directory.
    let again = images.dump_stats().unwrap().unwrap().dump.unwrap();
    assert_eq!(Some(again), rep.stats);
}

#[test]
fn lazy_dump_lazy_pages_daemon_and_lazy_restore_on_one_machine() {
    let criu = Criu::new();
    if !criu.feature_check().unwrap().lazy_pages {
        panic!("this test needs userfaultfd (lazy pages); criu check --feature uffd-noncoop fails here");
    }
    let s = Setup::new();
    // Its own PID namespace: the lazily dumped tasks keep their pids until
    // every page is served, so the restore must not need the same ones.
    let mut w = Workload::spawn_in_pid_ns(BIN.as_ref(), &s.path("out.log"), TICK, 16).unwrap();
    let sum_before = w.memory_checksum().unwrap();
    w.wait_for_seq(20, WAIT).unwrap();
    let images = s.images("img");
    let addr = criu::free_port("127.0.0.1".parse().unwrap()).unwrap();
    let pid = w.pid();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();

    std::thread::scope(|scope| {
        let dumper = scope.spawn(|| {
            let criu = Criu::new();
            criu.dump(
                Options::new()
                    .pid(pid)
                    .images_dir(&images)
                    .log_file("dump.log")
                    .lazy_pages(true)
                    .lazy_pages_address(addr)
                    .on_notify(move |n| {
                        if matches!(n.event, Event::StatusReady) {
                            let _ = ready_tx.send(());
                        }
                        ControlFlow::Continue(())
                    }),
            )
        });
        ready_rx
            .recv_timeout(WAIT)
            .expect("the lazy dump reports status-ready once its page server listens");
        let daemon = criu::DaemonConfig::new().lazy_pages(&images, addr).unwrap();
        let restored = criu
            .restore(
                Options::new()
                    .images_dir(&images)
                    .log_file("restore.log")
                    .lazy_pages(true),
            )
            .unwrap();
        let _guard = KillOnDrop(restored.pid);
        let ticks_at_restore = w.last_seq();
        w.wait_for_seq(ticks_at_restore + 20, WAIT).unwrap();
        let (sum_after, ok) = w.verify_memory(restored.pid, WAIT).unwrap();
        assert!(ok, "memory pattern intact after lazy restore");
        assert_eq!(sum_after, sum_before);
        daemon
            .wait(WAIT)
            .expect("the lazy-pages daemon delivers every page and exits");
        let report = dumper
            .join()
            .unwrap()
            .expect("the lazy dump finishes once its pages are served");
        // CRIU 4.2.1 zeroes its counters when the lazy page server starts;
        // the crate drops such statistics rather than report zeros.
        if let Some(stats) = report.stats {
            assert!(
                stats.pages_lazy > 0,
                "pages were left for lazy transfer: {stats:?}"
            );
        }
        assert!(report.wall_time > Duration::ZERO);
        let ticks = w.ticks();
        assert!(
            ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1),
            "the counter continued without repeat or reset"
        );
    });
    w.reap(WAIT).unwrap();
}

/// A kernel thread's pid (PF_KTHREAD in /proc/PID/stat's flags), if this
/// PID namespace shows one.
fn kernel_thread() -> Option<i32> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let flags: u64 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(6)?
            .parse()
            .ok()?;
        (flags & PF_KTHREAD != 0).then_some(pid)
    })
}
