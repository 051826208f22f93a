//! The public API that the operation tests do not reach: other ways to
//! reach CRIU, the restored child's handle, daemon settings and failures,
//! the images directory's readers, the error accessors, strategy names.
//! Real CRIU and daemons, as root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use criu::migrate::Strategy;
use criu::{Criu, DaemonConfig, Error, ImagesDir, InvalidKind, Operation, Options};
use criu_testkit::{alive, fixture, wait_gone, wait_until};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn with_binary_starts_the_given_criu_and_a_missing_one_breaks_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("my-criu");
    let criu_path = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("criu"))
        .find(|p| p.is_file())
        .unwrap();
    std::os::unix::fs::symlink(criu_path, &link).unwrap();
    Criu::with_binary(&link).check().unwrap();
    assert_eq!(
        Criu::with_binary(&link).version().unwrap(),
        criu::Version::of_headers()
    );

    let e = Criu::with_binary(dir.path().join("no-such-criu"))
        .check()
        .unwrap_err();
    // libcriu forks, its child fails to exec, and the socket breaks: today
    // that is a Communication error, not Connect (whose docs name a
    // missing binary; reported with issue #18).
    assert!(matches!(e, Error::Communication { .. }), "{e:?}");
    assert_eq!(e.operation(), Some(Operation::Check), "{e}");
    assert!(e.context().is_some(), "{e}");
}

#[test]
fn with_service_fd_serves_one_request_then_says_the_socket_was_used() {
    let svc = DaemonConfig::new().service().unwrap();
    let criu = Criu::with_service_fd(criu_testkit::connect_seqpacket(svc.socket()).unwrap());
    criu.check().unwrap();
    let e = criu.check().unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Missing), "{e}");
    assert_eq!(e.operation(), Some(Operation::Check), "{e}");
    assert!(e.to_string().contains("used by an earlier request"), "{e}");
    assert!(svc.log_path().exists(), "the service logs to its directory");
}

#[test]
fn a_stopped_service_is_a_connect_error_with_its_context() {
    let svc = DaemonConfig::new().service().unwrap();
    // `Service::client` borrows the service, so it cannot outlive it; a
    // client made from the socket's address can, and must then fail cleanly.
    let criu = Criu::with_service_address(svc.socket());
    criu.check().unwrap();
    drop(svc);
    let e = criu.version().unwrap_err();
    assert!(e.is_connect(), "{e}");
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert_eq!(e.operation(), Some(Operation::Version));
    let ctx = e.context().expect("a CRIU error has a context");
    assert_eq!(ctx.operation, Some(Operation::Version));
    assert_eq!(ctx.pid, None);
}

#[test]
fn restored_child_signal_and_detach() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, images) = fixture::dumped(dir.path(), 0);
    let seq = w.last_seq();
    let (child, _) = Criu::new()
        .restore_child(Options::new().images_dir(&images).deadline(WAIT))
        .unwrap();
    w.forget();
    w.wait_for_seq(seq + 3, WAIT).unwrap();

    // signal: SIGSTOP stops the counter, SIGCONT lets it go on.
    child.signal(Signal::SIGSTOP).unwrap();
    assert!(wait_until(WAIT, || criu_testkit::task_state(child.pid()) == Some('T')));
    let stopped_at = w.last_seq();
    assert!(
        !w.advances(Duration::from_millis(300)),
        "a stopped child does not count (from {stopped_at})"
    );
    child.signal(Signal::SIGCONT).unwrap();
    assert!(w.advances(WAIT), "SIGCONT lets it go on");

    // detach: dropping the handle no longer kills it; we reap it ourselves.
    let pid = child.detach();
    assert!(alive(pid) && w.advances(WAIT), "detached, it runs on");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Signaled(
            nix::unistd::Pid::from_raw(pid),
            Signal::SIGTERM,
            false
        )
    );
    assert!(wait_gone(pid, WAIT));
}

