//! The crate never acts on what it does not own, never hangs by default,
//! and hands out only what is really its to hand out (issue #9). Real
//! CRIU, as root.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criu::{Criu, Error, ImagesDir, Options};
use criu_testkit::{alive, fixture};

const WAIT: Duration = Duration::from_secs(30);

/// Dumps a fresh 1 MiB workload into `dir/img` and reaps it; returns the
/// images and the pid the checkpoint restores to.
fn checkpoint(dir: &tempfile::TempDir) -> (ImagesDir, i32) {
    let (w, images) = fixture::dumped(dir.path(), 1);
    (images, w.pid())
}

/// The checkpoint's first file whose name starts with `prefix`.
fn image_file(images: &ImagesDir, prefix: &str) -> PathBuf {
    std::fs::read_dir(images.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap()
}

fn truncate_to_half(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

/// Restores (as a child or not) on another thread; fails the test if no
/// answer comes within `WAIT` (a hang), instead of hanging the test.
fn restore_or_hang(images: &Path, child: bool) -> (Result<i32, Error>, Duration) {
    let (tx, rx) = mpsc::channel();
    let path = images.to_path_buf();
    std::thread::spawn(move || {
        let images = ImagesDir::open(&path).unwrap();
        let mut o = Options::new();
        o.images_dir(&images).log_file("restore.log");
        let start = Instant::now();
        let r = if child {
            Criu::new().restore_child(&mut o).map(|(restored, report)| {
                drop(restored); // kills and reaps it
                report.pid
            })
        } else {
            Criu::new().restore(&mut o).map(|r| r.pid)
        };
        let _ = tx.send((r, start.elapsed()));
    });
    rx.recv_timeout(WAIT)
        .expect("the restore of a damaged checkpoint hung (no deadline was set)")
}

#[test]
fn a_truncated_pages_image_is_refused_without_a_deadline_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (images, pid) = checkpoint(&dir);
    let pages = image_file(&images, "pages-");
    truncate_to_half(&pages);
    for child in [false, true] {
        let (r, took) = restore_or_hang(images.path(), child);
        let e = r.unwrap_err();
        eprintln!("restore (child: {child}) refused after {took:?}: {e}");
        let name = pages.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            matches!(e, Error::BadImage { ref file, .. } if *file == name),
            "{e}"
        );
        assert!(e.to_string().contains("announces"), "{e}");
        assert!(
            !images.path().join("restore.log").exists(),
            "CRIU was not started"
        );
        assert!(!alive(pid), "nothing was restored");
    }
}

#[test]
fn a_missing_or_empty_root_task_image_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (images, pid) = checkpoint(&dir);
    let core = images.path().join(format!("core-{pid}.img"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&core)
        .unwrap()
        .set_len(0)
        .unwrap();
    let (r, _) = restore_or_hang(images.path(), false);
    let e = r.unwrap_err();
    assert!(e.to_string().contains(&format!("core-{pid}.img")), "{e}");
    assert!(e.to_string().contains("empty"), "{e}");
    std::fs::remove_file(&core).unwrap();
    let (r, _) = restore_or_hang(images.path(), false);
    let e = r.unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(!images.path().join("restore.log").exists());
}

#[test]
fn an_intact_checkpoint_passes_the_check_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let (images, pid) = checkpoint(&dir);
    let restored = Criu::new()
        .restore(Options::new().images_dir(&images))
        .unwrap();
    let _guard = criu_testkit::KillOnDrop(restored.pid);
    assert_eq!(restored.pid, pid);
    assert!(alive(pid));
}

/// A child of this process that is the init of a PID namespace of its own,
/// as a container started by the caller would be (`sleep 60`, in a session
/// of its own). Killed and reaped on drop.
struct NsChild(i32);

