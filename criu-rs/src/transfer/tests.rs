//! The image stream's unit tests: round trips, truncation, corruption,
//! escaping names, limits, and the private partial directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::error::Result;

fn sample_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("inventory.img"), b"inventory").unwrap();
    fs::write(d.path().join("pages-1.img"), vec![7u8; 3 << 20]).unwrap();
    fs::write(d.path().join("empty.img"), b"").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
    d
}

fn send_to_vec(dir: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    send_dir(&mut v, dir, None).unwrap();
    v
}

fn receive(bytes: &[u8], target: &Path) -> Result<TransferStats> {
    receive_with(bytes, target, &Limits::default(), None)
}

fn receive_with(
    mut bytes: &[u8],
    target: &Path,
    limits: &Limits,
    progress: Option<Progress<'_>>,
) -> Result<TransferStats> {
    read_header(&mut bytes)?;
    receive_dir_with(&mut bytes, target, limits, progress)
}

/// A sample directory's stream, and an empty directory to receive into.
struct Sample {
    bytes: Vec<u8>,
    out: tempfile::TempDir,
}

impl Sample {
    fn new() -> Sample {
        Sample {
            bytes: send_to_vec(sample_dir().path()),
            out: tempfile::tempdir().unwrap(),
        }
    }

    /// Receives into `out/recv`, calling `progress` as bytes arrive.
    fn receive(&self, limits: &Limits, progress: Option<Progress<'_>>) -> Result<TransferStats> {
        receive_with(&self.bytes, &self.target(), limits, progress)
    }

    fn target(&self) -> std::path::PathBuf {
        self.out.path().join("recv")
    }

    fn left(&self) -> usize {
        fs::read_dir(self.out.path()).unwrap().count()
    }
}

#[test]
fn round_trip_copies_regular_files_only() {
    let src = sample_dir();
    let bytes = send_to_vec(src.path());
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("recv");
    let stats = receive(&bytes, &target).unwrap();
    assert_eq!(stats.files, 3);
    assert_eq!(stats.bytes, 9 + (3 << 20));
    assert_eq!(
        fs::read(target.join("pages-1.img")).unwrap(),
        vec![7u8; 3 << 20]
    );
    assert!(!target.join("link").exists());
    let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn truncation_anywhere_leaves_nothing_behind() {
    let src = sample_dir();
    let bytes = send_to_vec(src.path());
    let out = tempfile::tempdir().unwrap();
    for cut in [0, 5, 9, 20, 40, 1000, bytes.len() / 2, bytes.len() - 1] {
        let target = out.path().join(format!("recv{cut}"));
        let e = receive(&bytes[..cut], &target).unwrap_err();
        assert!(
            e.to_string().contains("truncated") || e.to_string().contains("magic"),
            "{cut}: {e}"
        );
        assert!(!target.exists());
    }
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        0,
        "no partial directory left"
    );
}

