//! The migration stream over rustls: configuration from PEM files, a
//! handshake bounded by a deadline, and a confirmation from the accepting
//! side, so that both sides know the other was authenticated before either
//! sends a byte of the migration.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, ConnectionCommon, DigitallySignedStruct,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme, StreamOwned,
};

use crate::credentials::TlsFiles;
use crate::error::{Error, Result, TlsKind};
use crate::transfer::Transport;

use super::socket::Socket;

/// The byte the accepting side sends once it has verified the connecting
/// side's certificate. TLS 1.3 lets a client finish its handshake before
/// the server has judged the client's certificate; without this byte a
/// refused source would only learn so at its first read, after its dump.
const ACCEPTED: u8 = 0xA5;

/// How much plaintext one write encrypts before it is sent (64 records of
/// 16 KiB: as many as rustls hands the socket in one `writev`).
const SEND_BATCH: usize = 1 << 20;

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
        let conn = ClientConnection::new(self.client.clone(), name)
            .map_err(|e| tls_error("starting a TLS session", e))?;
        let mut s = StreamOwned::new(conn, Socket::new(tcp));
        handshake(&mut s.conn, &mut s.sock, deadline).map_err(|e| e.explain(self))?;
        self.check_peer_name(s.conn.peer_certificates())?;
        await_acceptance(&mut s, deadline).map_err(|e| e.explain(self))?;
        TlsStream::ready(Conn::Client(s), self)
    }

    /// The destination's side: authenticates the source on `tcp` (accepted
    /// from a listener) and confirms it. A refused peer gets an error here,
    /// before anything of the migration was read.
    pub fn accept(&self, tcp: TcpStream) -> Result<TlsStream> {
        let deadline = Instant::now() + self.handshake_timeout;
        let conn = ServerConnection::new(self.server.clone())
            .map_err(|e| tls_error("starting a TLS session", e))?;
        let mut s = StreamOwned::new(conn, Socket::new(tcp));
        handshake(&mut s.conn, &mut s.sock, deadline).map_err(|e| e.explain(self))?;
        // Before the confirmation: a refused source learns it at once.
        self.check_peer_name(s.conn.peer_certificates())?;
        s.conn
            .writer()
            .write_all(&[ACCEPTED])
            .and_then(|()| flush_tls(&mut s.conn, &mut s.sock))
            .map_err(|e| HandshakeError::Io(e).explain(self))?;
        TlsStream::ready(Conn::Server(s), self)
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

/// Drives `conn`'s handshake on `tcp` until it completes, or `deadline`
/// passes, whatever the peer sends (or does not).
fn handshake<D>(
    conn: &mut impl DerefMut<Target = ConnectionCommon<D>>,
    tcp: &mut Socket,
    deadline: Instant,
) -> std::result::Result<(), HandshakeError> {
    while conn.is_handshaking() {
        flush_tls(conn, tcp).map_err(HandshakeError::Io)?;
        if conn.is_handshaking() && conn.wants_read() {
            read_some(conn, tcp, deadline)?;
        }
    }
    flush_tls(conn, tcp).map_err(HandshakeError::Io)
}

/// Reads what the peer sent, with the time left, and processes it. On a
/// refusal rustls has queued an alert for the peer: send it, best effort.
fn read_some<D>(
    conn: &mut impl DerefMut<Target = ConnectionCommon<D>>,
    tcp: &mut Socket,
    deadline: Instant,
) -> std::result::Result<(), HandshakeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HandshakeError::TimedOut);
    }
    tcp.tcp()
        .set_read_timeout(Some(left))
        .map_err(HandshakeError::Io)?;
    match conn.read_tls(tcp) {
        Ok(0) => return Err(HandshakeError::Closed),
        Ok(_) => {}
        Err(e) => return Err(HandshakeError::Io(e)),
    }
    if let Err(e) = conn.process_new_packets() {
        let _ = flush_tls(conn, tcp);
        return Err(HandshakeError::Tls(e));
    }
    Ok(())
}

