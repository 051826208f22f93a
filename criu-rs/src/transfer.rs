//! Sending an images directory over a byte stream, and receiving it.
//!
//! The wire format, all integers little-endian:
//!
//! ```text
//! stream  := "CRIURS\x00\x01" item* end
//! item    := 'F' name_len:u16 name mode:u32 size:u64 bytes[size] crc32:u32
//!            (the CRC-32 covers everything from 'F' to the last byte)
//!          | 'M' len:u32 json[len]            (a control message)
//! end     := 'E' files:u32 bytes:u64
//! ```
//!
//! Names are single path components (a CRIU images directory is flat). The
//! receiver writes into a private sibling directory and renames it into
//! place only when the end marker's totals match; on any error the partial
//! directory is removed. The CRC-32 per file protects against corruption,
//! not against an attacker (who could rewrite the checksum too): wrap the
//! stream in TLS or similar for authenticity and secrecy.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"CRIURS\x00\x01";
const BUF: usize = 1 << 20;
/// The longest control message accepted.
const MAX_MESSAGE: u32 = 1 << 20;

/// What one transfer moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TransferStats {
    /// Files sent or received.
    pub files: u32,
    /// Payload bytes (file contents).
    pub bytes: u64,
    /// How long it took.
    #[serde(serialize_with = "crate::report::micros")]
    pub elapsed: Duration,
}

/// A connected byte stream between two peers (TCP, a unix socket, or a
/// TLS or SSH stream wrapped around one), as the image stream and
/// [`crate::migrate`] use it. Only `Read + Write` is required: the two
/// methods have defaults for streams that have no timeouts and no IP
/// addresses; implement them where the stream does.
pub trait Transport: Read + Write {
    /// Readies the stream for a request/answer exchange: bound each later
    /// read and write by `timeout` (`None`: unbounded) and send small
    /// writes at once (`TCP_NODELAY` for TCP). Returns whether the stream
    /// could bound its reads and writes; the default cannot.
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let _ = timeout;
        Ok(false)
    }

    /// The IP addresses of this end and of the peer, for a network stream
    /// (the default: none). CRIU's own connections of a migration (page
    /// server, lazy pages) go between these addresses unless the
    /// configuration names others.
    fn ip_addresses(&self) -> Option<(IpAddr, IpAddr)> {
        None
    }

    /// The TLS files CRIU's own connections of a migration must use to be
    /// as safe as this stream (a [`crate::tls::TlsStream`] gives its own;
    /// the default: none, CRIU's connections are plain TCP unless the
    /// migration's configuration names files).
    fn criu_tls(&self) -> Option<crate::tls::TlsFiles> {
        None
    }
}

impl Transport for TcpStream {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        // The protocol's small messages (ready, restored, done) must not
        // wait for a delayed ACK.
        self.set_nodelay(true)?;
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)?;
        Ok(true)
    }

    fn ip_addresses(&self) -> Option<(IpAddr, IpAddr)> {
        Some((self.local_addr().ok()?.ip(), self.peer_addr().ok()?.ip()))
    }
}

impl Transport for UnixStream {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)?;
        Ok(true)
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        (**self).prepare(timeout)
    }

    fn ip_addresses(&self) -> Option<(IpAddr, IpAddr)> {
        (**self).ip_addresses()
    }

    fn criu_tls(&self) -> Option<crate::tls::TlsFiles> {
        (**self).criu_tls()
    }
}

/// Progress callback: bytes done so far, bytes in total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

fn transfer_err(message: impl Into<String>, source: Option<io::Error>) -> Error {
    Error::Transfer {
        message: message.into(),
        source,
    }
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| {
        let msg = if e.kind() == io::ErrorKind::UnexpectedEof {
            format!("{what}: the stream ended early (truncated)")
        } else {
            what.to_string()
        };
        transfer_err(msg, Some(e))
    }
}

/// Whether `name` is a plain file name that stays inside a directory.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains('/')
        && !name.contains('\0')
}

/// Writes the stream header. Called once per stream, by the sender.
pub fn write_header(w: &mut impl Write) -> Result<()> {
    w.write_all(MAGIC).map_err(io_err("sending the header"))
}

