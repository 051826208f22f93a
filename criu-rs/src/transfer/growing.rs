//! Sending a directory while it is still being written (a dump in
//! progress): files that only grow at their end (CRIU's `pages-*.img`,
//! into which it splices memory) go out in chunks as they grow; the other
//! files, and the growing files' last bytes, once the writer is done.
//! The receiver is the same as for [`super::send_dir`]. Over a plain
//! socket ([`Transport::plain_socket`]) the chunks' bytes go with
//! `sendfile(2)`: the kernel hands the file's pages to the socket, and this
//! process reads them only for their checksum (unless the sent pages are
//! freed as they go, [`Growing::free_sent`]: then they go as copies).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::frame::{end_marker, growing_header};
use super::send::{regular_files, Sent};
use super::{io_err, transfer_err, Progress, TransferStats, Transport, BUF};
use crate::error::{Error, Result, TransferKind};

/// The largest chunk of a growing file on the wire (the receiver refuses
/// more, so that a corrupt length cannot make it wait for gigabytes).
pub(super) const MAX_CHUNK: u32 = 8 << 20;

/// Sends `chunk`, the bytes of `file` at `offset`: from the file with
/// `sendfile(2)` where the stream is a plain socket and `by_reference`
/// allows it, else from `chunk`. `sendfile(2)` queues references to the
/// file's pages, not copies: the bytes are read from them when the peer
/// reads (on one machine) or the segment leaves, so the file's pages must
/// stay as they are until then, which a caller that punches them out
/// right after cannot promise.
fn send_chunk<W: Transport>(
    w: &mut BufWriter<W>,
    chunk: &[u8],
    file: &File,
    offset: u64,
    by_reference: bool,
) -> Result<()> {
    // The chunk's header goes first (a chunk as large as the buffer would
    // flush it anyway).
    w.flush().map_err(io_err("sending file contents"))?;
    if let Some(socket) = w.get_ref().plain_socket().filter(|_| by_reference) {
        return sendfile_all(socket, file, offset, chunk.len())
            .map_err(io_err("sending file contents"));
    }
    w.write_all(chunk).map_err(io_err("sending file contents"))
}

/// Sends `len` bytes of `file` from `offset` to `socket`.
fn sendfile_all(
    socket: BorrowedFd<'_>,
    file: &File,
    offset: u64,
    len: usize,
) -> std::io::Result<()> {
    let mut off = offset as libc::off_t;
    let end = offset as libc::off_t + len as libc::off_t;
    while off < end {
        let left = (end - off) as usize;
        match nix::sys::sendfile::sendfile(socket, file, Some(&mut off), left) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Punches the whole pages of `len` bytes at `offset` out of `file`, best
/// effort. Only whole pages: a partial page would be zeroed in place, and
/// `sendfile(2)` may still be sending it from the page cache.
fn punch_sent(file: &File, offset: u64, len: u64) {
    const PAGE: u64 = 4096;
    let start = offset.div_ceil(PAGE) * PAGE;
    let end = (offset + len) / PAGE * PAGE;
    if end > start {
        let _ = nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(file),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            start as libc::off_t,
            (end - start) as libc::off_t,
        );
    }
}

/// Punches every whole page of the file at `path` out of it, its size
/// kept, best effort: for a file sent as copies (never by `sendfile(2)`)
/// that nobody reads again.
pub(crate) fn free_file(path: &Path) {
    let Ok(file) = fs::OpenOptions::new().write(true).open(path) else {
        return;
    };
    if let Ok(meta) = file.metadata() {
        punch_sent(&file, 0, meta.len());
    }
}

/// A growing file being sent.
struct Open {
    name: String,
    file: File,
    /// Bytes sent so far.
    sent: u64,
    crc: crc32fast::Hasher,
    /// The inode, so that a file replaced meanwhile is noticed.
    ino: u64,
}

/// A growing file whose end went out: name, inode, size.
type Ended = (String, u64, u64);

/// A directory being sent while it is written. [`Growing::step`] sends
/// what the growing files gained; [`Growing::finish`], once the writer is
/// done, sends the rest and the end marker. Growing files go out one at a
/// time (the stream holds one file after the other), in the order they
/// appear: once the writer has started the next one, the current one is
/// taken as complete, as CRIU writes its pages images one task after the
/// other; [`Growing::finish`] checks that none of them changed after its
/// end went out, and fails if one did. Dropped unfinished, it leaves the
/// stream inside a file: the receiver then fails and removes what it
/// received, as for any cut stream.
pub struct Growing<'p, W: Transport> {
    w: BufWriter<W>,
    dir: PathBuf,
    grows: fn(&str) -> bool,
    current: Option<Open>,
    ended: Vec<Ended>,
    sent: Sent,
    progress: Option<Progress<'p>>,
    start: Instant,
    /// Punch the sent bytes of growing files out of them.
    free_sent: bool,
}

