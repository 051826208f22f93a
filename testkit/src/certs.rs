//! Throwaway certificates for the TLS demo and tests, made at run time
//! with rcgen (never committed): a CA, hosts signed by it, and the bad
//! cases (a host from another CA, an expired host).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use criu::tls::TlsFiles;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::container::BoxError;

/// A certificate authority whose certificate and key live in `dir`.
pub struct Ca {
    dir: PathBuf,
    name: String,
    cert: Certificate,
    key: KeyPair,
}

/// How long a host's certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From last year to next year.
    Current,
    /// Ended years ago.
    Expired,
}

fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

fn write_private(path: &Path, text: &str) -> Result<(), BoxError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl Ca {
    /// A new CA named `name`; its certificate is written to
    /// `dir/NAME-ca.pem` (its key stays in memory).
    pub fn new(dir: &Path, name: &str) -> Result<Ca, BoxError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} migration CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let year = this_year();
        params.not_before = rcgen::date_time_ymd(year - 20, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 2, 12, 31);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca = Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert,
            key,
        };
        write_private(&ca.ca_path(), &ca.cert.pem())?;
        Ok(ca)
    }

    /// The CA certificate's file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A host certificate and key signed by this CA, for both ends of a
    /// connection (server and client use), written next to the CA's.
    /// Returns the host's files with *this* CA as its trust anchor.
    pub fn host(&self, host: &str, validity: Validity) -> Result<TlsFiles, BoxError> {
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let year = this_year();
        let (from, to) = match validity {
            Validity::Current => (year - 1, year + 1),
            Validity::Expired => (year - 10, year - 5),
        };
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 12, 31);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let stem = format!("{}-{host}", self.name);
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}-key.pem"));
        write_private(&cert_path, &cert.pem())?;
        write_private(&key_path, &key.serialize_pem())?;
        Ok(TlsFiles::new(self.ca_path(), cert_path, key_path))
    }
}

/// `files` with another CA as trust anchor: a host that holds a
/// certificate from one CA but trusts another.
pub fn trusting(files: &TlsFiles, ca: &Ca) -> TlsFiles {
    TlsFiles::new(ca.ca_path(), files.cert(), files.key())
}

/// The usual set for a migration between host a and host b: one CA, and
/// a certificate for each host.
pub struct Pki {
    /// Where the files are (removed on drop).
    pub dir: tempfile::TempDir,
    /// The CA.
    pub ca: Ca,
    /// Host a's files.
    pub a: TlsFiles,
    /// Host b's files.
    pub b: TlsFiles,
}

impl Pki {
    /// A fresh CA and two hosts, in a private temporary directory.
    pub fn new() -> Result<Pki, BoxError> {
        let dir = tempfile::Builder::new().prefix("criu-rs-pki-").tempdir()?;
        let ca = Ca::new(dir.path(), "demo")?;
        let a = ca.host("host-a", Validity::Current)?;
        let b = ca.host("host-b", Validity::Current)?;
        Ok(Pki { dir, ca, a, b })
    }
}
