//! Promises under faults: a failed checkpoint leaves the process running, a
//! failed restore leaves no half-built tree, bad input is a typed error.
//! Real CRIU, as root.

use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc;
use std::time::Duration;

use criu::{Criu, Error, Event, ImagesDir, InvalidKind, Options};
use criu_testkit::damage::{restore_fails, truncate_image};
use criu_testkit::scratch::Scratch;
use criu_testkit::{aftermath, alive, find_process, fixture, wait_until, KillOnDrop, Workload};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn an_expired_dump_deadline_kills_criu_and_leaves_the_process_running() {
    let dir = Scratch::new();
    let mut w = dir.counter(1);
    let sum = w.memory_checksum().unwrap();
    let images = dir.images("img");
    // A criu of a unique name, so that the closure can tell when this
    // call's CRIU is gone (tests run in parallel, each with its own CRIU).
    // CRIU retitles itself "NAME: dump ...", so the name must be unique.
    let name = format!("criu-deadline-{}", w.pid());
    let criu_bin = dir.path().join(&name);
    std::os::unix::fs::symlink(criu_path(), &criu_bin).unwrap();
    let deadline = Duration::from_millis(300);
    // The pre-dump notification holds the dump until the watchdog has
    // killed CRIU: the deadline passes whatever the machine's speed.
    let e = Criu::with_binary(&criu_bin)
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .log_file("dump.log")
                .deadline(deadline)
                .on_notify(|n| {
                    if matches!(n.event, criu::Event::PreDump) {
                        assert!(
                            wait_until(WAIT, || find_process(&name).is_none()),
                            "the watchdog did not kill CRIU"
                        );
                    }
                    std::ops::ControlFlow::Continue(())
                }),
        )
        .unwrap_err();
    assert!(e.is_deadline_exceeded(), "{e}");
    assert!(
        matches!(e, Error::DeadlineExceeded { deadline: d, .. } if d == deadline),
        "{e}"
    );
    assert_eq!(e.operation(), Some(criu::Operation::Dump));
    assert!(e.to_string().contains("is still running"), "{e}");
    assert!(w.is_running());
    assert!(
        w.advances(WAIT),
        "the process runs on after the interrupted dump"
    );
    let (after, ok) = w.verify_memory(w.pid(), WAIT).unwrap();
    assert!(ok && after == sum, "its memory is intact");
    assert!(!images.holds_images(), "no checkpoint was completed");
}

#[test]
fn a_restore_that_would_hang_is_cut_by_the_deadline_and_leaves_nothing() {
    // A truncated pages image makes CRIU 4.2.1's restorer spin forever.
    let dir = Scratch::new();
    let (w, images) = fixture::dumped(dir.path(), 1);
    let criu = Criu::new();
    truncate_image(&images, "pages-");
    // restore_child first: the detached restore's killed task is left to
    // PID 1 to reap, which a harness's PID 1 may never do, and its zombie
    // would keep the pid from the next restore.
    for child in [true, false] {
        let mut o = Options::new();
        // The crate's image check would refuse these images before CRIU
        // starts (hardening.rs); off, to test the deadline on CRIU's hang.
        o.images_dir(&images)
            .log_file("restore.log")
            .verify_images(false)
            .deadline(Duration::from_secs(3));
        let e = if child {
            criu.restore_child(&mut o).map(|_| ()).unwrap_err()
        } else {
            criu.restore(&mut o).map(|_| ()).unwrap_err()
        };
        assert!(e.is_deadline_exceeded(), "{e}");
        assert!(
            criu_testkit::wait_gone(w.pid(), Duration::from_secs(5)) || !alive(w.pid()),
            "no restored task is left"
        );
        assert!(!alive(w.pid()));
    }
}