#[test]
fn signalling_a_reaped_child_is_an_error_not_a_stray_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, images) = fixture::dumped(dir.path(), 0);
    let (mut child, _) = Criu::new()
        .restore_child(Options::new().images_dir(&images).deadline(WAIT))
        .unwrap();
    w.forget();
    child.kill().unwrap();
    child.wait().unwrap();
    let e = child.signal(Signal::SIGTERM).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn images_dir_readers_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, images) = fixture::dumped(dir.path(), 0);
    assert_eq!(
        std::fs::metadata(images.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700,
        "ImagesDir::create makes the directory 0700"
    );
    // read: inventory.img starts with CRIU's INVENTORY_MAGIC (magic.h).
    let inv = images.read("inventory.img").unwrap();
    assert_eq!(&inv[..4], &0x5831_3116u32.to_le_bytes(), "{:x?}", &inv[..8]);
    let e = images.read("no-such.img").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(images.root_pid().unwrap(), w.pid());
    assert_eq!(images.restore_stats().unwrap(), None, "not restored yet");

    let r = Criu::new()
        .restore(Options::new().images_dir(&images).deadline(WAIT))
        .unwrap();
    let _kill = criu_testkit::KillOnDrop(r.pid);
    w.forget();
    let stats = images
        .restore_stats()
        .unwrap()
        .expect("stats-restore after a restore");
    assert_eq!(stats.restore, r.stats, "the same statistics as the report");
    assert!(stats.restore.is_some());
}

#[test]
fn daemon_netns_starts_the_daemon_in_that_namespace() {
    let hosts = criu_testkit::hosts::TwoHosts::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let images = ImagesDir::create(dir.path().join("img")).unwrap();
    // The page server listens on host b's address, which exists only in
    // host b's namespace: it could not even bind elsewhere.
    let listen = hosts
        .b
        .run(|| criu_testkit::free_port(hosts.b.addr.into()))
        .unwrap()
        .unwrap();
    let mut daemon = DaemonConfig::new()
        .netns(hosts.b.netns_path())
        .page_server(&images, listen)
        .unwrap();
    let pid = daemon.pid().expect("running") as i32;
    assert_eq!(
        criu_testkit::hosts::netns_of(pid).unwrap(),
        hosts.b.netns_inode().unwrap()
    );
    daemon.kill();
    assert!(daemon.pid().is_none());
    assert!(!alive(pid));
    assert!(dir.path().join("img/page-server.log").exists());
}

/// A "criu" that never reports ready (it just sleeps).
/// A fake `criu` that never reports ready: a shell that writes its own pid
/// to `pid` and then waits (in the shell itself, not in an `exec`ed child,
/// so the pid written is the process the crate started), for 60 s at most.
fn never_ready(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let fake = dir.join("sleepy-criu");
    let pid_file = dir.join("sleepy-criu.pid");
    let script = format!(
        "#!/bin/sh\necho $$ > '{}.tmp' && mv '{0}.tmp' '{0}'\n\
         i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n",
        pid_file.display()
    );
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    (fake, pid_file)
}

#[test]
fn ready_timeout_bounds_a_daemon_that_never_gets_ready() {
    let dir = tempfile::tempdir().unwrap();
    let images = ImagesDir::create(dir.path().join("img")).unwrap();
    let (fake, pid_file) = never_ready(dir.path());
    let start = std::time::Instant::now();
    let e = DaemonConfig::new()
        .binary(&fake)
        .ready_timeout(Duration::from_secs(1))
        .page_server(&images, "127.0.0.1:1".parse().unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::Daemon { .. }), "{e}");
    assert!(e.to_string().contains("not ready after 1s"), "{e}");
    assert!(start.elapsed() >= Duration::from_secs(1));
    // The fake ran (it wrote its pid well within the second), and the crate
    // killed it and reaped it: its pid is gone, not even a zombie.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the fake daemon started and wrote its pid")
        .trim()
        .parse()
        .unwrap();
    let gone = wait_gone(pid, Duration::from_secs(2));
    let running = alive(pid);
    if !gone {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(
        gone,
        "the daemon that never got ready (pid {pid}) was killed and reaped (still running: {running})"
    );
}

