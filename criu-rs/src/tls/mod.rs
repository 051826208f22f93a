//! Mutually authenticated, encrypted migration.
//!
//! Two hosts that migrate to each other each hold a certificate and key
//! signed by a certificate authority the operator keeps for this purpose
//! only, and that CA's certificate ([`TlsFiles`], three PEM files). Then:
//!
//! * the migration's own stream is a `TlsStream` (feature `tls`, through
//!   rustls, TLS 1.3 only): `TlsConfig::connect` on the source,
//!   `TlsConfig::accept` on the destination, both before
//!   [`crate::migrate::send`] / [`crate::migrate::receive`]. Each side
//!   checks that the other's certificate chains to the CA and is valid
//!   now; a peer that fails (no certificate, another CA, expired, not TLS,
//!   silent past the handshake timeout) is refused with [`Error::Tls`]
//!   before a byte of the migration crosses, so the source process is not
//!   even stopped;
//! * CRIU's own connections (the page server's and the lazy-pages
//!   daemon's, beside the stream) are side channels of the `TlsStream`
//!   (`crate::transfer::SideChannels`): each is carried by the crate inside
//!   a rustls connection of its own, with the stream's configuration and a
//!   one-time token sent over the stream, so [`crate::migrate`] secures
//!   them by itself. For another secure stream without side channels, the
//!   files named with `SourceConfig::criu_tls` make CRIU use its own TLS
//!   (GnuTLS, `--tls`): the migration passes them to the dump through the
//!   crate's config file ([`crate::Options::criu_tls`]) and to the daemons
//!   on their command line ([`crate::DaemonConfig::tls`]).
//!
//! Who may migrate: any holder of a certificate from the CA, in either
//! direction, unless an end names the peer it expects
//! (`TlsConfig::peer_name`): then the peer's certificate must name that
//! host too, on the migration's stream (CRIU's own connections run with
//! `--tls-no-cn-verify`: its page server would check the *client's*
//! certificate against its own listening address). Keep the CA for
//! migration only, and its key off the hosts.

#[cfg(feature = "tls")]
pub(crate) mod relay;
#[cfg(feature = "tls")]
mod session;
#[cfg(feature = "tls")]
mod stream;

pub use crate::credentials::TlsFiles;
#[cfg(feature = "tls")]
pub use stream::{TlsConfig, TlsStream};

#[cfg(doc)]
use crate::error::Error;
