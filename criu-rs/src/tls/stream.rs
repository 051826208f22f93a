//! The migration stream over rustls: configuration from PEM files, a
//! handshake bounded by a deadline, and a confirmation from the accepting
//! side, so that both sides know the other was authenticated before either
//! sends a byte of the migration.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::UnbufferedClientConnection;
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::UnbufferedServerConnection;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::credentials::TlsFiles;
use crate::error::{Error, Result, TlsKind};
use crate::transfer::Transport;

use super::session::{HandshakeStep, Session};

/// The byte the accepting side sends once it has verified the connecting
/// side's certificate. TLS 1.3 lets a client finish its handshake before
/// the server has judged the client's certificate; without this byte a
/// refused source would only learn so at its first read, after its dump.
const ACCEPTED: u8 = 0xA5;

/// How much plaintext one write encrypts before it is sent: 16 records
/// of 16 KiB, in one buffer and one `write`. rustls 0.23's unbuffered API
/// seals each record apart and copies it into that buffer; at 1 MiB the
/// buffer left the cache before the socket read it, and the sender's CPU
/// rose by 15-17 % (256 KiB: within 4 % of the buffered API's).
const SEND_BATCH: usize = 256 << 10;

/// What both ends of a migration need to set up its TLS stream, built
/// once from the host's [`TlsFiles`].
#[derive(Clone)]
pub struct TlsConfig {
    files: TlsFiles,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    handshake_timeout: Duration,
    peer_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &self.files)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("peer_name", &self.peer_name)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads and checks the three PEM files. Errors name the file at fault.
    pub fn new(files: TlsFiles) -> Result<TlsConfig> {
        let provider = Arc::new(ring::default_provider());
        let roots = Arc::new(load_roots(files.ca())?);
        let chain = load_chain(files.cert())?;
        let key = load_key(files.key())?;
        let client = client_config(&provider, &roots, chain.clone(), key.clone_key(), &files)?;
        let server = server_config(&provider, roots, chain, key, &files)?;
        Ok(TlsConfig {
            files,
            client: Arc::new(client),
            server: Arc::new(server),
            handshake_timeout: Duration::from_secs(10),
            peer_name: None,
        })
    }

    /// Requires the peer's certificate to name `host` (a DNS name or an IP
    /// address in its subject alternative names), besides chaining to the
    /// CA: either end can insist on its expected peer, so that another
    /// holder of a certificate from the same CA is refused. Without it,
    /// any holder is accepted (see the module docs).
    ///
    /// ```no_run
    /// use criu::tls::{TlsConfig, TlsFiles};
    /// let files = TlsFiles::new("ca.pem", "host-a.pem", "host-a-key.pem");
    /// let config = TlsConfig::new(files)?.peer_name("host-b")?;
    /// # Ok::<(), criu::Error>(())
    /// ```
    pub fn peer_name(mut self, host: &str) -> Result<TlsConfig> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| Error::Tls {
            kind: TlsKind::Config,
            message: format!("{host:?} is not a host name or an IP address"),
            source: Some(io::Error::other(e)),
        })?;
        self.peer_name = Some(name);
        Ok(self)
    }

    /// Refuses a peer whose certificate does not name the expected host,
    /// if one was set.
    fn check_peer_name(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<()> {
        let Some(want) = &self.peer_name else {
            return Ok(());
        };
        let refused = |why: &str, source: Option<io::Error>| Error::Tls {
            kind: TlsKind::WrongName,
            message: format!(
                "the peer's certificate {why}, not {} (TlsConfig::peer_name): refused",
                want.to_str()
            ),
            source,
        };
        let cert = certs
            .and_then(|c| c.first())
            .ok_or_else(|| refused("is missing", None))?;
        let parsed = ParsedCertificate::try_from(cert)
            .map_err(|e| refused("cannot be read", Some(io::Error::other(e))))?;
        rustls::client::verify_server_name(&parsed, want)
            .map_err(|e| refused("names another host", Some(io::Error::other(e))))
    }

    /// How long a peer may take over the whole handshake and the
    /// confirmation (default 10 s). A peer that is silent or trickles
    /// bytes is dropped then: the limits apply before authentication.
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// The handshake timeout.
    pub(crate) fn handshake_limit(&self) -> Duration {
        self.handshake_timeout
    }

    /// The PEM files this configuration was read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The source's side: authenticates the destination on `tcp` and is
    /// authenticated by it. Returns once the destination has confirmed.
    pub fn connect(&self, tcp: TcpStream) -> Result<TlsStream> {
        let deadline = Instant::now() + self.handshake_timeout;
        // Any name will do: the verifier checks the chain, not the name.
        let name = ServerName::try_from("criu-rs-migration").expect("a valid DNS name");
        let conn = UnbufferedClientConnection::new(self.client.clone(), name)
            .map_err(|e| tls_error("starting a TLS session", e))?;
        let mut s = TlsStream::new(Session::client(conn), tcp, self);
        handshake(&mut s, deadline).map_err(|e| e.explain(self))?;
        self.check_peer_name(s.session.peer_certificates())?;
        await_acceptance(&mut s, deadline).map_err(|e| e.explain(self))?;
        s.ready()
    }

    /// The destination's side: authenticates the source on `tcp` (accepted
    /// from a listener) and confirms it. A refused peer gets an error here,
    /// before anything of the migration was read.
    pub fn accept(&self, tcp: TcpStream) -> Result<TlsStream> {
        let deadline = Instant::now() + self.handshake_timeout;
        let conn = UnbufferedServerConnection::new(self.server.clone())
            .map_err(|e| tls_error("starting a TLS session", e))?;
        let mut s = TlsStream::new(Session::server(conn), tcp, self);
        handshake(&mut s, deadline).map_err(|e| e.explain(self))?;
        // Before the confirmation: a refused source learns it at once.
        self.check_peer_name(s.session.peer_certificates())?;
        s.write_all(&[ACCEPTED])
            .map_err(|e| HandshakeError::Io(e).explain(self))?;
        s.ready()
    }
}

