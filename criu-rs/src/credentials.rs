//! The PEM files a host presents in a mutually authenticated migration,
//! and how CRIU is told of them. Low in the layers: options and daemons
//! pass them to CRIU; `tls` (the crate's own stream) reads them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

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