impl<'p, W: Transport> Growing<'p, W> {
    /// Starts sending `dir` to `w` (after the stream's header); `grows`
    /// names the files that only grow at their end while written and may
    /// be sent in chunks before they are complete. `progress` gets the
    /// bytes sent and, once the writer is done, the bytes in all (0 until
    /// then).
    pub fn new(
        w: W,
        dir: &Path,
        grows: fn(&str) -> bool,
        progress: Option<Progress<'p>>,
    ) -> Growing<'p, W> {
        Growing {
            w: BufWriter::with_capacity(BUF, w),
            dir: dir.to_path_buf(),
            grows,
            current: None,
            ended: Vec::new(),
            sent: Sent::new(0),
            progress,
            start: Instant::now(),
            free_sent: false,
        }
    }

    /// Frees the memory or disk space of what was sent: once a chunk of a
    /// growing file went out, its whole pages are punched out of the file
    /// (`fallocate(PUNCH_HOLE)`, the size kept, so the end checks still
    /// hold). For a directory nobody reads after it was sent, such as a
    /// migration's dump on a tmpfs: without it, the dump's pages stay in
    /// memory beside the process and the destination's copy until the
    /// migration ends. Best effort: a file system that cannot punch holes
    /// keeps the bytes. Must be set before the first step. The chunks of
    /// a file being freed are written to the stream as copies, never with
    /// `sendfile(2)`: a socket holds the pages `sendfile(2)` gave it until
    /// the bytes are read from them, and punched out meanwhile they
    /// arrived as zeros (a stop-and-copy migration between two network
    /// namespaces failed its checksum that way).
    pub fn free_sent(mut self, yes: bool) -> Self {
        self.free_sent = yes;
        self
    }

    /// Sends what the current growing file gained since the last call (and
    /// ends it if the writer has started the next one), and flushes it.
    /// Returns the bytes sent (0: nothing new, the caller may wait a
    /// little).
    pub fn step(&mut self) -> Result<u64> {
        let before = self.sent.done;
        let waiting = self.waiting()?;
        if self.current.is_none() {
            if let Some(first) = waiting.first() {
                self.current = Some(self.open_file(first)?);
            }
        }
        self.send_new_bytes()?;
        let current = self.current.as_ref().map(|c| c.name.as_str());
        if waiting.iter().any(|n| Some(n.as_str()) != current) {
            self.end_current()?;
        }
        self.w.flush().map_err(io_err("sending file contents"))?;
        Ok(self.sent.done - before)
    }

    /// Calls [`Growing::step`] until `done` says the writer has finished,
    /// waiting `idle` whenever nothing was new.
    pub fn follow(&mut self, mut done: impl FnMut() -> bool, idle: Duration) -> Result<()> {
        while !done() {
            if self.step()? == 0 {
                std::thread::sleep(idle);
            }
        }
        Ok(())
    }

    /// The writer is done: sends the current growing file's last bytes,
    /// every other regular file, and the end marker, after checking that
    /// the growing files sent earlier did not change since.
    pub fn finish(mut self) -> Result<TransferStats> {
        let current = self.current.as_ref().map(|c| c.name.clone());
        let rest: Vec<_> = regular_files(&self.dir)?
            .into_iter()
            .filter(|(name, ..)| {
                Some(name) != current.as_ref() && !self.ended.iter().any(|e| &e.0 == name)
            })
            .collect();
        let current_left = self.current.as_ref().map_or(0, |c| {
            c.file
                .metadata()
                .map_or(0, |m| m.len().saturating_sub(c.sent))
        });
        self.sent.total = self.sent.done + current_left + rest.iter().map(|f| f.1).sum::<u64>();
        self.send_new_bytes()?;
        self.end_current()?;
        self.check_ended()?;
        for entry in &rest {
            self.sent
                .file(&mut self.w, &self.dir, entry, &mut self.progress)?;
        }
        let files = (self.ended.len() + rest.len()) as u32;
        self.w
            .write_all(&end_marker(files, self.sent.done))
            .and_then(|()| self.w.flush())
            .map_err(io_err("sending the end marker"))?;
        // The last report has the total, even when no bytes were left.
        self.sent.advance(0, &mut self.progress);
        Ok(TransferStats {
            files,
            bytes: self.sent.done,
            elapsed: self.start.elapsed(),
        })
    }

    /// Fails if a growing file whose end went out was replaced or changed
    /// since.
    fn check_ended(&self) -> Result<()> {
        for (name, ino, size) in &self.ended {
            let now = fs::symlink_metadata(self.dir.join(name)).ok();
            if now.map(|m| (m.ino(), m.len())) != Some((*ino, *size)) {
                return Err(transfer_err(
                    TransferKind::Corrupt,
                    format!("{name} was replaced or changed after it was sent"),
                    None,
                ));
            }
        }
        Ok(())
    }

    /// The growing files there now that were not started yet, in the order
    /// the writer made them (CRIU numbers them: shorter names first).
    fn waiting(&self) -> Result<Vec<String>> {
        let listing = |e| Error::io(format!("listing {}", self.dir.display()), e);
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(listing)? {
            let name = entry.map_err(listing)?.file_name();
            let Some(name) = name.to_str().filter(|n| (self.grows)(n)) else {
                continue;
            };
            let started = self.current.as_ref().is_some_and(|c| c.name == name)
                || self.ended.iter().any(|e| e.0 == name);
            if !started {
                names.push(name.to_string());
            }
        }
        names.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        Ok(names)
    }

    /// Sends the bytes the current growing file gained since its last
    /// chunk.
    fn send_new_bytes(&mut self) -> Result<()> {
        let Some(open) = self.current.as_mut() else {
            return Ok(());
        };
        let name = &open.name;
        let meta = open
            .file
            .metadata()
            .map_err(|e| Error::io(format!("reading the size of {name}"), e))?;
        if meta.len() < open.sent {
            return Err(transfer_err(
                TransferKind::Corrupt,
                format!("{name} shrank while it was sent, so it cannot be streamed"),
                None,
            ));
        }
        let mut left = meta.len() - open.sent;
        while left > 0 {
            let n = left.min(u64::from(MAX_CHUNK)).min(BUF as u64) as usize;
            let chunk = &mut self.sent.buf[..n];
            open.file
                .read_exact(chunk)
                .map_err(|e| Error::io(format!("reading {name}"), e))?;
            open.crc.update(chunk);
            self.w
                .write_all(b"D")
                .and_then(|()| self.w.write_all(&(n as u32).to_le_bytes()))
                .map_err(io_err("sending file contents"))?;
            // Pages about to be punched out go as copies.
            send_chunk(&mut self.w, chunk, &open.file, open.sent, !self.free_sent)?;
            if self.free_sent {
                punch_sent(&open.file, open.sent, n as u64);
            }
            open.sent += n as u64;
            self.sent.advance(n as u64, &mut self.progress);
            left -= n as u64;
        }
        Ok(())
    }

    /// Opens growing file `name` and sends its header.
    fn open_file(&mut self, name: &str) -> Result<Open> {
        let path = self.dir.join(name);
        // Punching holes needs the file open for writing.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(self.free_sent)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let head = growing_header(name, meta.permissions().mode() & 0o7777);
        self.w
            .write_all(&head)
            .map_err(io_err("sending a file header"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        Ok(Open {
            name: name.to_string(),
            file,
            sent: 0,
            crc,
            ino: meta.ino(),
        })
    }

    /// Ends the current growing file on the wire: the end tag, its size and
    /// checksum.
    fn end_current(&mut self) -> Result<()> {
        let Some(open) = self.current.take() else {
            return Ok(());
        };
        let mut crc = open.crc;
        let size = open.sent.to_le_bytes();
        crc.update(&size);
        let mut end = vec![b'Z'];
        end.extend_from_slice(&size);
        end.extend_from_slice(&crc.finalize().to_le_bytes());
        self.ended.push((open.name, open.ino, open.sent));
        self.w
            .write_all(&end)
            .map_err(io_err("sending the end of a file"))
    }
}

#[cfg(test)]
mod free_sent_tests {
    use std::io::{Cursor, Write};
    use std::os::unix::fs::MetadataExt;

    use super::Growing;
    use crate::transfer::{receive_dir, write_header};

    /// Sends a 4 MiB + 100 bytes growing file from a tmpfs directory (a
    /// migration's dump lives there), with or without `free_sent`; returns
    /// the bytes the file still takes after it was sent, and checks that
    /// what arrived is what was written.
    fn sent_and_kept(free: bool) -> u64 {
        let src = tempfile::tempdir_in("/dev/shm").unwrap();
        let content: Vec<u8> = (0..(4 << 20) + 100).map(|i: u32| (i % 251) as u8).collect();
        let mut v = Cursor::<Vec<u8>>::default();
        write_header(&mut v).unwrap();
        let mut g =
            Growing::new(&mut v, src.path(), |n| n.starts_with("pages-"), None).free_sent(free);
        let path = src.path().join("pages-1.img");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&content[..3 << 20]).unwrap();
        g.step().unwrap();
        f.write_all(&content[3 << 20..]).unwrap();
        g.finish().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), content.len() as u64, "the size is kept");
        let into = tempfile::tempdir().unwrap();
        let mut r = Cursor::new(v.into_inner());
        receive_dir(&mut r, &into.path().join("got"), &Default::default(), None).unwrap();
        let got = std::fs::read(into.path().join("got/pages-1.img")).unwrap();
        assert!(
            got == content,
            "the received file differs from the sent one"
        );
        meta.blocks() * 512
    }

    #[test]
    fn free_sent_punches_the_sent_pages_out_and_only_them() {
        let kept = sent_and_kept(false);
        assert!(
            kept >= 4 << 20,
            "without free_sent the file keeps {kept} bytes"
        );
        let freed = sent_and_kept(true);
        // At most the last partial page stays.
        assert!(
            freed <= 4096,
            "with free_sent the file still takes {freed} bytes"
        );
    }

    /// `free_file` frees a whole file's pages, keeps its size, and leaves
    /// a file it cannot open for writing alone.
    #[test]
    fn free_file_punches_a_whole_file_out_keeping_its_size() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("pages-1.img");
        std::fs::write(&path, vec![7u8; (1 << 20) + 10]).unwrap();
        super::free_file(&path);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), (1 << 20) + 10, "the size is kept");
        assert!(
            meta.blocks() * 512 <= 4096,
            "{} bytes kept",
            meta.blocks() * 512
        );
        super::free_file(&dir.path().join("absent.img"));
    }

    /// Bytes this thread read through read-like calls, `sendfile(2)`
    /// included.
    fn thread_rchar() -> u64 {
        std::fs::read_to_string("/proc/thread-self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("rchar in /proc/thread-self/io")
    }

    /// A file written while it is sent (as CRIU writes its pages), over a
    /// socket pair (where chunks would go with `sendfile(2)`), with
    /// `free_sent`: the chunks go as copies (this thread reads the file
    /// once, not once more through `sendfile(2)`), what arrives is what
    /// was written, and the source keeps none of it.
    #[test]
    fn a_file_freed_while_sent_goes_as_copies_and_arrives_whole() {
        use crate::transfer::{read_header, receive_dir_with, Limits, Transport};
        const SIZE: u32 = 24 << 20;
        let content: Vec<u8> = (0..SIZE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for round in 0..3 {
            let src = tempfile::tempdir_in("/dev/shm").unwrap();
            let out = tempfile::tempdir().unwrap();
            let target = out.path().join("got");
            let path = src.path().join("pages-1.img");
            let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
            assert!(a.plain_socket().is_some());
            let done = std::sync::atomic::AtomicBool::new(false);
            let read = std::thread::scope(|s| {
                let rx = s.spawn(|| {
                    read_header(&mut b)?;
                    receive_dir_with(&mut b, &target, &Limits::default(), None)
                });
                let mut f = std::fs::File::create(&path).unwrap();
                let (content, done) = (&content, &done);
                let writer = s.spawn(move || {
                    // Whole pages, in writes of several sizes.
                    for piece in content.chunks(4096 * (1 + round * 7)) {
                        f.write_all(piece).unwrap();
                    }
                    done.store(true, std::sync::atomic::Ordering::SeqCst);
                });
                write_header(&mut a).unwrap();
                let before = thread_rchar();
                let mut g = Growing::new(&mut a, src.path(), |n| n.starts_with("pages-"), None)
                    .free_sent(true);
                g.follow(
                    || done.load(std::sync::atomic::Ordering::SeqCst),
                    std::time::Duration::from_micros(200),
                )
                .unwrap();
                writer.join().unwrap();
                g.finish().unwrap();
                let read = thread_rchar() - before;
                rx.join().unwrap().unwrap();
                read
            });
            assert!(
                read < 2 * u64::from(SIZE),
                "round {round}: this thread read {read} bytes for {SIZE}: sendfile was used"
            );
            let got = std::fs::read(target.join("pages-1.img")).unwrap();
            assert!(got == content, "round {round}: the received file differs");
            let kept = std::fs::metadata(&path).unwrap().blocks() * 512;
            assert!(
                kept <= 4096,
                "round {round}: the source still takes {kept} bytes"
            );
        }
    }
}
