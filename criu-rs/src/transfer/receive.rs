//! Receiving a directory, within limits.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::frame::{
    file_header, growing_header, read_message_body, read_u16, read_u32, read_u64, read_u8,
};
use super::growing::MAX_CHUNK;
use super::partial::Partial;
use super::{io_err, is_safe_name, transfer_err, Progress, TransferStats, BUF};
use crate::error::{Error, Result, TransferKind};

/// What a receiver accepts from the sender. Every file's announced size is
/// checked before a byte of it is written; the free space of the target's
/// file system is always checked too, and a part of it is never given to
/// the sender: the reserve ([`Limits::keep_free`], by default the larger
/// of 64 MiB and 5% of the file system, at most 2 GiB), so that a sender
/// cannot take a shared tmpfs such as `/dev/shm` to its last byte.
///
/// ```
/// let limits = criu::transfer::Limits::default()
///     .max_files(1000)
///     .idle_timeout(std::time::Duration::from_secs(30));
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_files: u32,
    max_file_bytes: u64,
    max_total_bytes: u64,
    idle_timeout: Duration,
    keep_free: Option<u64>,
}

/// The least free space a receiver leaves on the target's file system
/// (unless [`Limits::keep_free`] says otherwise).
const RESERVE_MIN: u64 = 64 << 20;

/// The share of the target's file system, in percent, a receiver leaves
/// free when that is more than [`RESERVE_MIN`].
const RESERVE_PERCENT: u64 = 5;

/// The most a receiver leaves free by default. A share of a large disk is
/// far more than its other writers need to go on: 5% of 252 GiB refused a
/// 1 KiB file with 9 GiB free.
const RESERVE_MAX: u64 = 2 << 30;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_files: 1 << 16,
            max_file_bytes: 256 << 30,
            max_total_bytes: 1 << 40,
            idle_timeout: Duration::from_secs(120),
            keep_free: None,
        }
    }
}

impl Limits {
    /// The most files one directory may hold (default 65,536; a CRIU
    /// checkpoint has about ten per task).
    pub fn max_files(self, n: u32) -> Limits {
        Limits {
            max_files: n,
            ..self
        }
    }

    /// The largest file (default 256 GiB: a pages image is as large as the
    /// memory it holds).
    pub fn max_file_bytes(self, n: u64) -> Limits {
        Limits {
            max_file_bytes: n,
            ..self
        }
    }

    /// The most bytes of all files together (default 1 TiB).
    pub fn max_total_bytes(self, n: u64) -> Limits {
        Limits {
            max_total_bytes: n,
            ..self
        }
    }

    /// How long the peer of a migration may stay silent, where the stream
    /// has timeouts (default 120 s; see [`super::Transport::prepare`]).
    /// [`super::receive_dir`] leaves the stream's timeouts to the caller.
    pub fn idle_timeout(self, t: Duration) -> Limits {
        Limits {
            idle_timeout: t,
            ..self
        }
    }

    /// The free space the receiver leaves on the target's file system,
    /// whatever the sender announces: a file or chunk that would leave less
    /// is refused. The default is the larger of 64 MiB and 5% of the file
    /// system's size, but at most 2 GiB; 0 lets a sender fill it.
    pub fn keep_free(self, bytes: u64) -> Limits {
        Limits {
            keep_free: Some(bytes),
            ..self
        }
    }

    /// The idle timeout.
    pub(crate) fn idle(&self) -> Duration {
        self.idle_timeout
    }

    /// The reserve on a file system of `size` bytes.
    pub(crate) fn reserve(&self, size: u64) -> u64 {
        self.keep_free
            .unwrap_or_else(|| (size / 100 * RESERVE_PERCENT).clamp(RESERVE_MIN, RESERVE_MAX))
    }

    /// How many bytes a sender may still write under these limits into
    /// the file system of `dir`, which holds `had` bytes of its already:
    /// the total left, and the free space above the reserve.
    pub(crate) fn room_in(&self, dir: &Path, had: u64) -> std::io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        let unit = st.fragment_size() as u64;
        let free = (st.blocks_available() as u64).saturating_mul(unit);
        let size = (st.blocks() as u64).saturating_mul(unit);
        Ok(self.room(free, size, had))
    }

    /// The room left with `free` bytes free on a file system of `size`
    /// bytes, `had` bytes received.
    fn room(&self, free: u64, size: u64, had: u64) -> u64 {
        let total = self.max_total_bytes.saturating_sub(had);
        total.min(free.saturating_sub(self.reserve(size)))
    }
}

/// Receives a directory whose stream header was read already into
/// `target`, which must not exist yet, within `limits`: either the whole
/// directory appears at `target`, or nothing does ([`super::receive_dir`]
/// reads the header first).
pub(crate) fn receive_dir_with(
    r: &mut impl Read,
    target: &Path,
    limits: &Limits,
    progress: Option<Progress<'_>>,
) -> Result<TransferStats> {
    match receive_dir_or_message::<serde_json::Value>(r, target, limits, progress)? {
        DirOrMessage::Dir(stats) => Ok(stats),
        DirOrMessage::Message(m) => Err(transfer_err(
            TransferKind::Protocol,
            format!("the sender sent the message {m} where a file was expected"),
            None,
        )),
    }
}