fn tls_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Tls {
        kind: TlsKind::Other,
        message: what.to_string(),
        source: Some(io::Error::other(e)),
    }
}

fn pem_error(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::Tls {
        kind: TlsKind::Config,
        message: format!(
            "cannot use {what} {}: {e} (expected PEM, as `openssl req`/`openssl x509` write it)",
            path.display()
        ),
        source: None,
    }
}

fn load_chain(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error("the certificate", path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_error("the certificate", path, e))?;
    if certs.is_empty() {
        return Err(pem_error("the certificate", path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn load_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error("the private key", path, e))
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| pem_error("the CA certificate", path, e))?;
    }
    Ok(roots)
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    files: &TlsFiles,
) -> Result<ClientConfig> {
    let verifier = Arc::new(CaOnly {
        roots: roots.clone(),
        provider: provider.clone(),
    });
    let mut c = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("configuring TLS 1.3", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| key_mismatch(files, e))?;
    c.resumption = Resumption::disabled();
    Ok(c)
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    files: &TlsFiles,
) -> Result<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| tls_error("building the client-certificate verifier", e))?;
    let mut c = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("configuring TLS 1.3", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| key_mismatch(files, e))?;
    c.send_tls13_tickets = 0;
    Ok(c)
}

fn key_mismatch(files: &TlsFiles, e: rustls::Error) -> Error {
    Error::Tls {
        kind: TlsKind::Config,
        message: format!(
            "the key {} does not go with the certificate {} (or is of a kind rustls cannot use)",
            files.key().display(),
            files.cert().display()
        ),
        source: Some(io::Error::other(e)),
    }
}

/// Checks the destination's certificate against the CA only, not against
/// a name (see the module docs for why).
#[derive(Debug)]
struct CaOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a handshake did not complete.
#[derive(Debug)]
enum HandshakeError {
    /// rustls refused what the peer sent (certificate, protocol).
    Tls(rustls::Error),
    /// The connection failed or timed out.
    Io(io::Error),
    /// The deadline passed.
    TimedOut,
    /// The peer hung up.
    Closed,
}