#[test]
fn daemon_wait_reports_a_timeout_and_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    // Timeout: a page server with no dump to serve is still running.
    let images = ImagesDir::create(dir.path().join("img")).unwrap();
    let addr = criu_testkit::free_port("127.0.0.1".parse().unwrap()).unwrap();
    let server = DaemonConfig::new().page_server(&images, addr).unwrap();
    let pid = server.pid().unwrap() as i32;
    let e = server.wait(Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, Error::Daemon { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("page server: still running after 200ms; killed"),
        "{e}"
    );
    assert!(wait_gone(pid, WAIT), "killed and reaped");

    // A failed exit: a lazy-pages daemon whose page server is not there
    // (nothing listens on a fresh port) fails, quoting its log.
    let lazy_images = ImagesDir::create(dir.path().join("lazy")).unwrap();
    let nobody = criu_testkit::free_port("127.0.0.1".parse().unwrap()).unwrap();
    let r = DaemonConfig::new().lazy_pages(&lazy_images, nobody);
    let e = match r {
        // It may fail before reporting ready...
        Err(e) => e,
        // ...or after, when it finds nothing to serve.
        Ok(d) => d.wait(WAIT).unwrap_err(),
    };
    eprintln!("lazy-pages without a source: {e}");
    assert!(matches!(e, Error::Daemon { .. }), "{e}");
    assert!(e.to_string().contains("lazy-pages daemon"), "{e}");
}

#[test]
fn strategy_names_parse_back() {
    for s in Strategy::ALL {
        assert_eq!(Strategy::from_str(s.name()), Ok(s));
        assert_eq!(s.to_string().parse::<Strategy>(), Ok(s));
    }
    assert_eq!(
        "stop-and-copy".parse::<Strategy>(),
        Ok(Strategy::StopAndCopy)
    );
    assert_eq!("page-server".parse::<Strategy>(), Ok(Strategy::PageServer));
    assert_eq!("lazy".parse::<Strategy>(), Ok(Strategy::Lazy));
    let e = "post-copy".parse::<Strategy>().unwrap_err();
    assert!(
        e.contains("post-copy") && e.contains("stop-and-copy"),
        "{e}"
    );
    assert!("Lazy".parse::<Strategy>().is_err(), "names are exact");
}

#[test]
fn errors_before_criu_name_the_operation_and_have_no_context() {
    let dir = tempfile::tempdir().unwrap();
    let images = ImagesDir::create(dir.path().join("img")).unwrap();
    let e = Criu::new()
        .restore_child(Options::new().images_dir(&images))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::NoImages), "{e}");
    assert_eq!(e.operation(), Some(Operation::RestoreChild), "{e}");
    assert!(e.context().is_none(), "not from CRIU: {e}");
    assert!(e.log_errors().is_empty());
    assert!(!e.is_connect());
}

#[test]
fn a_criu_request_from_inside_a_notification_closure_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = fixture::counter(dir.path(), 0);
    let images = ImagesDir::create(dir.path().join("img")).unwrap();
    let criu = Criu::new();
    let inner = std::cell::RefCell::new(None);
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&images)
            .leave_running(true)
            .on_notify(|n| {
                if matches!(n.event, criu::Event::PreDump) {
                    *inner.borrow_mut() = Some(criu.check());
                }
                std::ops::ControlFlow::Continue(())
            }),
    )
    .unwrap();
    let e = inner
        .into_inner()
        .expect("pre-dump arrived")
        .expect_err("a nested request is refused");
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Conflict), "{e}");
    assert!(w.is_running() && w.advances(WAIT), "the outer dump went on");
}
