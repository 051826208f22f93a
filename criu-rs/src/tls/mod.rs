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
//!   daemon's, beside the stream) use CRIU's TLS (GnuTLS, `--tls`) with the
//!   same three files: the migration passes them to the dump through the
//!   crate's config file ([`crate::Options::criu_tls`]) and to the daemons
//!   on their command line ([`crate::DaemonConfig::tls`]). A `TlsStream`
//!   carries its files, so [`crate::migrate`] does this by itself.
//!
//! Who may migrate: any holder of a certificate from the CA, in either
//! direction. Peer names are not checked (CRIU's page server would check
//! the *client's* certificate against its own listening address, so CRIU
//! runs with `--tls-no-cn-verify`, and the crate's stream does the same:
//! one rule for every connection). Keep the CA for migration only, and
//! its key off the hosts.

#[cfg(feature = "tls")]
mod stream;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[cfg(feature = "tls")]
pub use stream::{TlsConfig, TlsStream};

#[cfg(doc)]
use crate::error::Error;

/// The three PEM files of one host: the CA certificate both sides trust,
/// this host's certificate (chain) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// The CA's certificate, this host's certificate and its key (PEM).
    /// Relative paths are made absolute here, because CRIU reads them from
    /// a working directory of its own.
    pub fn new(ca: impl AsRef<Path>, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> TlsFiles {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        TlsFiles {
            ca: abs(ca.as_ref()),
            cert: abs(cert.as_ref()),
            key: abs(key.as_ref()),
        }
    }

    /// The CA certificate.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// This host's certificate.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// This host's private key.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// CRIU's options for these files, as `(name, value)` pairs; `--tls`
    /// and `--tls-no-cn-verify` have no value.
    fn criu_options(&self) -> [(&'static str, Option<&Path>); 5] {
        [
            ("tls", None),
            ("tls-no-cn-verify", None),
            ("tls-cacert", Some(&self.ca)),
            ("tls-cert", Some(&self.cert)),
            ("tls-key", Some(&self.key)),
        ]
    }

    /// The lines of a CRIU config file (libcriu has no setter for them).
    pub(crate) fn criu_config_lines(&self) -> Vec<String> {
        self.criu_options()
            .into_iter()
            .map(|(name, value)| match value {
                Some(v) => format!("{name} {}", v.display()),
                None => name.to_string(),
            })
            .collect()
    }

    /// The arguments of a `criu` command line.
    pub(crate) fn criu_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        for (name, value) in self.criu_options() {
            args.push(format!("--{name}").into());
            if let Some(v) = value {
                args.push(v.as_os_str().to_owned());
            }
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_sees_every_file_and_no_name_check() {
        let f = TlsFiles::new("/ca.pem", "/c.pem", "/k.pem");
        assert_eq!(
            f.criu_config_lines(),
            [
                "tls",
                "tls-no-cn-verify",
                "tls-cacert /ca.pem",
                "tls-cert /c.pem",
                "tls-key /k.pem"
            ]
        );
        let args: Vec<String> = f
            .criu_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--tls",
                "--tls-no-cn-verify",
                "--tls-cacert",
                "/ca.pem",
                "--tls-cert",
                "/c.pem",
                "--tls-key",
                "/k.pem"
            ]
        );
    }

    #[test]
    fn criu_tls_reaches_the_config_file_only_with_a_criu_connection() {
        let f = TlsFiles::new("/ca.pem", "/c.pem", "/k.pem");
        let mut o = crate::options::Options::new();
        o.criu_tls(&f);
        assert!(
            o.cli_only_lines().is_empty(),
            "a local dump opens no TCP connection"
        );
        o.page_server("10.0.0.2:7000".parse().unwrap());
        let lines = o.cli_only_lines();
        assert!(lines.iter().any(|l| l == "tls-cacert /ca.pem"), "{lines:?}");
        assert!(o.validate_cli_only().is_ok());
    }

    #[test]
    fn a_path_criu_cannot_read_from_its_config_file_is_refused() {
        let f = TlsFiles::new("/my certs/ca.pem", "/c.pem", "/k.pem");
        let mut o = crate::options::Options::new();
        o.criu_tls(&f).page_server("10.0.0.2:7000".parse().unwrap());
        assert!(o.validate_cli_only().is_err());
    }

    #[test]
    fn relative_paths_become_absolute() {
        let f = TlsFiles::new("ca.pem", "c.pem", "k.pem");
        assert!(f.ca().is_absolute() && f.cert().is_absolute() && f.key().is_absolute());
    }
}
