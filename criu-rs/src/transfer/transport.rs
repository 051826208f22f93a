//! The connected byte stream a transfer or a migration runs over.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected byte stream between two peers (TCP, a unix socket, or a
/// TLS or SSH stream wrapped around one), as the image stream and
/// [`crate::migrate`] use it. Only `Read + Write` is required: the two
/// methods have defaults for streams that have no timeouts and no IP
/// addresses; implement them where the stream does.
pub trait Transport: Read + Write {
    /// Readies the stream for a request/answer exchange: bound each later
    /// read and write by `timeout` (`None` leaves the stream's timeouts as
    /// they are) and send small writes at once (`TCP_NODELAY` for TCP).
    /// Returns whether the stream can bound its reads and writes; the
    /// default cannot, and then only the caller can unblock a silent peer
    /// (by closing the stream).
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let _ = timeout;
        Ok(false)
    }

    /// The IP addresses of this end and of the peer, for a network stream
    /// (the default: none), or the error of a network stream that cannot
    /// tell them (a TCP stream whose peer reset it has no peer address).
    /// CRIU's own connections of a migration (page server, lazy pages) go
    /// between these addresses, unless the configuration names others or
    /// the stream carries them itself ([`Transport::side_channels`]).
    fn ip_addresses(&self) -> io::Result<Option<(IpAddr, IpAddr)>> {
        Ok(None)
    }

    /// The TLS files CRIU's own connections of a migration must use to be
    /// as safe as this stream (a `crate::tls::TlsStream` gives its own;
    /// the default: none, CRIU's connections are plain TCP unless the
    /// migration's configuration names files).
    fn criu_tls(&self) -> Option<crate::credentials::TlsFiles> {
        None
    }

    /// How this stream carries CRIU's own connections of a migration (the
    /// page server's, the lazy pages'): a factory that opens (source) and
    /// accepts (destination) one more connection to the same peer per
    /// service, for a stream that can (a `crate::tls::TlsStream` relays
    /// them through TLS; a unix or vsock transport connects again to its
    /// peer's listener). The default, none: CRIU connects by itself
    /// between the IP addresses ([`Transport::ip_addresses`], or those
    /// the migration's configuration names), and a stream without either
    /// cannot carry the page-server and lazy strategies.
    fn side_channels(&self) -> Option<Box<dyn super::SideChannels>> {
        None
    }

    /// The socket this stream writes its bytes to unchanged (a plain TCP
    /// or unix stream): a transfer may then send file contents straight
    /// from the file with `sendfile(2)`, without copying them through this
    /// process. The default, and any stream that transforms its bytes
    /// (TLS), has none.
    fn plain_socket(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// What wakes a read of this stream that blocks in another thread,
    /// for a cancelled migration (`crate::migrate::Cancel`): the plain
    /// and TLS sockets shut their reading side down, so a blocked read
    /// returns at once while writes still reach the peer (which is told
    /// why). The default has none: a cancelled migration then notices
    /// at its next step, or when the stream's timeout expires.
    fn interrupter(&self) -> Option<Interrupter> {
        None
    }
}

/// See [`Transport::interrupter`].
pub type Interrupter = Box<dyn Fn() + Send + Sync>;

/// Shuts the reading side of a clone of `socket` down, when called.
fn shut_reading(socket: io::Result<impl ShutRead>) -> Option<Interrupter> {
    let socket = socket.ok()?;
    Some(Box::new(move || socket.shut_read()))
}

trait ShutRead: Send + Sync + 'static {
    fn shut_read(&self);
}

impl ShutRead for TcpStream {
    fn shut_read(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
}

impl ShutRead for UnixStream {
    fn shut_read(&self) {
        let _ = self.shutdown(Shutdown::Read);
    }
}

impl Transport for TcpStream {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        // The protocol's small messages (ready, restored, done) must not
        // wait for a delayed ACK.
        self.set_nodelay(true)?;
        if timeout.is_some() {
            self.set_read_timeout(timeout)?;
            self.set_write_timeout(timeout)?;
        }
        Ok(true)
    }

    fn ip_addresses(&self) -> io::Result<Option<(IpAddr, IpAddr)>> {
        Ok(Some((self.local_addr()?.ip(), self.peer_addr()?.ip())))
    }

    fn plain_socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }

    fn interrupter(&self) -> Option<Interrupter> {
        shut_reading(self.try_clone())
    }
}

impl Transport for UnixStream {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        if timeout.is_some() {
            self.set_read_timeout(timeout)?;
            self.set_write_timeout(timeout)?;
        }
        Ok(true)
    }

    fn plain_socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }

    fn interrupter(&self) -> Option<Interrupter> {
        shut_reading(self.try_clone())
    }
}

/// A stream into memory (an in-memory stream for tests, or one built now
/// and sent later): what is written is kept, nothing is read back, and
/// file contents go through the buffer, as over TLS.
impl Transport for std::io::Cursor<Vec<u8>> {}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        (**self).prepare(timeout)
    }

    fn ip_addresses(&self) -> io::Result<Option<(IpAddr, IpAddr)>> {
        (**self).ip_addresses()
    }

    fn criu_tls(&self) -> Option<crate::credentials::TlsFiles> {
        (**self).criu_tls()
    }

    fn side_channels(&self) -> Option<Box<dyn super::SideChannels>> {
        (**self).side_channels()
    }

    fn plain_socket(&self) -> Option<BorrowedFd<'_>> {
        (**self).plain_socket()
    }

    fn interrupter(&self) -> Option<Interrupter> {
        (**self).interrupter()
    }
}