#[test]
fn corruption_is_a_checksum_mismatch() {
    let src = sample_dir();
    let mut bytes = send_to_vec(src.path());
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("recv");
    let e = receive(&bytes, &target).unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    assert!(!target.exists());
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn names_that_escape_are_refused() {
    for name in ["../evil", "a/b", "..", ".", ""] {
        let mut v = Vec::new();
        write_header(&mut v).unwrap();
        v.push(b'F');
        v.extend_from_slice(&(name.len() as u16).to_le_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&0o600u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.push(b'E');
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        let out = tempfile::tempdir().unwrap();
        let e = receive(&v, &out.path().join("recv")).unwrap_err();
        assert!(e.to_string().contains("escape"), "{name:?}: {e}");
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
    }
}

#[test]
fn messages_round_trip() {
    let mut v = Vec::new();
    send_message(&mut v, &serde_json::json!({"hello": 1})).unwrap();
    let m: serde_json::Value = recv_message(&mut v.as_slice()).unwrap();
    assert_eq!(m["hello"], 1);
    assert!(recv_message::<serde_json::Value>(&mut &v[..3]).is_err());
}

/// A stream that sends one file, then a message instead of the rest (as
/// a sender that fails midway says why).
fn a_file_then_a_message() -> Vec<u8> {
    let one_file = tempfile::tempdir().unwrap();
    fs::write(one_file.path().join("inventory.img"), b"inventory").unwrap();
    let mut v = send_to_vec(one_file.path());
    // Without that stream's end marker ('E' files:u32 bytes:u64).
    v.truncate(v.len() - 13);
    send_message(
        &mut v,
        &serde_json::json!({"Failed": {"message": "no space"}}),
    )
    .unwrap();
    v
}

#[test]
fn a_message_between_files_is_handed_back_and_leaves_nothing() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("recv");
    let bytes = a_file_then_a_message();
    let mut r = &bytes[..];
    read_header(&mut r).unwrap();
    match receive_dir_or_message::<serde_json::Value>(&mut r, &target, &Limits::default(), None) {
        Ok(DirOrMessage::Message(m)) => assert_eq!(m["Failed"]["message"], "no space"),
        Ok(DirOrMessage::Dir(_)) => panic!("a directory from a stream without its end"),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "nothing left");
    // The public receive names the message in its error.
    let e = receive(&bytes, &target).unwrap_err();
    assert!(e.to_string().contains("no space"), "{e}");
    assert!(matches!(e, crate::Error::Transfer { .. }), "{e}");
}

/// A stream announcing one file of `size` bytes and sending none of it.
fn announcing(size: u64) -> Vec<u8> {
    let mut v = Vec::new();
    write_header(&mut v).unwrap();
    v.extend_from_slice(&frame::file_header("pages-1.img", 0o600, size));
    v
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_written() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("recv");
    let e = receive(&announcing(1 << 62), &target).unwrap_err();
    assert!(e.to_string().contains("Limits::max_file_bytes"), "{e}");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn a_file_larger_than_the_free_space_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("recv");
    // One GiB more than the target's file system has free (statvfs), the
    // size limits raised above it.
    let vfs = nix::sys::statvfs::statvfs(out.path()).unwrap();
    let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
    let size = free + (1 << 30);
    let limits = Limits::default().max_file_bytes(size).max_total_bytes(size);
    let e = receive_with(&announcing(size), &target, &limits, None).unwrap_err();
    assert!(
        e.to_string().contains("free on the target's file system"),
        "{e}"
    );
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn file_count_and_total_limits_are_enforced() {
    let few = Limits::default().max_files(2);
    let small = Limits::default().max_total_bytes(1 << 20);
    for (limits, expect) in [
        (few, "Limits::max_files"),
        (small, "Limits::max_total_bytes"),
    ] {
        let sample = Sample::new();
        let e = sample.receive(&limits, None).unwrap_err();
        assert!(e.to_string().contains(expect), "{e}");
        assert_eq!(sample.left(), 0);
    }
}

#[test]
fn a_directory_named_like_a_partial_one_is_not_touched() {
    // Before: the partial directory was `.NAME.partial-PID`, removed
    // first if present, whoever it belonged to.
    let sample = Sample::new();
    let theirs = sample
        .out
        .path()
        .join(format!(".recv.partial-{}", std::process::id()));
    fs::create_dir(&theirs).unwrap();
    fs::write(theirs.join("precious"), b"mine").unwrap();
    sample.receive(&Limits::default(), None).unwrap();
    assert_eq!(fs::read(theirs.join("precious")).unwrap(), b"mine");
}

/// The partial directory (there is one while receiving).
fn partial_in(dir: &Path) -> std::path::PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(".recv.partial-"))
        .expect("a partial directory")
}

#[test]
fn swapping_the_partial_directory_for_a_link_redirects_nothing() {
    let sample = Sample::new();
    let root = sample.out.path();
    let elsewhere = root.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let mut swapped = false;
    let mut swap = |_: u64, _: u64| {
        if !swapped {
            let partial = partial_in(root);
            fs::rename(&partial, root.join("moved-away")).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &partial).unwrap();
            swapped = true;
        }
    };
    let e = sample
        .receive(&Limits::default(), Some(&mut swap))
        .unwrap_err();
    assert!(e.to_string().contains("replaced"), "{e}");
    assert!(swapped);
    let through_link = fs::read_dir(&elsewhere).unwrap().count();
    assert_eq!(through_link, 0, "nothing written through the link");
    assert!(sample.target().symlink_metadata().is_err(), "no target");
}

#[test]
fn a_target_that_appears_meanwhile_is_not_replaced() {
    let sample = Sample::new();
    let target = sample.target();
    let mut plant = |_: u64, _: u64| {
        let _ = fs::create_dir(&target);
    };
    let e = sample
        .receive(&Limits::default(), Some(&mut plant))
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(fs::read_dir(sample.target()).unwrap().count(), 0);
}

/// The stream of a directory sent while `pages-1.img` grows in three
/// steps, and the directory as it ended.
fn growing_stream() -> (Vec<u8>, tempfile::TempDir) {
    let src = tempfile::tempdir().unwrap();
    let pages = src.path().join("pages-1.img");
    let mut v = std::io::Cursor::<Vec<u8>>::default();
    write_header(&mut v).unwrap();
    let grows = |n: &str| n.starts_with("pages-");
    let mut g = Growing::new(&mut v, src.path(), grows, None);
    let mut f = fs::File::create(&pages).unwrap();
    for (i, len) in [(1u8, 3 << 20), (2, 100), (3, 0), (4, 5000)] {
        std::io::Write::write_all(&mut f, &vec![i; len]).unwrap();
        g.step().unwrap();
    }
    std::io::Write::write_all(&mut f, b"the last bytes, after the writer's last step").unwrap();
    fs::write(src.path().join("inventory.img"), b"inventory").unwrap();
    fs::write(src.path().join("pages-2.img"), b"appeared at the end").unwrap();
    let stats = g.finish().unwrap();
    assert_eq!(stats.files, 3);
    (v.into_inner(), src)
}

fn same_files(a: &Path, b: &Path) {
    let names = |d: &Path| {
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b));
    for n in names(a) {
        assert!(
            fs::read(a.join(&n)).unwrap() == fs::read(b.join(&n)).unwrap(),
            "{n:?}"
        );
    }
}