/// Reads and checks the stream header.
pub fn read_header(r: &mut impl Read) -> Result<()> {
    let mut m = [0u8; 8];
    r.read_exact(&mut m).map_err(io_err("reading the header"))?;
    if &m != MAGIC {
        return Err(transfer_err("not a criu-rs image stream (bad magic)", None));
    }
    Ok(())
}

/// Sends a control message.
pub fn send_message<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg)
        .map_err(|e| transfer_err(format!("encoding a message: {e}"), None))?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(b'M');
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).map_err(io_err("sending a message"))?;
    w.flush().map_err(io_err("sending a message"))
}

/// Receives a control message.
pub fn recv_message<T: DeserializeOwned>(r: &mut impl Read) -> Result<T> {
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)
        .map_err(io_err("reading a message"))?;
    if tag[0] != b'M' {
        return Err(transfer_err(
            format!("expected a message, got frame {:#x}", tag[0]),
            None,
        ));
    }
    let len = read_u32(r, "reading a message")?;
    if len > MAX_MESSAGE {
        return Err(transfer_err(
            format!("message of {len} bytes is too long"),
            None,
        ));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body)
        .map_err(io_err("reading a message"))?;
    serde_json::from_slice(&body)
        .map_err(|e| transfer_err(format!("decoding a message: {e}"), None))
}

fn read_u16(r: &mut impl Read, what: &str) -> Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b).map_err(io_err(what))?;
    Ok(u16::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read, what: &str) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(io_err(what))?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read, what: &str) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(io_err(what))?;
    Ok(u64::from_le_bytes(b))
}

/// Sends every regular file of `dir` (sockets, links and subdirectories
/// are skipped), then the end marker.
pub fn send_dir(
    w: &mut impl Write,
    dir: &Path,
    mut progress: Option<Progress<'_>>,
) -> Result<TransferStats> {
    let start = Instant::now();
    // Headers, checksums and small images would otherwise go out as tiny
    // writes, each a TCP segment (or, without TCP_NODELAY, a wait for the
    // previous one's delayed ACK).
    let w = &mut std::io::BufWriter::with_capacity(BUF, w);
    let mut files = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let meta = entry
            .metadata()
            .map_err(|e| Error::io("reading file metadata", e))?;
        if !meta.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|n| {
            transfer_err(
                format!("file name {n:?} in {} is not UTF-8", dir.display()),
                None,
            )
        })?;
        files.push((name, meta.len(), meta.permissions().mode() & 0o7777));
    }
    files.sort();
    let total: u64 = files.iter().map(|f| f.1).sum();
    let mut done = 0u64;
    let mut buf = vec![0u8; BUF];
    for (name, size, mode) in &files {
        let path = dir.join(name);
        let mut f =
            File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut head = Vec::with_capacity(name.len() + 15);
        head.push(b'F');
        head.extend_from_slice(&(name.len() as u16).to_le_bytes());
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(&mode.to_le_bytes());
        head.extend_from_slice(&size.to_le_bytes());
        w.write_all(&head)
            .map_err(io_err("sending a file header"))?;
        let mut left = *size;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        while left > 0 {
            let n = (left.min(BUF as u64)) as usize;
            f.read_exact(&mut buf[..n]).map_err(|e| {
                Error::io(
                    format!("reading {} (did it change while sent?)", path.display()),
                    e,
                )
            })?;
            crc.update(&buf[..n]);
            w.write_all(&buf[..n])
                .map_err(io_err("sending file contents"))?;
            left -= n as u64;
            done += n as u64;
            if let Some(p) = progress.as_mut() {
                p(done, total);
            }
        }
        w.write_all(&crc.finalize().to_le_bytes())
            .map_err(io_err("sending a checksum"))?;
    }
    let mut end = vec![b'E'];
    end.extend_from_slice(&(files.len() as u32).to_le_bytes());
    end.extend_from_slice(&total.to_le_bytes());
    w.write_all(&end)
        .map_err(io_err("sending the end marker"))?;
    w.flush().map_err(io_err("sending the end marker"))?;
    Ok(TransferStats {
        files: files.len() as u32,
        bytes: total,
        elapsed: start.elapsed(),
    })
}