/// Writes every TLS record rustls has ready.
fn flush_tls<D>(
    conn: &mut impl DerefMut<Target = ConnectionCommon<D>>,
    tcp: &mut Socket,
) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    tcp.flush()
}

/// The source waits for the destination's confirmation byte: the proof
/// that its certificate was accepted.
fn await_acceptance(
    s: &mut StreamOwned<ClientConnection, Socket>,
    deadline: Instant,
) -> std::result::Result<(), HandshakeError> {
    loop {
        let mut byte = [0u8; 1];
        match s.conn.reader().read(&mut byte) {
            Ok(1) if byte[0] == ACCEPTED => return Ok(()),
            Ok(_) => return Err(HandshakeError::Closed),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(HandshakeError::Io(e)),
        }
        read_some(&mut s.conn, &mut s.sock, deadline)?;
    }
}

enum Conn {
    Client(StreamOwned<ClientConnection, Socket>),
    Server(StreamOwned<ServerConnection, Socket>),
}

/// An authenticated, encrypted migration stream over TCP: a
/// [`Transport`] for [`crate::migrate`], which also tells the migration to
/// secure CRIU's own connections with the same files.
pub struct TlsStream {
    conn: Conn,
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
    /// After the handshake: the handshake's timeouts are lifted (the
    /// migration sets its own through [`Transport::prepare`]).
    fn ready(mut conn: Conn, config: &TlsConfig) -> Result<TlsStream> {
        // rustls encrypts at most 64 KiB of a write before sending it (its
        // default limit), one `writev` per 64 KiB: a migration's 1 MiB
        // writes go out in one call each with this limit.
        match &mut conn {
            Conn::Client(s) => s.conn.set_buffer_limit(Some(SEND_BATCH)),
            Conn::Server(s) => s.conn.set_buffer_limit(Some(SEND_BATCH)),
        }
        let s = TlsStream {
            conn,
            config: config.clone(),
        };
        s.tcp()
            .set_read_timeout(None)
            .map_err(|e| Error::io("clearing the handshake's timeout", e))?;
        Ok(s)
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match &self.conn {
            Conn::Client(s) => s.get_ref().tcp(),
            Conn::Server(s) => s.get_ref().tcp(),
        }
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        match &mut self.conn {
            Conn::Client(s) => s.get_mut().tcp_mut(),
            Conn::Server(s) => s.get_mut().tcp_mut(),
        }
    }

    /// The TLS session and its socket, to relay CRIU's connection.
    pub(super) fn into_parts(self) -> (rustls::Connection, Socket) {
        match self.conn {
            Conn::Client(s) => {
                let (c, sock) = s.into_parts();
                (c.into(), sock)
            }
            Conn::Server(s) => {
                let (c, sock) = s.into_parts();
                (c.into(), sock)
            }
        }
    }

    /// Ends the TLS session cleanly (a `close_notify`) and keeps the TCP
    /// connection open until the peer has hung up too, or `timeout`.
    pub fn close(mut self, timeout: Duration) {
        match &mut self.conn {
            Conn::Client(s) => s.conn.send_close_notify(),
            Conn::Server(s) => s.conn.send_close_notify(),
        }
        let _ = self.flush();
        let tcp = self.tcp_mut();
        let _ = tcp.set_read_timeout(Some(timeout));
        let mut sink = [0u8; 4096];
        while matches!(tcp.read(&mut sink), Ok(n) if n > 0) {}
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.conn {
            Conn::Client(s) => s.read(buf),
            Conn::Server(s) => s.read(buf),
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.conn {
            Conn::Client(s) => s.write(buf),
            Conn::Server(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.conn {
            Conn::Client(s) => s.flush(),
            Conn::Server(s) => s.flush(),
        }
    }
}

impl Transport for TlsStream {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.tcp_mut().prepare(timeout)
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
