//! The connection a migration runs over, as the two commands of
//! `examples/migrate_host` and the two-namespace demo make it: criu-rs's
//! own [`Link`] (plain TCP, or TCP with mutual TLS). One code path for
//! every caller: the demo, the benches and the tests go through
//! [`send_to`] and [`accept_peer`] like the commands do.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use criu::migrate::{self, DestConfig, DestReport, SourceConfig, SourceReport};
pub use criu::migrate::{Link, Stream};
use criu::tls::TlsConfig;
use criu::Criu;

/// The `send` command: connects to the destination at `addr` and migrates
/// the tree rooted at `pid` to it. A refused connection fails before the
/// tree is touched.
pub fn send_to(
    link: &Link,
    addr: SocketAddr,
    pid: i32,
    cfg: SourceConfig<'_>,
) -> criu::Result<SourceReport> {
    let mut stream = link.connect(addr, Duration::from_secs(10))?;
    migrate::send(&Criu::new(), pid, &mut *stream, cfg)
}

/// The `receive` command's step: accepts one connection on `listener` and
/// authenticates it. A refused peer is an error here, before anything of
/// the migration is read; the caller may wait for the next one.
pub fn accept_peer(link: &Link, listener: &TcpListener) -> criu::Result<(Stream, SocketAddr)> {
    link.accept(listener)
}

/// Receives and restores a migration on an accepted stream.
pub fn receive_from(stream: &mut Stream, cfg: DestConfig<'_>) -> criu::Result<DestReport> {
    migrate::receive(&Criu::new(), &mut **stream, cfg)
}

/// Plain or TLS, as the demo and the benches choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP.
    Plain,
    /// Mutual TLS with throwaway certificates.
    Tls,
}

impl std::str::FromStr for Security {
    type Err = String;
    fn from_str(s: &str) -> Result<Security, String> {
        match s {
            "plain" => Ok(Security::Plain),
            "tls" => Ok(Security::Tls),
            _ => Err(format!("unknown transport {s:?} (plain, tls)")),
        }
    }
}

/// The links of host a and host b for one demo run, and the throwaway
/// PKI they read (CRIU reads the files when it connects, so they live as
/// long as this).
pub struct DemoLinks {
    /// Host a's link.
    pub a: Link,
    /// Host b's link.
    pub b: Link,
    _pki: Option<crate::certs::Pki>,
}

impl DemoLinks {
    /// Plain links, or TLS links with a fresh CA and a certificate per host.
    pub fn new(security: Security) -> Result<DemoLinks, crate::container::BoxError> {
        if security == Security::Plain {
            return Ok(DemoLinks {
                a: Link::Plain,
                b: Link::Plain,
                _pki: None,
            });
        }
        let pki = crate::certs::Pki::new()?;
        let link = |f: &criu::tls::TlsFiles| -> criu::Result<Link> {
            Ok(Link::Tls(Box::new(TlsConfig::new(f.clone())?)))
        };
        Ok(DemoLinks {
            a: link(&pki.a)?,
            b: link(&pki.b)?,
            _pki: Some(pki),
        })
    }
}