#[test]
fn a_deadline_that_is_not_reached_changes_nothing() {
    let dir = Scratch::new();
    let mut w = dir.counter(1);
    let sum = w.memory_checksum().unwrap();
    let images = dir.images("img");
    let criu = Criu::new();
    let dump = criu
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .log_file("dump.log")
                .deadline(Duration::from_secs(60)),
        )
        .unwrap();
    w.reap(WAIT).unwrap();
    // The same report as without a deadline: the pid, CRIU's statistics.
    assert_eq!(dump.pid, w.pid());
    let stats = dump
        .stats
        .expect("stats-dump is read as without a deadline");
    assert!(stats.pages_written >= 256, "1 MiB at least: {stats:?}");
    assert_eq!(images.root_pid().unwrap(), w.pid());
    let seq = w.last_seq();
    let (mut child, report) = criu
        .restore_child(
            Options::new()
                .images_dir(&images)
                .log_file("restore.log")
                .deadline(Duration::from_secs(60)),
        )
        .unwrap();
    w.forget();
    assert_eq!(child.pid(), report.pid);
    assert_eq!(
        report.pid,
        w.pid(),
        "the original pid, as without a deadline"
    );
    assert!(report.stats.is_some(), "stats-restore is read");
    w.wait_for_seq(seq + 5, WAIT).unwrap();
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "the restored root is our child"
    );
    let ticks = w.ticks();
    assert!(
        ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1),
        "the counter went on without repeat or reset"
    );
    let (after, ok) = w.verify_memory(child.pid(), WAIT).unwrap();
    assert!(ok && after == sum, "memory intact");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_dump_to_an_unreachable_page_server_leaves_the_process_running() {
    let dir = Scratch::new();
    let mut w = dir.counter(8);
    let images = dir.images("img");
    // Nothing listens on this port.
    let addr = criu_testkit::free_port("127.0.0.1".parse().unwrap()).unwrap();
    let e = Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .log_file("dump.log")
                .page_server(addr),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    assert!(!e.log_errors().is_empty(), "{e}");
    assert!(w.is_running() && w.advances(WAIT));
}

#[test]
fn a_corrupted_inventory_is_a_clear_error_and_leaves_nothing() {
    let dir = Scratch::new();
    let (w, images) = fixture::dumped(dir.path(), 1);
    let criu = Criu::new();
    let inv = images.path().join("inventory.img");
    let mut bytes = std::fs::read(&inv).unwrap();
    for b in bytes.iter_mut().skip(4) {
        *b ^= 0xA5;
    }
    std::fs::write(&inv, bytes).unwrap();
    // A deadline, and a restore that unexpectedly succeeds is killed rather
    // than leaked as a detached process.
    let e = restore_fails(
        &criu,
        Options::new()
            .images_dir(&images)
            .log_file("restore.log")
            .deadline(WAIT),
        "a corrupted inventory",
    );
    // CRIU 4.2.1 refuses some corruptions and aborts on others (a BUG in
    // bfd.c), which breaks the connection; either way the error says so.
    assert!(
        matches!(e, Error::Refused { .. } | Error::Communication { .. }),
        "{e}"
    );
    assert!(!e.log_errors().is_empty(), "{e}");
    assert!(
        criu_testkit::dies_soon(w.pid()),
        "nothing from the images is left"
    );
}

