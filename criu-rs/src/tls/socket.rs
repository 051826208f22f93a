//! The TCP connection under a TLS session, read in large pieces.
//!
//! rustls asks its reader for at most 4 KiB at a time (it sizes its
//! record buffer in 4 KiB steps), so a TLS stream over a bare `TcpStream`
//! makes a `read` system call, and often a wake-up, per 4 KiB: on a
//! loaded machine the encrypted stream ran at a third of the plain one's
//! rate with the cipher itself (AES-GCM) under 5% of the time. Reading
//! the socket in 256 KiB pieces and handing rustls its 4 KiB from memory
//! costs one extra copy of the ciphertext and saves most system calls.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// The most read from the socket at once.
const READ_AHEAD: usize = 256 << 10;

/// A `TcpStream` with a read-ahead buffer; writes go straight through.
pub(super) struct Socket {
    tcp: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

impl Socket {
    pub(super) fn new(tcp: TcpStream) -> Socket {
        Socket {
            tcp,
            buf: vec![0; READ_AHEAD].into_boxed_slice(),
            pos: 0,
            len: 0,
        }
    }

    pub(super) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub(super) fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// The connection, and what was read ahead of rustls.
    pub(super) fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let early = self.buf[self.pos..self.len].to_vec();
        (self.tcp, early)
    }
}

impl Read for Socket {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            self.len = self.tcp.read(&mut self.buf)?;
            self.pos = 0;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.tcp.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}
