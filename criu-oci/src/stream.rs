//! The adapters that let a checkpoint stream through the registry client
//! with bounded memory: [`Chunks`] turns the archive writer's output into
//! the chunks a push sends; [`PieceWriter`] hands a pulled blob to the
//! unpacking thread ([`Pieces`]), [`Counted`] counts a blob's bytes for
//! progress reports, and [`Spooled`] takes one into a
//! temporary file, either through [`Capped`], which holds it to the size
//! its descriptor says.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::image::Spooled;

/// The size of one pushed chunk: oci-client sends each stream item of up
/// to 4 MiB as one `PATCH` (larger ones it splits, smaller ones it does
/// not merge), so items of exactly that size make the fewest requests.
pub(crate) const CHUNK: usize = 4 << 20;

/// How many full chunks may wait for the network: with the one being
/// filled and the one in flight, a push holds at most `(QUEUE + 2) *
/// CHUNK` bytes, whatever the checkpoint's size.
pub(crate) const QUEUE: usize = 2;

/// An item of the pushed stream: a chunk, or why packing failed (which
/// makes oci-client abandon the upload before it commits the blob).
pub(crate) type Item = oci_client::errors::Result<Bytes>;

/// A `Write` that cuts what it is given into [`CHUNK`]-sized chunks and
/// sends each, blocking while [`QUEUE`] of them wait (run it on a thread
/// of its own, never on the runtime that pushes).
pub(crate) struct Chunks {
    tx: mpsc::Sender<Item>,
    buf: BytesMut,
}

impl Chunks {
    /// A writer feeding `tx`, and the stream's receiving end.
    pub(crate) fn channel() -> (Chunks, mpsc::Receiver<Item>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let chunks = Chunks {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
        };
        (chunks, rx)
    }

    fn send(&mut self, item: Item) -> io::Result<()> {
        self.tx
            .blocking_send(item)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the push stopped reading"))
    }

    /// Sends what is left (the last, short chunk) and ends the stream.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let last = self.buf.split().freeze();
            self.send(Ok(last))?;
        }
        Ok(())
    }

    /// Ends the stream with `why`, so that the upload is abandoned.
    pub(crate) fn fail(mut self, why: String) {
        let _ = self.send(Err(oci_client::errors::OciDistributionError::GenericError(
            Some(why),
        )));
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            let full = self.buf.split().freeze();
            self.buf.reserve(CHUNK);
            self.send(Ok(full))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Refuses `data` if, after `have` bytes, it would take a pulled blob
/// past `cap`, the size its manifest announces.
fn within_cap(have: u64, data: &[u8], cap: u64) -> io::Result<()> {
    if have + data.len() as u64 > cap {
        return Err(io::Error::other(format!(
            "the registry sent more than the {cap} bytes the manifest announces"
        )));
    }
    Ok(())
}

/// An `AsyncWrite` over a blocking `Write` that refuses to take more than
/// `cap` bytes: a registry sending more than the descriptor's size is cut
/// off, not written without end. The writes block: they go to a local
/// file or a bounded queue, from a runtime that serves only this pull, so
/// a hop to tokio's blocking pool for every chunk would buy nothing.
pub(crate) struct Capped<W> {
    inner: W,
    written: u64,
    cap: u64,
}

impl<W> Capped<W> {
    pub(crate) fn new(inner: W, cap: u64) -> Capped<W> {
        Capped {
            inner,
            written: 0,
            cap,
        }
    }
}

impl<W: Write + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = within_cap(this.written, data, this.cap) {
            return Poll::Ready(Err(e));
        }
        let written = this.inner.write(data);
        if let Ok(n) = written {
            this.written += n as u64;
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.inner.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// A pulled blob taken into a temporary file.
impl Write for Spooled {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.file.write(data)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How much a pulled layer's bytes are gathered into before they go to
/// the unpacking thread (the client's own pieces are a few KiB).
const PIECE: usize = 1 << 20;

/// A `Write` that hands a pulled blob, in [`PIECE`]s, to a thread
/// reading them through [`Pieces`] (wrap it in [`Capped`]). A send
/// blocks while [`QUEUE`] pieces wait: that is the back-pressure that
/// keeps memory bounded (the runtime serves only this pull, so blocking
/// it stops nothing else).
pub(crate) struct PieceWriter {
    tx: std::sync::mpsc::SyncSender<Bytes>,
    buf: BytesMut,
}

impl PieceWriter {
    /// A writer and its reading end.
    pub(crate) fn channel() -> (PieceWriter, Pieces) {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = PieceWriter {
            tx,
            buf: BytesMut::with_capacity(PIECE),
        };
        let reader = Pieces {
            rx,
            piece: Bytes::new(),
        };
        (writer, reader)
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = self.buf.split().freeze();
        self.buf.reserve(PIECE);
        self.tx
            .send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the unpacker stopped reading"))
    }
}

impl Write for PieceWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIECE {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// A `Write` that counts what passes through it into a shared counter,
/// which the driver of a pull reads to report progress.
pub(crate) struct Counted<W> {
    inner: W,
    moved: Arc<AtomicU64>,
}

impl<W> Counted<W> {
    pub(crate) fn new(inner: W, moved: Arc<AtomicU64>) -> Counted<W> {
        Counted { inner, moved }
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The reading end of a [`PieceWriter`]: ends when the writer is dropped.
pub(crate) struct Pieces {
    rx: std::sync::mpsc::Receiver<Bytes>,
    piece: Bytes,
}

impl io::Read for Pieces {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.piece.is_empty() {
            match self.rx.recv() {
                Ok(next) => self.piece = next,
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.piece.len());
        out[..n].copy_from_slice(&self.piece.split_to(n));
        Ok(n)
    }
}