#[test]
fn more_bad_input_is_rejected_before_criu_runs() {
    let dir = Scratch::new();
    let mut w = dir.counter(0);
    let criu = Criu::new();
    let images = dir.images("img");

    // An inherit-fd that is closed: a number above any open descriptor
    // (other test threads may reuse a number we just closed).
    // SAFETY: the crate only asks the kernel about this number
    // (F_GETFD) and rejects it; it is never read or written.
    let stale = unsafe { std::os::fd::BorrowedFd::borrow_raw(1 << 20) };
    let null = std::fs::File::open("/dev/null").unwrap();
    // Each dump below is refused as malformed, by the crate.
    let dump_of_w = || {
        let mut o = Options::new();
        o.pid(w.pid()).images_dir(&images);
        o
    };
    let malformed = |o: &mut Options<'_>| {
        let e = criu.dump(o).unwrap_err();
        assert_eq!(e.invalid_kind(), Some(InvalidKind::Malformed), "{e}");
    };
    malformed(dump_of_w().add_inherit_fd(stale, "fd[1]:x"));
    // Empty external keys, an empty inherit-fd key.
    malformed(dump_of_w().add_external("  "));
    malformed(dump_of_w().add_ext_mount("", "/mnt"));
    malformed(dump_of_w().add_inherit_fd(null.as_fd(), ""));
    // Parent images outside the checkpoint root.
    malformed(dump_of_w().parent_images("../../elsewhere"));
    malformed(dump_of_w().parent_images("/abs/path"));
    let other = dir.images("nested-root-a");
    assert_eq!(
        images.parent_link(&other).unwrap(),
        std::path::Path::new("../nested-root-a"),
        "siblings link as ../name"
    );
    std::fs::create_dir(dir.path().join("deeper")).unwrap();
    let deep = dir.images("deeper/pre");
    let e = images.parent_link(&deep).unwrap_err();
    assert_eq!(
        e.invalid_kind(),
        Some(InvalidKind::Malformed),
        "not a sibling: {e}"
    );

    // A deadline with a service address is a conflict, found before CRIU runs.
    let e = Criu::with_service_address("/nonexistent.sock")
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .deadline(Duration::from_secs(1)),
        )
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Conflict), "{e}");

    assert!(
        w.is_running() && w.advances(WAIT),
        "nothing touched the process"
    );
    assert!(!images.holds_images());
}

/// A read-only tmpfs mounted for one test, unmounted on drop.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(at: &std::path::Path) -> ReadOnlyMount {
        std::fs::create_dir(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "criu-rs-test"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a read-only tmpfs");
        ReadOnlyMount(at.to_path_buf())
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_dump_into_a_read_only_images_directory_fails_clearly_and_the_process_runs() {
    // root may write anywhere except on a read-only filesystem.
    let dir = Scratch::new();
    let mut w = dir.counter(0);
    let ro = ReadOnlyMount::new(&dir.path().join("ro"));
    let e = ImagesDir::create(ro.0.join("img")).unwrap_err();
    assert!(e.to_string().contains("Read-only file system"), "{e}");
    let images = ImagesDir::open(&ro.0).unwrap();
    let e = Criu::new()
        .dump(Options::new().pid(w.pid()).images_dir(&images))
        .unwrap_err();
    // CRIU cannot create its log in a read-only directory, so there are no
    // log lines to quote; the error says it was refused.
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    assert!(e.log_errors().is_empty(), "{e}");
    assert_eq!(e.operation(), Some(criu::Operation::Dump));
    assert!(w.is_running() && w.advances(WAIT), "the process runs on");

    // With a writable work directory, CRIU's log is there and the error
    // quotes the lines that name the cause.
    let (work, work_fd) = dir.work_dir();
    let e = Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .work_dir(&work_fd)
                .log_file("dump.log"),
        )
        .unwrap_err();
    eprintln!("read-only with a work dir: {e}");
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    assert!(work.join("dump.log").exists(), "the log is in the work dir");
    assert!(
        e.log_errors()
            .iter()
            .any(|l| l.contains("Read-only file system")),
        "{e}"
    );
    assert!(w.is_running() && w.advances(WAIT), "the process runs on");
}

#[test]
fn a_zombie_is_not_dumped() {
    let dir = Scratch::new();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    // Not reaped yet: it stays a zombie until wait().
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    let images = dir.images("img");
    let e = Criu::new()
        .dump(Options::new().pid(pid).images_dir(&images))
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::NoSuchProcess), "{e}");
    assert!(e.to_string().contains("zombie"), "{e}");
    child.wait().unwrap();
}

/// The `criu` binary on `PATH`.
fn criu_path() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("criu"))
        .find(|p| p.is_file())
        .expect("criu on PATH")
}