impl HandshakeError {
    /// The error a caller can act on.
    fn explain(self, cfg: &TlsConfig) -> Error {
        let ca = cfg.files.ca().display();
        let (kind, message, source) = match self {
            HandshakeError::Tls(e) => {
                let (kind, message) = describe_tls(&e, &ca.to_string());
                (kind, message, Some(io::Error::other(e)))
            }
            HandshakeError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                (TlsKind::TimedOut, timed_out(cfg), Some(e))
            }
            HandshakeError::Io(e) => (
                TlsKind::Connection,
                "the connection failed during the TLS handshake".into(),
                Some(e),
            ),
            HandshakeError::TimedOut => (TlsKind::TimedOut, timed_out(cfg), None),
            HandshakeError::Closed => (
                TlsKind::HungUp,
                "the peer hung up during the TLS handshake (it may have refused our certificate, \
                 or does not speak TLS)"
                    .into(),
                None,
            ),
        };
        Error::Tls {
            kind,
            message,
            source,
        }
    }
}

fn timed_out(cfg: &TlsConfig) -> String {
    format!(
        "the peer did not complete the TLS handshake within {:?}: refused (a silent or plain TCP \
         peer, or one that is too slow; see TlsConfig::handshake_timeout)",
        cfg.handshake_timeout
    )
}

/// The kind of what rustls refused, and words for it.
fn describe_tls(e: &rustls::Error, ca: &str) -> (TlsKind, String) {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            (
                TlsKind::Untrusted,
                format!("the peer's certificate is not signed by our CA ({ca}): refused"),
            )
        }
        E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => (
            TlsKind::Expired,
            "the peer's certificate has expired: refused".into(),
        ),
        E::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => (
            TlsKind::Expired,
            "the peer's certificate is not valid yet (check both clocks): refused".into(),
        ),
        E::InvalidCertificate(other) => (
            TlsKind::Untrusted,
            format!("the peer's certificate is not valid ({other:?}): refused"),
        ),
        E::NoCertificatesPresented => (
            TlsKind::Untrusted,
            "the peer presented no certificate: refused".into(),
        ),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => (
            TlsKind::NotTls,
            "the peer does not speak TLS 1.3 (a plain TCP client, or another protocol): refused"
                .into(),
        ),
        E::AlertReceived(alert) => (
            TlsKind::RefusedByPeer,
            format!(
                "the peer refused us ({alert:?}): our certificate is probably not signed by the \
                 CA it trusts, or has expired; check --tls-cert against the peer's --tls-ca"
            ),
        ),
        other => (TlsKind::Other, format!("the TLS handshake failed: {other}")),
    }
}

/// Drives the handshake of `s` until it completes, or `deadline` passes,
/// whatever the peer sends (or does not).
fn handshake(s: &mut TlsStream, deadline: Instant) -> std::result::Result<(), HandshakeError> {
    loop {
        match s.session.handshake_step() {
            Ok(HandshakeStep::Done) => return Ok(()),
            Ok(HandshakeStep::Again) => {}
            Ok(HandshakeStep::Send) => s.session.send(&mut s.tcp).map_err(HandshakeError::Io)?,
            Ok(HandshakeStep::Read) => read_some(s, deadline)?,
            Ok(HandshakeStep::Closed) => return Err(HandshakeError::Closed),
            Err(e) => return Err(refuse(s, e)),
        }
    }
}

/// rustls refused what the peer sent and queued an alert that says why:
/// send it, best effort.
fn refuse(s: &mut TlsStream, e: rustls::Error) -> HandshakeError {
    s.session.queue_alert();
    let _ = s.session.send(&mut s.tcp);
    HandshakeError::Tls(e)
}

