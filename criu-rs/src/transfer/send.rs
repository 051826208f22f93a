//! Sending a directory.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use super::frame::{end_marker, file_header};
use super::{io_err, transfer_err, Progress, TransferStats, BUF};
use crate::error::{Error, Result, TransferKind};

/// A regular file to send: name, size, permission bits.
pub(super) type Entry = (String, u64, u32);

/// Sends every regular file of `dir` (sockets, links and subdirectories
/// are skipped), then the end marker: [`super::send_dir`] without the
/// stream's header (a migration sends several directories in one stream).
pub(crate) fn send_files(
    w: &mut impl Write,
    dir: &Path,
    mut progress: Option<Progress<'_>>,
) -> Result<TransferStats> {
    let start = Instant::now();
    // Headers, checksums and small images would otherwise go out as tiny
    // writes, each a TCP segment (or, without TCP_NODELAY, a wait for the
    // previous one's delayed ACK).
    let w = &mut BufWriter::with_capacity(BUF, w);
    let files = regular_files(dir)?;
    let total: u64 = files.iter().map(|f| f.1).sum();
    let mut sent = Sent::new(total);
    for entry in &files {
        sent.file(w, dir, entry, &mut progress)?;
    }
    w.write_all(&end_marker(files.len() as u32, total))
        .and_then(|()| w.flush())
        .map_err(io_err("sending the end marker"))?;
    Ok(TransferStats {
        files: files.len() as u32,
        bytes: total,
        elapsed: start.elapsed(),
    })
}

/// The regular files of `dir`, by name.
pub(super) fn regular_files(dir: &Path) -> Result<Vec<Entry>> {
    let listing = |e| Error::io(format!("listing {}", dir.display()), e);
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        let meta = entry
            .metadata()
            .map_err(|e| Error::io("reading file metadata", e))?;
        if !meta.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|n| {
            transfer_err(
                TransferKind::UnsafeName,
                format!("file name {n:?} in {} is not UTF-8", dir.display()),
                None,
            )
        })?;
        files.push((name, meta.len(), meta.permissions().mode() & 0o7777));
    }
    files.sort();
    Ok(files)
}

/// The sending side's progress.
pub(super) struct Sent {
    pub(super) done: u64,
    /// The bytes in all, where known (0 while files still grow).
    pub(super) total: u64,
    pub(super) buf: Vec<u8>,
}

impl Sent {
    pub(super) fn new(total: u64) -> Sent {
        Sent {
            done: 0,
            total,
            buf: vec![0u8; BUF],
        }
    }

    /// Reports `n` more bytes sent.
    pub(super) fn advance(&mut self, n: u64, progress: &mut Option<Progress<'_>>) {
        self.done += n;
        if let Some(p) = progress.as_mut() {
            p(self.done, self.total);
        }
    }

    /// Sends one file: header, contents, checksum.
    pub(super) fn file(
        &mut self,
        w: &mut impl Write,
        dir: &Path,
        (name, size, mode): &Entry,
        progress: &mut Option<Progress<'_>>,
    ) -> Result<()> {
        let path = dir.join(name);
        let mut f =
            File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let head = file_header(name, *mode, *size);
        w.write_all(&head)
            .map_err(io_err("sending a file header"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        let mut left = *size;
        while left > 0 {
            let n = (left.min(BUF as u64)) as usize;
            let chunk = &mut self.buf[..n];
            f.read_exact(chunk).map_err(|e| {
                Error::io(
                    format!("reading {} (did it change while sent?)", path.display()),
                    e,
                )
            })?;
            crc.update(chunk);
            w.write_all(chunk)
                .map_err(io_err("sending file contents"))?;
            left -= n as u64;
            self.advance(n as u64, progress);
        }
        w.write_all(&crc.finalize().to_le_bytes())
            .map_err(io_err("sending a checksum"))
    }
}