#[test]
fn a_cli_only_value_criu_would_split_is_refused_before_criu_runs() {
    // CRIU's TLS files are CLI-only options, written into a config file in
    // which CRIU splits a line at spaces: a path with a space would reach
    // CRIU as another option. The request is refused before CRIU starts.
    let dir = Scratch::new();
    let mut w = dir.counter(0);
    let images = dir.images("img");
    let tls = criu::tls::TlsFiles::new("/my certs/ca.pem", "/c.pem", "/k.pem");
    let e = Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .page_server("127.0.0.1:1".parse().unwrap())
                .criu_tls(&tls),
        )
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Malformed), "{e}");
    assert!(
        e.to_string().contains("my certs"),
        "the value is named: {e}"
    );
    assert!(!images.holds_images());
    assert!(
        w.is_running() && w.advances(WAIT),
        "the process is untouched"
    );
}

/// How a late-refusal test restores.
#[derive(Debug, Clone, Copy)]
enum Restore {
    /// `restore_child`, with or without a deadline.
    Child { deadline: bool },
    /// `restore` (detached), with or without a deadline.
    Detached { deadline: bool },
}

const EVERY_RESTORE: [Restore; 4] = [
    Restore::Child { deadline: false },
    Restore::Child { deadline: true },
    Restore::Detached { deadline: false },
    Restore::Detached { deadline: true },
];

/// Restores a freshly dumped counter with `how`, refusing CRIU's
/// notification `refused` (one that comes after CRIU created the tree),
/// and checks that the restore fails with that refusal within a minute
/// (it hung before) and leaves no restored copy: the process CRIU named
/// at post-restore (by pid and start time) is dead, and gone when it was
/// restored as our child. Then restores the same images again.
///
/// The counter is the init of its own PID namespace: a detached copy,
/// killed, is reaped by the PID 1 it was left to, which may be slow or
/// never do it (a harness's own PID 1), and a restore into a new PID
/// namespace needs no pid that such a zombie holds.
fn refused_late(refused: Event, how: Restore) {
    let what = format!("{how:?} refusing {}", refused.name());
    let dir = Scratch::new();
    let mut w = Workload::spawn_in_pid_ns(
        env!("CARGO_BIN_EXE_criu-rs-workload").as_ref(),
        &dir.path().join("out.log"),
        fixture::TICK,
        1,
    )
    .unwrap();
    let images = dir.images("img");
    Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .log_file("dump.log"),
        )
        .unwrap();
    w.reap(WAIT).unwrap();
    let sum = w.memory_checksum();
    let (seq, size) = (w.last_seq(), std::fs::metadata(w.output()).unwrap().len());
    let images_path = images.path().to_path_buf();
    drop(images);
    let refused_name = refused.name().to_string();
    let (tx, rx) = mpsc::channel();
    // On a thread of its own, so that a hang fails the test instead of
    // holding it.
    std::thread::spawn(move || {
        let images = ImagesDir::open(&images_path).unwrap();
        let mut root = None;
        let mut o = Options::new();
        o.images_dir(&images)
            .log_file("restore.log")
            .on_notify(|n| {
                if let (Event::PostRestore, Some(pid)) = (&n.event, n.pid) {
                    root = Some((pid, aftermath::start_time(pid)));
                }
                match n.event.name() == refused_name {
                    true => ControlFlow::Break("refused by the test".into()),
                    false => ControlFlow::Continue(()),
                }
            });
        let (Restore::Child { deadline } | Restore::Detached { deadline }) = how;
        if deadline {
            o.deadline(WAIT);
        }
        let criu = Criu::new();
        let r = match how {
            Restore::Child { .. } => criu.restore_child(&mut o).map(|(c, _)| c.detach()),
            Restore::Detached { .. } => criu.restore(&mut o).map(|r| r.pid),
        };
        drop(o);
        let _ = tx.send((r, root));
    });
    let (r, root) = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: the restore hung"));
    let e = match r {
        Ok(pid) => {
            let _kill = KillOnDrop(pid);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            panic!("{what}: restored as pid {pid} despite the refusal");
        }
        Err(e) => e,
    };
    eprintln!("{what}: {e}");
    assert!(
        matches!(&e, Error::NotificationRefused { event, .. } if event == refused.name()),
        "{what}: {e}"
    );
    let Some((pid, Some(start))) = root else {
        panic!("{what}: CRIU named no restored root at post-restore: {root:?}");
    };
    match how {
        // Our child: killed and reaped before restore_child returned.
        Restore::Child { .. } => assert!(
            !aftermath::still_there(pid, start),
            "{what}: the restored copy {pid} is left ({:?})",
            criu_testkit::task_state(pid)
        ),
        // CRIU's child, then PID 1's: killed (dead, if not yet reaped by
        // PID 1) before restore returned.
        Restore::Detached { .. } => assert!(
            !(alive(pid) && aftermath::still_there(pid, start)),
            "{what}: the restored copy {pid} still runs"
        ),
    }
    // The images are intact: they restore. The killed copy may have
    // counted on before it died, and CRIU restores an open file only at
    // the size it had at the dump: its writer gone, the output goes back
    // to that size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(w.output())
        .unwrap()
        .set_len(size)
        .unwrap();
    let images = ImagesDir::open(dir.path().join("img")).unwrap();
    let (mut child, report) = Criu::new()
        .restore_child(Options::new().images_dir(&images).log_file("again.log"))
        .unwrap_or_else(|e| panic!("{what}: the second restore: {e}"));
    w.forget();
    assert_eq!(report.pid, child.pid(), "{what}");
    w.wait_for_seq(seq + 3, WAIT).unwrap();
    let (now, ok) = w.verify_memory(child.pid(), WAIT).unwrap();
    assert!(ok && Some(now) == sum, "{what}: memory intact");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn refusing_pre_resume_kills_and_reaps_the_restored_tree() {
    for how in EVERY_RESTORE {
        refused_late(Event::PreResume, how);
    }
}