/// Makes the socket's next reads give up at `deadline`, or says it has
/// passed.
fn read_within(s: &mut TlsStream, deadline: Instant) -> std::result::Result<(), HandshakeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HandshakeError::TimedOut);
    }
    s.tcp
        .set_read_timeout(Some(left))
        .map_err(HandshakeError::Io)
}

/// Reads what the peer sent, with the time left.
fn read_some(s: &mut TlsStream, deadline: Instant) -> std::result::Result<(), HandshakeError> {
    read_within(s, deadline)?;
    match s.session.fill(&mut s.tcp) {
        Ok(0) => Err(HandshakeError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(HandshakeError::Io(e)),
    }
}

/// The source waits for the destination's confirmation byte: the proof
/// that its certificate was accepted.
fn await_acceptance(
    s: &mut TlsStream,
    deadline: Instant,
) -> std::result::Result<(), HandshakeError> {
    read_within(s, deadline)?;
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(1) if byte[0] == ACCEPTED => Ok(()),
        Ok(_) => Err(HandshakeError::Closed),
        Err(e) => Err(refused_by_peer(e)),
    }
}

/// What rustls refused while reading (the peer's alert, say), or the
/// connection's own failure.
fn refused_by_peer(e: io::Error) -> HandshakeError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match tls {
        Some(tls) => HandshakeError::Tls(tls),
        None if e.kind() == io::ErrorKind::UnexpectedEof => HandshakeError::Closed,
        None => HandshakeError::Io(e),
    }
}

/// An authenticated, encrypted migration stream over TCP: a
/// [`Transport`] for [`crate::migrate`], which also tells the migration to
/// secure CRIU's own connections with the same files.
pub struct TlsStream {
    session: Session,
    tcp: TcpStream,
    /// What the stream was set up with: its side channels (CRIU's own
    /// connections) are set up the same way.
    config: TlsConfig,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.tcp().peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    fn new(session: Session, tcp: TcpStream, config: &TlsConfig) -> TlsStream {
        TlsStream {
            session,
            tcp,
            config: config.clone(),
        }
    }

    /// After the handshake: the handshake's timeouts are lifted (the
    /// migration sets its own through [`Transport::prepare`]).
    fn ready(self) -> Result<TlsStream> {
        self.tcp
            .set_read_timeout(None)
            .map_err(|e| Error::io("clearing the handshake's timeout", e))?;
        Ok(self)
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The TLS session and its socket, to relay CRIU's connection.
    pub(super) fn into_parts(self) -> (Session, TcpStream) {
        (self.session, self.tcp)
    }

    /// Ends the TLS session cleanly (a `close_notify`) and keeps the TCP
    /// connection open until the peer has hung up too, or `timeout`.
    pub fn close(mut self, timeout: Duration) {
        if self.session.close_notify().is_ok() {
            let _ = self.session.send(&mut self.tcp);
        }
        let _ = self.tcp.set_read_timeout(Some(timeout));
        let mut sink = [0u8; 4096];
        while matches!(self.tcp.read(&mut sink), Ok(n) if n > 0) {}
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.session.read_from(&mut self.tcp, buf)
    }
}

impl Write for TlsStream {
    /// Encrypts up to `SEND_BATCH` bytes of `buf` and sends them.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(SEND_BATCH);
        self.session.encrypt(&buf[..n])?;
        self.session.send(&mut self.tcp)?;
        Ok(n)
    }

    /// Every write is sent before it returns.
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

impl Transport for TlsStream {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.tcp.prepare(timeout)
    }

    fn ip_addresses(&self) -> io::Result<Option<(IpAddr, IpAddr)>> {
        self.tcp().ip_addresses()
    }

    fn criu_tls(&self) -> Option<TlsFiles> {
        Some(self.config.files().clone())
    }

    /// One TLS connection of the crate's per CRIU connection, with this
    /// stream's configuration, between its addresses (see
    /// `crate::transfer::SideChannels`).
    fn side_channels(&self) -> Option<Box<dyn crate::transfer::SideChannels>> {
        let ends = self.tcp().ip_addresses().ok().flatten();
        Some(Box::new(super::relay::TlsChannels::new(
            self.config.clone(),
            ends,
        )))
    }

