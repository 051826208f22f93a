//! Sending an images directory over a byte stream, and receiving it.
//!
//! The wire format, all integers little-endian:
//!
//! ```text
//! stream  := "CRIURS\x00\x01" item* end
//! item    := 'F' name_len:u16 name mode:u32 size:u64 bytes[size] crc32:u32
//!            (the CRC-32 covers everything from 'F' to the last byte)
//!          | 'G' name_len:u16 name mode:u32 chunk* 'Z' size:u64 crc32:u32
//!            (a file sent while it grows; the CRC-32 covers the header,
//!            the chunks' bytes and the size)
//!          | 'M' len:u32 json[len]            (a control message)
//! chunk   := 'D' len:u32 bytes[len]            (0 < len <= 8 MiB)
//! end     := 'E' files:u32 bytes:u64
//! ```
//!
//! Names are single path components (a CRIU images directory is flat). The
//! receiver writes into a private directory of a random name beside the
//! target (0700, files created through its descriptor, never following a
//! link) and renames it into place only when the end marker's totals
//! match; on any error the partial directory is removed (a message where a
//! file or chunk is due is the sender giving up, handed back to the
//! migration, which shows why). Every chunk of a growing
//! file is checked against the limits before it is written. What the
//! sender announces is bounded ([`Limits`]: file count, file and total sizes, the
//! free space of the target's file system, and an idle timeout where the
//! stream has timeouts). The CRC-32 per file protects against corruption,
//! not against an attacker (who could rewrite the checksum too): wrap the
//! stream in TLS or similar for authenticity and secrecy.
//!
//! Inside: `frame` (header, messages, integers), `send`, `growing` (a
//! directory sent while it is written), `receive` (with
//! its limits) and `partial` (the private directory being received),
//! [`Transport`], the connected stream both ends use, and `channel`
//! ([`SideChannels`]): CRIU's own connections of a migration, which a
//! transport may carry beside its stream.

mod channel;
mod frame;
mod growing;
mod partial;
mod receive;
mod send;
mod transport;

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result, TransferKind};

// The stream's framing and the entry points a migration builds its
// protocol from (a header once, then messages and directories) stay
// inside the crate: the public API is one sender and the one receiver
// that reads what it writes.
#[cfg(feature = "tls")]
pub(crate) use channel::{accept_polling, shut};
pub use channel::{Carrying, CriuConnection, Offer, Service, SideChannels};
pub(crate) use channel::{Dialer, LoopbackEnd};
pub(crate) use frame::{read_header, recv_message, send_message, write_header};
pub(crate) use growing::{free_file, Growing};
pub use receive::Limits;
pub(crate) use receive::{receive_dir_or_message, receive_dir_with, DirOrMessage};
pub(crate) use send::send_files;
pub use transport::{Interrupter, Transport};

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

/// Progress callback: bytes done so far, bytes in total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// The size of the copy buffers.
const BUF: usize = 1 << 20;

/// Sends every regular file of `dir` as one image stream: the stream's
/// header, the files (sockets, links and subdirectories are skipped), the
/// end marker. [`receive_dir`] reads it.
///
/// ```no_run
/// # fn main() -> criu::Result<()> {
/// use std::net::TcpStream;
/// use std::path::Path;
///
/// let mut stream = TcpStream::connect("192.0.2.7:4000")
///     .map_err(|e| criu::Error::io("connecting", e))?;
/// let sent = criu::transfer::send_dir(&mut stream, Path::new("/tmp/checkpoint"), None)?;
/// println!("sent {} files, {} bytes", sent.files, sent.bytes);
/// # Ok(())
/// # }
/// ```
pub fn send_dir<W: Write + ?Sized>(
    w: &mut W,
    dir: &Path,
    progress: Option<Progress<'_>>,
) -> Result<TransferStats> {
    let mut w = w;
    write_header(&mut w)?;
    send_files(&mut w, dir, progress)
}

/// Receives what [`send_dir`] sent into `target`, which must not exist
/// yet, within `limits`: either the whole directory appears at `target`,
/// or nothing does. The stream is read as it is: bound a silent peer with
/// the stream's own timeouts (`TcpStream::set_read_timeout`; the idle
/// timeout of `limits` is what [`crate::migrate::receive`] sets them to).
///
/// ```no_run
/// # fn main() -> criu::Result<()> {
/// use std::net::TcpListener;
/// use std::path::Path;
///
/// let io = |e| criu::Error::io("accepting", e);
/// let (mut stream, _) = TcpListener::bind("0.0.0.0:4000").and_then(|l| l.accept()).map_err(io)?;
/// let limits = criu::transfer::Limits::default().max_total_bytes(64 << 30);
/// let got = criu::transfer::receive_dir(&mut stream, Path::new("/tmp/received"), &limits, None)?;
/// println!("received {} files, {} bytes", got.files, got.bytes);
/// # Ok(())
/// # }
/// ```
pub fn receive_dir<R: Read + ?Sized>(
    r: &mut R,
    target: &Path,
    limits: &Limits,
    progress: Option<Progress<'_>>,
) -> Result<TransferStats> {
    let mut r = r;
    read_header(&mut r)?;
    receive_dir_with(&mut r, target, limits, progress)
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

fn transfer_err(
    kind: TransferKind,
    message: impl Into<String>,
    source: Option<io::Error>,
) -> Error {
    Error::Transfer {
        kind,
        message: message.into(),
        source,
    }
}

/// Maps an I/O error on the stream, naming a stream that ended early.
fn io_err(what: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| {
        let (kind, msg) = match e.kind() {
            io::ErrorKind::UnexpectedEof => (
                TransferKind::Truncated,
                format!("{what}: the stream ended early (truncated)"),
            ),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => (
                TransferKind::TimedOut,
                format!("{what}: the peer sent nothing within the stream's timeout"),
            ),
            _ => (TransferKind::Stream, what.to_string()),
        };
        transfer_err(kind, msg, Some(e))
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
