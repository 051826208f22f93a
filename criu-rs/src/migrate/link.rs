//! Connecting the two hosts of a migration: plain TCP, or TCP with mutual
//! TLS (feature `tls`), so that a program can run both ends with this
//! crate alone.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use std::time::Duration;
//!
//! use criu::migrate::{self, DestConfig, Link, SourceConfig, Strategy};
//! use criu::tls::{TlsConfig, TlsFiles};
//!
//! # fn main() -> criu::Result<()> {
//! let files = TlsFiles::new("ca.pem", "host-b.pem", "host-b-key.pem");
//! // Host B accepts only host-a's certificate (chained to the CA).
//! let link = Link::Tls(Box::new(TlsConfig::new(files)?.peer_name("host-a")?));
//! let listener = TcpListener::bind("0.0.0.0:7700").unwrap();
//! let (mut stream, peer) = link.accept(&listener)?;
//! let report = migrate::receive(&criu::Criu::new(), &mut *stream, DestConfig::new())?;
//! println!("{peer}: restored pid {}", report.child.pid());
//! # Ok(())
//! # }
//! ```
//!
//! On the source, `link.connect(addr, Duration::from_secs(10))?` gives the
//! stream for [`super::send`].

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::transfer::Transport;

/// A connected migration stream of either kind.
pub type Stream = Box<dyn Transport + Send>;

/// How the two hosts talk.
#[derive(Debug, Clone)]
pub enum Link {
    /// Plain TCP: memory crosses in clear, anyone who reaches the port is
    /// heard. For a trusted network only.
    Plain,
    /// Mutual TLS with this host's configuration; CRIU's own connections
    /// use TLS too. A refused peer fails [`Link::connect`] /
    /// [`Link::accept`], before anything of the migration crosses.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    Tls(Box<crate::tls::TlsConfig>),
}

impl Link {
    /// `plain` or `tls`, for tables and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Link::Plain => "plain",
            #[cfg(feature = "tls")]
            Link::Tls(_) => "tls",
        }
    }

    /// The source's end: connects to the destination at `addr` (within
    /// `timeout`) and, for TLS, authenticates both sides.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<Stream> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Error::io(format!("connecting to the destination at {addr}"), e))?;
        match self {
            Link::Plain => Ok(Box::new(tcp)),
            #[cfg(feature = "tls")]
            Link::Tls(tls) => Ok(Box::new(tls.connect(tcp)?)),
        }
    }

    /// The destination's end: accepts one connection on `listener` and,
    /// for TLS, authenticates it. A refused peer is an error here; the
    /// caller may wait for the next one. A non-blocking listener with no
    /// connection waiting gives an [`Error::Io`] of kind `WouldBlock`.
    pub fn accept(&self, listener: &TcpListener) -> Result<(Stream, SocketAddr)> {
        let (tcp, peer) = listener
            .accept()
            .map_err(|e| Error::io("accepting a connection", e))?;
        Ok((self.accept_stream(tcp)?, peer))
    }

    /// The destination's end of a connection accepted elsewhere.
    pub fn accept_stream(&self, tcp: TcpStream) -> Result<Stream> {
        match self {
            Link::Plain => Ok(Box::new(tcp)),
            #[cfg(feature = "tls")]
            Link::Tls(tls) => Ok(Box::new(tls.accept(tcp)?)),
        }
    }
}