impl NsChild {
    fn spawn() -> NsChild {
        use nix::sched::{clone, CloneFlags};
        let path = std::ffi::CString::new("/bin/sleep").unwrap();
        let arg = std::ffi::CString::new("60").unwrap();
        let argv = [path.as_ptr(), arg.as_ptr(), std::ptr::null()];
        let mut stack = vec![0u8; 64 * 1024];
        // SAFETY: the child only calls setsid and execv (async-signal-safe)
        // on data prepared before the clone.
        let pid = unsafe {
            clone(
                Box::new(|| {
                    libc::setsid();
                    libc::execv(path.as_ptr(), argv.as_ptr());
                    127
                }),
                &mut stack,
                CloneFlags::CLONE_NEWPID,
                Some(libc::SIGCHLD),
            )
        }
        .unwrap();
        NsChild(pid.as_raw())
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

#[test]
fn a_restore_deadline_kills_only_what_the_restore_created() {
    let dir = tempfile::tempdir().unwrap();
    let (images, pid) = checkpoint(&dir);
    truncate_to_half(&image_file(&images, "pages-"));
    let bystander = NsChild::spawn();
    assert!(alive(bystander.0));
    let mut o = Options::new();
    // CRIU 4.2.1 spins on this checkpoint; the crate's check is off so that
    // CRIU starts, and the deadline has to cut it.
    o.images_dir(&images)
        .log_file("restore.log")
        .verify_images(false)
        .deadline(Duration::from_secs(2));
    let e = Criu::new().restore_child(&mut o).map(|_| ()).unwrap_err();
    assert!(e.is_deadline_exceeded(), "{e}");
    assert!(
        alive(bystander.0),
        "a child of the caller in its own PID namespace, which the restore did not create, survives"
    );
    assert!(
        criu_testkit::wait_gone(pid, WAIT),
        "the half-restored task was killed and reaped: {e}"
    );
}

#[test]
fn a_one_shot_service_socket_is_spent_only_on_the_request_itself() {
    let service = criu::DaemonConfig::new().service().unwrap();
    let criu = Criu::with_service_fd(criu_testkit::connect_seqpacket(service.socket()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let w = fixture::counter(dir.path(), 1);
    // Refused before CRIU (a log file name with a '/'): the socket stays
    // with the client. Aimed at the test's own workload, left running,
    // never at pid 1.
    let e = criu
        .dump(
            Options::new()
                .pid(w.pid())
                .leave_running(true)
                .log_file("a/b"),
        )
        .unwrap_err();
    assert!(e.invalid_kind().is_some(), "{e}");
    // restore_child cannot use a service socket: refused, socket kept.
    let e = criu
        .restore_child(&mut Options::new())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(criu::InvalidKind::Conflict), "{e}");
    // A pre-dump's own feature check does not spend the socket (here
    // memory tracking is off, so it is refused after the check).
    let images = ImagesDir::create(dir.path().join("pre")).unwrap();
    let pre = criu.pre_dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&images)
            .leave_running(true),
    );
    if let Err(e) = pre {
        assert!(e.is_unsupported(), "{e}");
        // ...and the socket still serves one request.
        criu.check().unwrap();
    }
    // Now it is spent.
    let e = criu.check().unwrap_err();
    assert_eq!(e.invalid_kind(), Some(criu::InvalidKind::Missing), "{e}");
}

/// Answers the one request that arrives on `peer` with a successful
/// restore of root pid `pid`: a `criu_resp` (images/rpc.proto) encoded by
/// hand: type = RESTORE (2), success = true, restore = { pid }. Real CRIU
/// never sends pid <= 0; this peer injects that fault.
fn answer_restore_with(peer: std::os::fd::OwnedFd, pid: i32) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&peer),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let mut varint = Vec::new();
        // The 32-bit form of the int32 (5 bytes for a negative one), which
        // libcriu's protobuf-c reads; it refused the 10-byte sign-extended form.
        let mut v = u64::from(pid as u32);
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                varint.push(byte);
                break;
            }
            varint.push(byte | 0x80);
        }
        let mut restore = vec![0x08]; // field 1, varint
        restore.extend(&varint);
        let mut resp = vec![0x08, 0x02, 0x10, 0x01, 0x22, restore.len() as u8];
        resp.extend(&restore);
        nix::sys::socket::send(
            std::os::fd::AsRawFd::as_raw_fd(&peer),
            &resp,
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
    })
}

#[test]
fn a_restore_answered_with_pid_0_or_less_is_an_error() {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let dir = tempfile::tempdir().unwrap();
    let images = ImagesDir::create(dir.path().join("img")).unwrap();
    std::fs::write(images.path().join("inventory.img"), b"x").unwrap();
    for pid in [0, -1] {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let peer = answer_restore_with(theirs, pid);
        let r = Criu::with_service_fd(ours)
            .restore(Options::new().images_dir(&images).verify_images(false));
        peer.join().unwrap();
        let e = r.map(|r| r.pid).unwrap_err();
        // libcriu returns the pid as its result, so a negative one already
        // reads as a failure code; 0 must not pass as a pid.
        if pid == 0 {
            assert!(matches!(e, Error::BadResponse { .. }), "pid {pid}: {e}");
        }
    }
}

#[test]
fn a_service_directory_is_0700_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // The umask of this test process (022 under cargo) used to decide the
    // mode: 0755, or 0777 with umask 0.
    let service = criu::DaemonConfig::new().service().unwrap();
    let dir = service.socket().parent().unwrap();
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    service.client().check().unwrap();
}