    fn interrupter(&self) -> Option<crate::transfer::Interrupter> {
        self.tcp().interrupter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Shutdown, TcpListener};

    /// Both ends of a TLS stream on the loopback, `via` the bytes between
    /// them (given the client's TCP connection, it returns the one the
    /// server should accept over).
    fn pair_via(
        via: impl FnOnce(TcpStream) -> TcpStream + Send + 'static,
    ) -> (TlsStream, TlsStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig::new(super::super::relay::tests::pki(dir.path())).unwrap();
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let client = {
            let config = config.clone();
            std::thread::spawn(move || {
                let tcp = via(TcpStream::connect(addr).unwrap());
                config.connect(tcp)
            })
        };
        let (tcp, _) = l.accept().unwrap();
        let server = config.accept(tcp).unwrap();
        (client.join().unwrap().unwrap(), server, dir)
    }

    fn pair() -> (TlsStream, TlsStream, tempfile::TempDir) {
        pair_via(|tcp| tcp)
    }

    /// Bytes that show where they were cut or reordered.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect()
    }

    /// Forwards what `from` sends to `to` in pieces of at most `piece`
    /// bytes, each its own write, so that records arrive cut anywhere.
    fn trickle(mut from: TcpStream, mut to: TcpStream, piece: usize) {
        let mut buf = vec![0u8; piece];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }

    #[test]
    fn a_stream_carries_large_writes_into_small_reads_and_ends_cleanly() {
        let (mut client, mut server, _dir) = pair();
        let sent = pattern((3 << 20) + 7);
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                client.write_all(&sent).unwrap();
                client.flush().unwrap();
                let mut reply = [0u8; 5];
                client.read_exact(&mut reply).unwrap();
                assert_eq!(&reply, b"thank");
                client.close(Duration::from_secs(5));
            })
        };
        // Reads smaller than a record: each record's rest waits its turn.
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        while got.len() < sent.len() {
            let n = server.read(&mut buf).unwrap();
            assert!(n > 0, "the stream ended early");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == sent, "the bytes came out as they went in");
        server.write_all(b"thank").unwrap();
        assert_eq!(
            server.read(&mut buf).unwrap(),
            0,
            "the close_notify ends it"
        );
        drop(server);
        writer.join().unwrap();
    }

    #[test]
    fn records_cut_anywhere_on_the_wire_are_put_back_together() {
        let (mut client, mut server, _dir) = pair_via(|tcp| {
            // A forwarder between the two, which cuts every record.
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let near = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (far, _) = l.accept().unwrap();
            let (tcp2, far2) = (tcp.try_clone().unwrap(), far.try_clone().unwrap());
            std::thread::spawn(move || trickle(far, tcp, 997));
            std::thread::spawn(move || trickle(tcp2, far2, 997));
            near
        });
        let sent = pattern(2 << 20);
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                client.write_all(&sent).unwrap();
                client.close(Duration::from_secs(5));
            })
        };
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert!(got == sent, "the bytes came out as they went in");
        writer.join().unwrap();
    }

    #[test]
    fn a_connection_cut_without_close_notify_is_a_truncation() {
        let (mut client, mut server, _dir) = pair();
        client.write_all(b"some of it").unwrap();
        client.tcp().shutdown(Shutdown::Both).unwrap();
        let mut got = [0u8; 10];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"some of it");
        let e = server.read(&mut got).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("close_notify"), "{e}");
    }

    #[test]
    fn a_forged_record_is_refused_and_stays_refused() {
        let (client, mut server, _dir) = pair();
        // A record of application data the session did not seal.
        let mut forged = vec![23u8, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x55; 40]);
        let (_, mut tcp) = client.into_parts();
        tcp.write_all(&forged).unwrap();
        let mut buf = [0u8; 16];
        let e = server.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let again = server.read(&mut buf).unwrap_err();
        assert_eq!(again.to_string(), e.to_string());
    }
}
