//! The connection a migration runs over: plain TCP, or TCP with mutual
//! TLS ([`criu::tls`]).
//!
//! TEMPORARY: a copy of what `criu-testkit`'s `link` module does (connect,
//! accept, wrap in TLS), kept here because the CLI must not depend on the
//! test kit. To be replaced by criu-rs's own connect/accept API (migration
//! core, #22) when it lands; the CLI then only builds its `TlsConfig` and
//! calls that. The one addition is [`Connected::canceller`]: a second
//! handle on the TCP socket that a signal handler shuts down, which fails
//! the migration through its ordinary error path (the source resumes).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use criu::migrate::Transport;
use criu::tls::TlsConfig;

/// A connected migration stream of either kind.
pub type Stream = Box<dyn Transport + Send>;

/// How the two hosts talk.
#[derive(Debug, Clone)]
pub enum Link {
    /// Plain TCP: memory crosses in clear, anyone who reaches the port is
    /// heard.
    Plain,
    /// Mutual TLS with this host's files; CRIU's own connections use TLS
    /// too.
    Tls(Box<TlsConfig>),
}

/// A stream and a handle to break it off.
pub struct Connected {
    /// The migration stream.
    pub stream: Stream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The same socket, to shut down from a signal handler.
    pub canceller: TcpStream,
}

impl Link {
    /// `plain` or `tls`, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Link::Plain => "plain",
            Link::Tls(_) => "tls",
        }
    }

    /// The source's end: connects to `addr` within `timeout` and, for TLS,
    /// authenticates both sides.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> criu::Result<Connected> {
        let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| criu::Error::Io {
            what: format!("connecting to the destination at {addr}"),
            source: e,
        })?;
        self.wrap(tcp, addr, |tls, tcp| tls.connect(tcp))
    }

    /// The destination's end: accepts one connection and, for TLS,
    /// authenticates it (a refused peer is an error here, before anything
    /// of the migration is read).
    pub fn accept(&self, listener: &TcpListener) -> criu::Result<Connected> {
        let (tcp, peer) = listener.accept().map_err(|e| criu::Error::Io {
            what: "accepting a connection".into(),
            source: e,
        })?;
        self.wrap(tcp, peer, |tls, tcp| tls.accept(tcp))
    }

    fn wrap(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        secure: impl FnOnce(&TlsConfig, TcpStream) -> criu::Result<criu::tls::TlsStream>,
    ) -> criu::Result<Connected> {
        let canceller = tcp.try_clone().map_err(|e| criu::Error::Io {
            what: "duplicating the connection's socket".into(),
            source: e,
        })?;
        let stream: Stream = match self {
            Link::Plain => Box::new(tcp),
            Link::Tls(tls) => Box::new(secure(tls, tcp)?),
        };
        Ok(Connected {
            stream,
            peer,
            canceller,
        })
    }
}