/// What came where a directory was expected.
pub(crate) enum DirOrMessage<T> {
    /// The whole directory, now at its target.
    Dir(TransferStats),
    /// A control message the sender sent instead (a sender that failed
    /// says why); nothing is left at the target.
    Message(T),
}

/// Like [`receive_dir_with`], handing a control message that comes
/// between files (the format allows one there) back to the caller, who
/// knows what it means.
pub(crate) fn receive_dir_or_message<T: DeserializeOwned>(
    r: &mut impl Read,
    target: &Path,
    limits: &Limits,
    progress: Option<Progress<'_>>,
) -> Result<DirOrMessage<T>> {
    let start = Instant::now();
    if target.symlink_metadata().is_ok() {
        return Err(transfer_err(
            TransferKind::TargetExists,
            format!("{} already exists", target.display()),
            None,
        ));
    }
    let mut rx = Receiving {
        partial: Partial::beside(target)?,
        limits,
        files: 0,
        bytes: 0,
        buf: vec![0u8; BUF],
        progress,
    };
    loop {
        match read_u8(r, "reading the next frame")? {
            b'F' => rx.file(r)?,
            b'G' => {
                if !rx.growing(r)? {
                    return read_message_body(r).map(DirOrMessage::Message);
                }
            }
            b'E' => {
                rx.end(r)?;
                rx.partial.commit(target)?;
                return Ok(DirOrMessage::Dir(TransferStats {
                    files: rx.files,
                    bytes: rx.bytes,
                    elapsed: start.elapsed(),
                }));
            }
            b'M' => return read_message_body(r).map(DirOrMessage::Message),
            other => {
                return Err(transfer_err(
                    TransferKind::Corrupt,
                    format!("unexpected frame {other:#x}"),
                    None,
                ))
            }
        }
    }
}

/// Reads a file name and refuses one that would leave the directory.
fn read_name(r: &mut impl Read) -> Result<String> {
    let len = read_u16(r, "reading a file name")? as usize;
    let mut name = vec![0u8; len];
    r.read_exact(&mut name)
        .map_err(io_err("reading a file name"))?;
    let name = String::from_utf8(name)
        .map_err(|_| transfer_err(TransferKind::UnsafeName, "a file name is not UTF-8", None))?;
    if !is_safe_name(&name) {
        return Err(transfer_err(
            TransferKind::UnsafeName,
            format!("refusing file name {name:?}: it would escape the target directory"),
            None,
        ));
    }
    Ok(name)
}

/// Reads file `name`'s checksum and compares it with what arrived.
fn check_crc(r: &mut impl Read, name: &str, crc: crc32fast::Hasher) -> Result<()> {
    let want = read_u32(r, "reading a checksum")?;
    let got = crc.finalize();
    if want != got {
        return Err(transfer_err(
            TransferKind::Corrupt,
            format!("checksum mismatch in {name:?}: sent {want:#010x}, received {got:#010x}"),
            None,
        ));
    }
    Ok(())
}

/// A directory being received.
struct Receiving<'l, 'p> {
    partial: Partial,
    limits: &'l Limits,
    files: u32,
    bytes: u64,
    buf: Vec<u8>,
    progress: Option<Progress<'p>>,
}

