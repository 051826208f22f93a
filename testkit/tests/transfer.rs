//! The image transfer's promises about what it leaves on disk: received
//! files are owner-only, and a receiver killed mid-transfer leaves only its
//! partial directory, never one under the final name.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criu_testkit::wait_until;

const RECEIVER: &str = env!("CARGO_BIN_EXE_criu-rs-receive-dir");
const WAIT: Duration = Duration::from_secs(20);
const FILE: usize = 64 << 10;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A directory with a world-readable file `a` and an executable `b`, and
/// the stream `send_dir` makes of it.
fn source(dir: &Path) -> Vec<u8> {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    for (name, m) in [("a", 0o644), ("b", 0o755)] {
        std::fs::write(src.join(name), vec![name.as_bytes()[0]; FILE]).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let mut stream = Vec::new();
    criu::transfer::send_dir(&mut stream, &src, None).unwrap();
    stream
}

#[test]
fn received_files_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let stream = source(dir.path());
    let target = dir.path().join("dst");
    let limits = criu::transfer::Limits::default();
    let stats =
        criu::transfer::receive_dir(&mut stream.as_slice(), &target, &limits, None).unwrap();
    assert_eq!((stats.files, stats.bytes), (2, 2 * FILE as u64));
    assert_eq!(mode(&target), 0o700, "the directory");
    assert_eq!(mode(&target.join("a")), 0o600, "0644 arrives as 0600");
    assert_eq!(mode(&target.join("b")), 0o700, "0755 arrives as 0700");
}

#[test]
fn a_sigkilled_receiver_leaves_only_its_partial_directory() {
    let dir = tempfile::tempdir().unwrap();
    let stream = source(dir.path());
    let parent = dir.path().join("in");
    std::fs::create_dir(&parent).unwrap();
    let target = parent.join("images");
    let mut rx = Command::new(RECEIVER)
        .arg(&target)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // All of file a, and b's header with half its contents: the receiver
    // has written a and created b, and waits for the rest.
    let cut = stream.len() - FILE / 2;
    let mut stdin = rx.stdin.take().unwrap();
    stdin.write_all(&stream[..cut]).unwrap();
    stdin.flush().unwrap();
    // The partial directory's name is random: `.images.partial-XXXXXX`.
    let partial_dir = || {
        std::fs::read_dir(&parent)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains("/.images.partial-"))
    };
    let got_to_b = |p: &Path| {
        p.join("b").exists() && std::fs::metadata(p.join("a")).is_ok_and(|m| m.len() == FILE as u64)
    };
    assert!(
        wait_until(WAIT, || partial_dir().is_some_and(|p| got_to_b(&p))),
        "the receiver got as far as file b"
    );
    let partial = partial_dir().unwrap();
    let a = partial.join("a");
    rx.kill().unwrap();
    rx.wait().unwrap();
    drop(stdin);

    let left: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        [partial.file_name().unwrap().to_string_lossy().into_owned()],
        "only the partial directory, nothing under the final name"
    );
    assert!(!target.exists());
    assert_eq!(mode(&partial), 0o700);
    assert_eq!(mode(&a), 0o600);
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted (and the
/// directory removed) on drop.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn new(mib: u32) -> SmallTmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs on {}", dir.path().display());
        SmallTmpfs { dir }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The stream of a directory holding one file of `mib` MiB (sparse on
/// the sender's disk: its zeros are read and sent all the same).
fn one_file_of(dir: &Path, mib: u64) -> Vec<u8> {
    let src = dir.join(format!("src-{mib}"));
    std::fs::create_dir(&src).unwrap();
    let f = std::fs::File::create(src.join("pages-1.img")).unwrap();
    f.set_len(mib << 20).unwrap();
    let mut stream = Vec::new();
    criu::transfer::send_dir(&mut stream, &src, None).unwrap();
    stream
}

#[test]
fn the_receiver_keeps_a_reserve_of_free_space() {
    // Before: a file was admitted while it fit (`size <= free`), so a
    // sender could take a shared tmpfs such as /dev/shm to its last byte.
    let fs = SmallTmpfs::new(96);
    let dir = tempfile::tempdir().unwrap();
    let limits = criu::transfer::Limits::default();
    // 40 MiB fit in 96 free, but not above the 64 MiB reserve.
    let big = one_file_of(dir.path(), 40);
    let target = fs.dir.path().join("big");
    let e = criu::transfer::receive_dir(&mut big.as_slice(), &target, &limits, None)
        .expect_err("refused: it would leave less than the reserve");
    assert_eq!(e.transfer_kind(), Some(criu::TransferKind::Limit), "{e}");
    assert_eq!(std::fs::read_dir(fs.dir.path()).unwrap().count(), 0);
    // 16 MiB leave 80 free: taken.
    let small = one_file_of(dir.path(), 16);
    let target = fs.dir.path().join("small");
    let stats = criu::transfer::receive_dir(&mut small.as_slice(), &target, &limits, None).unwrap();
    assert_eq!(stats.bytes, 16 << 20);
    // And the reserve is the caller's to set.
    let none = limits.keep_free(0);
    let target = fs.dir.path().join("big-without-reserve");
    criu::transfer::receive_dir(&mut big.as_slice(), &target, &none, None).unwrap();
}