#[test]
fn a_directory_sent_while_it_grows_arrives_whole() {
    let (bytes, src) = growing_stream();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("recv");
    let stats = receive(&bytes, &target).unwrap();
    assert_eq!(stats.files, 3);
    same_files(src.path(), &target);
}

#[test]
fn a_growing_file_cut_or_corrupted_anywhere_leaves_nothing() {
    let (bytes, _src) = growing_stream();
    let out = tempfile::tempdir().unwrap();
    for cut in [20, 40, 1 << 20, 3 << 20, (3 << 20) + 60, bytes.len() - 1] {
        let target = out.path().join(format!("cut{cut}"));
        let e = receive(&bytes[..cut], &target).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{cut}: {e}");
        let mut flipped = bytes.clone();
        flipped[cut] ^= 0x01;
        let target = out.path().join(format!("flip{cut}"));
        assert!(receive(&flipped, &target).is_err(), "{cut}");
    }
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn a_growing_file_over_the_limits_is_refused_before_its_chunk_is_written() {
    let (bytes, _src) = growing_stream();
    let out = tempfile::tempdir().unwrap();
    let small = Limits::default().max_file_bytes(1 << 20);
    let e = receive_with(&bytes, &out.path().join("recv"), &small, None).unwrap_err();
    assert!(e.to_string().contains("Limits::max_file_bytes"), "{e}");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn a_sender_that_gives_up_inside_a_growing_file_is_named() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("pages-1.img"), vec![1u8; 4096]).unwrap();
    let mut v = std::io::Cursor::<Vec<u8>>::default();
    write_header(&mut v).unwrap();
    let mut g = Growing::new(&mut v, src.path(), |_| true, None);
    g.step().unwrap();
    drop(g);
    send_message(&mut v, &serde_json::json!({"Failed": "the dump failed"})).unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = receive(v.get_ref(), &out.path().join("recv")).unwrap_err();
    assert!(e.to_string().contains("where a file was expected"), "{e}");
    assert!(e.to_string().contains("the dump failed"), "{e}");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn a_growing_file_replaced_while_it_is_sent_is_an_error() {
    let src = tempfile::tempdir().unwrap();
    let pages = src.path().join("pages-1.img");
    fs::write(&pages, vec![1u8; 4096]).unwrap();
    let mut v = std::io::Cursor::<Vec<u8>>::default();
    let mut g = Growing::new(&mut v, src.path(), |_| true, None);
    g.step().unwrap();
    fs::remove_file(&pages).unwrap();
    fs::write(&pages, vec![2u8; 4096]).unwrap();
    let e = g.finish().unwrap_err();
    assert!(e.to_string().contains("replaced or changed"), "{e}");
}

#[test]
fn a_growing_file_goes_with_sendfile_over_a_plain_socket() {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("pages-1.img"), vec![5u8; 3 << 20]).unwrap();
    fs::write(src.path().join("inventory.img"), b"inventory").unwrap();
    assert!(a.plain_socket().is_some());
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("recv");
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            read_header(&mut b)?;
            receive_dir_with(&mut b, &target, &Limits::default(), None)
        });
        write_header(&mut a).unwrap();
        let read_before = thread_rchar();
        let mut g = Growing::new(&mut a, src.path(), |n| n.starts_with("pages-"), None);
        g.step().unwrap();
        g.finish().unwrap();
        let read = thread_rchar() - read_before;
        rx.join().unwrap().unwrap();
        // This thread read the pages once for their checksum; sendfile(2)
        // reads them once more, in the kernel, and the kernel counts that
        // in the thread's rchar too. Sent with write(2), they would have
        // been read once only.
        assert!(
            read >= 2 * (3 << 20),
            "the pages went with sendfile: this thread's rchar grew by {read}, \
             not by twice the pages' 3 MiB"
        );
    });
    same_files(src.path(), &target);
}

/// Bytes this thread has read through read-like system calls, sendfile(2)
/// included (`rchar` of `/proc/thread-self/io`).
fn thread_rchar() -> u64 {
    let io = fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/thread-self/io")
}

#[test]
fn growing_files_go_one_after_the_other_and_one_changed_after_its_end_is_an_error() {
    let src = tempfile::tempdir().unwrap();
    let mut v = std::io::Cursor::<Vec<u8>>::default();
    let mut g = Growing::new(&mut v, src.path(), |_| true, None);
    fs::write(src.path().join("pages-1.img"), vec![1u8; 4096]).unwrap();
    g.step().unwrap();
    // The writer moves on to the next file: the first one's end goes out.
    fs::write(src.path().join("pages-2.img"), vec![2u8; 4096]).unwrap();
    g.step().unwrap();
    g.step().unwrap();
    let mut first = fs::OpenOptions::new()
        .append(true)
        .open(src.path().join("pages-1.img"))
        .unwrap();
    std::io::Write::write_all(&mut first, b"late").unwrap();
    let e = g.finish().unwrap_err();
    assert!(
        e.to_string()
            .contains("pages-1.img was replaced or changed"),
        "{e}"
    );
}