impl Receiving<'_, '_> {
    /// Receives one file (its 'F' already read).
    fn file(&mut self, r: &mut impl Read) -> Result<()> {
        let name = read_name(r)?;
        let raw_mode = read_u32(r, "reading a file mode")?;
        let size = read_u64(r, "reading a file size")?;
        self.admit(&name, size)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&file_header(&name, raw_mode, size));
        let mut f = self.create(&name, raw_mode)?;
        self.contents(r, &mut f, &name, size, &mut crc)?;
        self.files += 1;
        check_crc(r, &name, crc)
    }

    /// Receives one growing file (its 'G' already read): chunks, each
    /// admitted before it is written, until the end tag, then the size and
    /// the checksum. False if a control message came instead of the next
    /// chunk (its 'M' read; the sender gave up, the caller reads why).
    fn growing(&mut self, r: &mut impl Read) -> Result<bool> {
        let name = read_name(r)?;
        let raw_mode = read_u32(r, "reading a file mode")?;
        self.admit(&name, 0)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&growing_header(&name, raw_mode));
        let mut f = self.create(&name, raw_mode)?;
        self.files += 1;
        let mut size = 0u64;
        loop {
            match read_u8(r, "reading the next chunk")? {
                b'D' => {}
                b'Z' => break,
                b'M' => return Ok(false),
                other => {
                    return Err(transfer_err(
                        TransferKind::Corrupt,
                        format!("unexpected frame {other:#x} inside {name:?}"),
                        None,
                    ))
                }
            }
            let n = read_u32(r, "reading a chunk's length")?;
            if n > MAX_CHUNK {
                return Err(transfer_err(
                    TransferKind::Corrupt,
                    format!("a chunk of {n} bytes in {name:?}: over {MAX_CHUNK} (corrupt?)"),
                    None,
                ));
            }
            self.admit_bytes(&name, size, u64::from(n))?;
            self.contents(r, &mut f, &name, u64::from(n), &mut crc)?;
            size += u64::from(n);
        }
        let want = read_u64(r, "reading a file size")?;
        crc.update(&want.to_le_bytes());
        if want != size {
            return Err(transfer_err(
                TransferKind::Corrupt,
                format!("{name:?}: {want} bytes announced, {size} arrived"),
                None,
            ));
        }
        check_crc(r, &name, crc).map(|()| true)
    }

    /// Refuses a file the limits do not allow, before any of it is written.
    fn admit(&self, name: &str, size: u64) -> Result<()> {
        let l = self.limits;
        if self.files >= l.max_files {
            return Err(transfer_err(
                TransferKind::Limit,
                format!(
                    "refusing {name:?}: more than {} files (Limits::max_files)",
                    l.max_files
                ),
                None,
            ));
        }
        self.admit_bytes(name, 0, size)
    }

    /// Refuses `more` bytes of file `name` (which has `had` already) that
    /// the limits do not allow, before any of them is written.
    fn admit_bytes(&self, name: &str, had: u64, more: u64) -> Result<()> {
        let l = self.limits;
        let refuse = |why: String| {
            Err(transfer_err(
                TransferKind::Limit,
                format!("refusing {name:?}: {why}"),
                None,
            ))
        };
        let size = had.saturating_add(more);
        if size > l.max_file_bytes {
            return refuse(format!(
                "{size} bytes announced, over {} (Limits::max_file_bytes)",
                l.max_file_bytes
            ));
        }
        if self.bytes.saturating_add(more) > l.max_total_bytes {
            return refuse(format!(
                "{} bytes in all, over {} (Limits::max_total_bytes)",
                self.bytes.saturating_add(more),
                l.max_total_bytes
            ));
        }
        let (free, fs_size) = self
            .partial
            .space()
            .map_err(|e| Error::io("reading the free space of the target's file system", e))?;
        let reserve = l.reserve(fs_size);
        if more.saturating_add(reserve) > free {
            return refuse(format!(
                "{more} bytes announced, {free} free on the target's file system, of which \
                 {reserve} stay free (Limits::keep_free)"
            ));
        }
        Ok(())
    }

    /// Creates file `name` inside, with the owner's bits of `raw_mode`
    /// (and at least read and write for the owner).
    fn create(&self, name: &str, raw_mode: u32) -> Result<File> {
        self.partial
            .create_file(name, raw_mode & 0o700 | 0o600)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    transfer_err(
                        TransferKind::UnsafeName,
                        format!("file {name:?} sent twice"),
                        None,
                    )
                } else {
                    Error::io(format!("creating {name:?} in the received directory"), e)
                }
            })
    }

    /// Copies `size` bytes of the stream into `f` (file `name`).
    fn contents(
        &mut self,
        r: &mut impl Read,
        f: &mut File,
        name: &str,
        size: u64,
        crc: &mut crc32fast::Hasher,
    ) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let chunk = &mut self.buf[..left.min(BUF as u64) as usize];
            r.read_exact(chunk)
                .map_err(io_err("reading file contents"))?;
            crc.update(chunk);
            f.write_all(chunk)
                .map_err(|e| Error::io(format!("writing {name:?}"), e))?;
            left -= chunk.len() as u64;
            self.bytes += chunk.len() as u64;
            if let Some(p) = self.progress.as_mut() {
                p(self.bytes, 0);
            }
        }
        Ok(())
    }

    /// Checks the end marker (its 'E' already read) against what arrived.
    fn end(&self, r: &mut impl Read) -> Result<()> {
        let want_files = read_u32(r, "reading the end marker")?;
        let want_bytes = read_u64(r, "reading the end marker")?;
        if (want_files, want_bytes) != (self.files, self.bytes) {
            return Err(transfer_err(
                TransferKind::Corrupt,
                format!(
                    "the sender announced {want_files} files / {want_bytes} bytes, {} / {} arrived",
                    self.files, self.bytes
                ),
                None,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_default_reserve_is_five_percent_between_64_mib_and_2_gib() {
        let l = Limits::default();
        assert_eq!(l.reserve(GIB), 64 << 20, "5% of 1 GiB is under the floor");
        assert_eq!(l.reserve(24 * GIB), 24 * GIB / 100 * 5);
        assert_eq!(
            l.reserve(252 * GIB),
            2 * GIB,
            "a large disk's share is capped"
        );
        assert_eq!(l.keep_free(0).reserve(252 * GIB), 0);
    }

    #[test]
    fn a_large_disk_with_little_free_still_takes_small_files() {
        // The CI failure this came from: 9 GiB free on a 252 GiB disk.
        let room = Limits::default().room(9 * GIB, 252 * GIB, 0);
        assert_eq!(room, 7 * GIB);
    }
}