#[test]
fn refusing_post_resume_kills_and_reaps_the_restored_tree() {
    for how in EVERY_RESTORE {
        refused_late(Event::PostResume, how);
    }
}

/// What the pipe `r` gave within `WAIT` (polling, so a silent pipe
/// fails the test instead of holding it): the text up to the first
/// "tick", or why none came.
fn tick_from(r: &std::os::fd::OwnedFd) -> Result<String, String> {
    let end = std::time::Instant::now() + WAIT;
    let mut text = String::new();
    while !text.contains("tick") {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!("no tick in {WAIT:?}: {text:?}"));
        }
        let mut p = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 64];
        match nix::unistd::read(r.as_raw_fd(), &mut buf) {
            Ok(0) => return Err(format!("end of file after {text:?}")),
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("{e} after {text:?}")),
        }
    }
    Ok(text)
}

#[test]
fn restore_child_hands_inherited_descriptors_to_the_criu_it_starts() {
    // restore_child starts its own CRIU (not libcriu's fork): the
    // descriptors of `--inherit-fd` must reach it at their numbers.
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.02)",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(w)
    .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    criu_testkit::close_inherited_fds(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let _kill = KillOnDrop(pid);
    tick_from(&r).unwrap();
    let inode = nix::sys::stat::fstat(r.as_raw_fd()).unwrap().st_ino;
    let dir = Scratch::new();
    let images = dir.images("img");
    Criu::new()
        .dump(
            Options::new()
                .pid(pid)
                .images_dir(&images)
                .log_file("dump.log"),
        )
        .unwrap();
    child.wait().unwrap();
    drop(r);
    for deadline in [false, true] {
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let mut o = Options::new();
        o.images_dir(&images)
            .log_file("restore.log")
            .add_inherit_fd(w2.as_fd(), format!("pipe:[{inode}]"));
        if deadline {
            o.deadline(WAIT);
        }
        let (mut restored, _) = Criu::new()
            .restore_child(&mut o)
            .unwrap_or_else(|e| panic!("deadline {deadline}: {e}"));
        drop(o);
        drop(w2);
        let tick = tick_from(&r2);
        let status = restored.try_wait();
        restored.kill().unwrap();
        restored.wait().unwrap();
        if let Err(e) = tick {
            panic!(
                "deadline {deadline}: the restored process does not write to our pipe: {e} \
                 (the process: {status:?})"
            );
        }
    }
}