/// A directory being received; removed on drop unless completed.
struct Partial {
    path: PathBuf,
    done: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Receives a directory sent by [`send_dir`] into `target`, which must not
/// exist yet. Either the whole directory appears at `target`, or nothing
/// does.
pub fn receive_dir(
    r: &mut impl Read,
    target: &Path,
    mut progress: Option<Progress<'_>>,
) -> Result<TransferStats> {
    let start = Instant::now();
    if target.exists() {
        return Err(transfer_err(
            format!("{} already exists", target.display()),
            None,
        ));
    }
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = target
        .file_name()
        .ok_or_else(|| transfer_err(format!("{} has no file name", target.display()), None))?;
    let partial_path = parent.join(format!(
        ".{}.partial-{}",
        base.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&partial_path);
    DirBuilder::new()
        .mode(0o700)
        .create(&partial_path)
        .map_err(|e| Error::io(format!("creating {}", partial_path.display()), e))?;
    let mut partial = Partial {
        path: partial_path,
        done: false,
    };
    let mut files = 0u32;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; BUF];
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)
            .map_err(io_err("reading the next frame"))?;
        match tag[0] {
            b'F' => {
                let len = read_u16(r, "reading a file name")? as usize;
                let mut name = vec![0u8; len];
                r.read_exact(&mut name)
                    .map_err(io_err("reading a file name"))?;
                let name = String::from_utf8(name)
                    .map_err(|_| transfer_err("a file name is not UTF-8", None))?;
                if !is_safe_name(&name) {
                    return Err(transfer_err(
                        format!(
                            "refusing file name {name:?}: it would escape the target directory"
                        ),
                        None,
                    ));
                }
                let raw_mode = read_u32(r, "reading a file mode")?;
                let size = read_u64(r, "reading a file size")?;
                let mode = raw_mode & 0o777;
                let mut crc = crc32fast::Hasher::new();
                crc.update(b"F");
                crc.update(&(name.len() as u16).to_le_bytes());
                crc.update(name.as_bytes());
                crc.update(&raw_mode.to_le_bytes());
                crc.update(&size.to_le_bytes());
                let path = partial.path.join(&name);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode & 0o700 | 0o600)
                    .open(&path)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            transfer_err(format!("file {name:?} sent twice"), None)
                        } else {
                            Error::io(format!("creating {}", path.display()), e)
                        }
                    })?;
                let mut left = size;
                while left > 0 {
                    let n = (left.min(BUF as u64)) as usize;
                    r.read_exact(&mut buf[..n])
                        .map_err(io_err("reading file contents"))?;
                    crc.update(&buf[..n]);
                    f.write_all(&buf[..n])
                        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                    left -= n as u64;
                    bytes += n as u64;
                    if let Some(p) = progress.as_mut() {
                        p(bytes, 0);
                    }
                }
                let want = read_u32(r, "reading a checksum")?;
                let got = crc.finalize();
                if want != got {
                    return Err(transfer_err(
                        format!("checksum mismatch in {name:?}: sent {want:#010x}, received {got:#010x}"),
                        None,
                    ));
                }
                files += 1;
            }
            b'E' => {
                let want_files = read_u32(r, "reading the end marker")?;
                let want_bytes = read_u64(r, "reading the end marker")?;
                if (want_files, want_bytes) != (files, bytes) {
                    return Err(transfer_err(
                        format!(
                            "the sender announced {want_files} files / {want_bytes} bytes, {files} / {bytes} arrived"
                        ),
                        None,
                    ));
                }
                fs::rename(&partial.path, target).map_err(|e| {
                    Error::io(
                        format!("moving the received images to {}", target.display()),
                        e,
                    )
                })?;
                partial.done = true;
                return Ok(TransferStats {
                    files,
                    bytes,
                    elapsed: start.elapsed(),
                });
            }
            other => return Err(transfer_err(format!("unexpected frame {other:#x}"), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        write_header(&mut v).unwrap();
        send_dir(&mut v, dir, None).unwrap();
        v
    }

    fn receive(bytes: &[u8], target: &Path) -> Result<TransferStats> {
        let mut r = bytes;
        read_header(&mut r)?;
        receive_dir(&mut r, target, None)
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
}
