//! CRIU's own connections of a migration carried through authenticated
//! TLS connections of the crate's: the side channels of a [`TlsStream`]
//! (see `crate::transfer::SideChannels`). What CRIU writes into its end
//! is encrypted onto the TLS connection, and what arrives there is
//! decrypted into it.
//!
//! Why not CRIU's own TLS: under GnuTLS CRIU can no longer splice pages
//! from the dumped process to the socket and copies them through user
//! space in small pieces; the page-server migration took 2.3x (256 MiB)
//! to 3.1x (1 GiB) the downtime of plain TCP so. CRIU talks plain TCP to
//! the crate on its own host instead (the source's dump on the loopback,
//! the destination's daemons over a socketpair), and the relays talk
//! rustls between the hosts, with the same certificates and checks as the
//! migration stream. The destination listens for each connection on its
//! end of the stream's address, and takes only the peer that presents a
//! one-time token it sent over the stream.
//!
//! Two threads per relay, one per direction. The rustls session is shared
//! under a lock held only to encrypt or decrypt, never across socket I/O;
//! only the outbound thread writes to the TLS socket. The inbound thread
//! never has anything to send back: the sessions have no tickets, and key
//! updates come after hundreds of GB.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::session::{Session, Wire};
use super::{TlsConfig, TlsStream};
use crate::transfer::{accept_polling, Carrying, CriuConnection, Offer, Service, SideChannels};

/// How much is read from either side at once.
const CHUNK: usize = 256 << 10;

/// A connected plain stream the relay can read and write from two
/// threads.
pub(crate) trait Plain: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> io::Result<Self>;
    fn end(&self, how: Shutdown);
}

impl Plain for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn end(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

/// CRIU's end of a connection, whatever kind of stream socket it is.
struct CriuSocket(File);

impl Read for CriuSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for CriuSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Plain for CriuSocket {
    fn duplicate(&self) -> io::Result<Self> {
        self.0.try_clone().map(CriuSocket)
    }
    fn end(&self, how: Shutdown) {
        crate::transfer::shut(&self.0, how);
    }
}

/// How long the peer's end of a relay may stay silent, or leave what the
/// relay sends unread, before the relay gives up (both directions end,
/// and CRIU's connection with them).
pub(crate) const IDLE: Duration = Duration::from_secs(600);

type Shared = Arc<Mutex<Session>>;

fn lock(s: &Shared) -> MutexGuard<'_, Session> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// When the relay last moved bytes, either way: a direction that waits
/// on a silent peer is not idle while the other one carries (the source
/// hears nothing from the destination while the dump streams pages).
#[derive(Clone)]
struct Activity {
    since: Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            since: Instant::now(),
            last_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether nothing moved for `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last) >= idle
    }
}

/// Starts carrying `plain` (CRIU's socket) through `tls` in both
/// directions; the relay gives up when the TLS connection moved nothing
/// either way for `idle` (its reads and writes time out then).
pub(crate) fn carry(plain: OwnedFd, tls: TlsStream, idle: Duration) -> io::Result<Carrying> {
    carry_plain(CriuSocket(File::from(plain)), tls, idle)
}

fn carry_plain<P: Plain>(plain: P, tls: TlsStream, idle: Duration) -> io::Result<Carrying> {
    let (session, tcp) = tls.into_parts();
    tcp.set_read_timeout(Some(idle))?;
    tcp.set_write_timeout(Some(idle))?;
    // CRIU's protocols wait for small answers (the page server's to each
    // image opened, the lazy-pages daemon's requests): each write goes
    // at once, not after the peer's delayed ACK (Nagle's algorithm).
    tcp.set_nodelay(true)?;
    let session: Shared = Arc::new(Mutex::new(session));
    let (plain_in, tcp_out) = (plain.duplicate()?, tcp.try_clone()?);
    let hang_up = {
        let (plain, tcp) = (plain.duplicate()?, tcp.try_clone()?);
        move || {
            plain.end(Shutdown::Both);
            tcp.end(Shutdown::Both);
        }
    };
    let activity = Activity::new();
    let out = {
        let (session, activity) = (session.clone(), activity.clone());
        std::thread::spawn(move || outbound(plain_in, tcp_out, &session, &activity))
    };
    let inb = std::thread::spawn(move || inbound(tcp, plain, &session, (&activity, idle)));
    Ok(Carrying::new(vec![out, inb], hang_up))
}

/// CRIU's bytes, encrypted onto the TLS connection, then `close_notify`.
fn outbound(mut plain: impl Plain, mut tcp: TcpStream, session: &Shared, activity: &Activity) {
    let mut buf = vec![0u8; CHUNK];
    let mut wire = Wire::default();
    loop {
        let n = match plain.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if seal(session, &buf[..n], &mut wire).is_err() || tcp.write_all(wire.filled()).is_err() {
            // The peer is gone (or read nothing for the idle timeout):
            // so is CRIU's connection.
            plain.end(Shutdown::Both);
            tcp.end(Shutdown::Both);
            return;
        }
        activity.touch();
    }
    if close(session, &mut wire).is_ok() {
        let _ = tcp.write_all(wire.filled());
    }
    tcp.end(Shutdown::Write);
}

/// Encrypts `clear` into `wire` (replacing its contents), after any
/// records the session had for the peer.
fn seal(session: &Shared, clear: &[u8], wire: &mut Wire) -> io::Result<()> {
    let mut s = lock(session);
    s.encrypt(clear)?;
    s.swap_outgoing(wire);
    Ok(())
}

/// A `close_notify` into `wire` (replacing its contents).
fn close(session: &Shared, wire: &mut Wire) -> io::Result<()> {
    let mut s = lock(session);
    s.close_notify()?;
    s.swap_outgoing(wire);
    Ok(())
}

/// The peer's bytes, decrypted into CRIU's connection, until the peer's
/// `close_notify` (or hang-up).
fn inbound(
    mut tcp: TcpStream,
    mut plain: impl Plain,
    session: &Shared,
    (activity, idle): (&Activity, Duration),
) {
    let mut raw = vec![0u8; CHUNK];
    let mut clear = Vec::with_capacity(CHUNK);
    // What the session holds already (after the token) goes first.
    let early = {
        let mut s = lock(session);
        s.collect(&mut clear)
    };
    let mut closed = match early {
        Ok(closed) if plain.write_all(&clear).is_ok() => closed,
        _ => {
            plain.end(Shutdown::Both);
            tcp.end(Shutdown::Both);
            return;
        }
    };
    while !closed {
        let data = match tcp.read(&mut raw) {
            Ok(0) => break,
            Ok(n) => {
                activity.touch();
                &raw[..n]
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && !activity.idle_for(idle) =>
            {
                continue;
            }
            Err(_) => {
                // Silent past the idle timeout, or reset: CRIU's side
                // must not wait on for it.
                plain.end(Shutdown::Both);
                tcp.end(Shutdown::Both);
                return;
            }
        };
        clear.clear();
        let opened = lock(session).open(data, &mut clear);
        closed = match opened {
            Ok(closed) => closed,
            Err(_) => {
                // Forged or broken records: nothing more reaches CRIU.
                plain.end(Shutdown::Both);
                tcp.end(Shutdown::Both);
                return;
            }
        };
        if plain.write_all(&clear).is_err() {
            tcp.end(Shutdown::Both);
            return;
        }
    }
    plain.end(Shutdown::Write);
}

/// The bytes of a relay's one-time token.
const TOKEN_BYTES: usize = 32;

/// A fresh one-time token for a relay, in hex.
pub(crate) fn new_token() -> crate::Result<String> {
    let mut raw = [0u8; TOKEN_BYTES];
    let mut got = 0;
    while got < raw.len() {
        // SAFETY: writes at most the rest of `raw`, which it points into.
        let n = unsafe { libc::getrandom(raw[got..].as_mut_ptr().cast(), raw.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(crate::Error::io("drawing a relay token", e));
        }
        got += n as usize;
    }
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// The source's side: sends `token` (the one the destination sent over
/// the migration's stream) first on the relay's TLS connection.
pub(crate) fn present_token(tls: &mut TlsStream, token: &str) -> crate::Result<()> {
    let mut line = token.as_bytes().to_vec();
    line.resize(2 * TOKEN_BYTES, b'-');
    tls.write_all(&line[..2 * TOKEN_BYTES])
        .and_then(|()| tls.flush())
        .map_err(|e| crate::Error::io("sending a relay's token", e))
}

/// How long a relay's client has to present its token once
/// authenticated (the source sends it at once).
const TOKEN_WAIT: Duration = Duration::from_secs(2);

/// The destination's relay: the first connection to `listener` within
/// the handshake timeout that authenticates (a certificate of the CA)
/// and then presents `token`, which only the peer of the migration's
/// stream knows. Others are dropped, and the wait goes on. (The token,
/// not the address, binds the relay to the stream's peer: a NAT or a
/// forwarder between the hosts may show another address.)
pub(crate) fn accept_peer(
    listener: &TcpListener,
    config: &TlsConfig,
    token: &str,
    timeout: Duration,
) -> crate::Result<TlsStream> {
    let deadline = Instant::now() + config.handshake_limit().min(timeout);
    loop {
        let tcp = accept_polling(listener, deadline, || true, |_| true).map_err(|e| {
            crate::Error::io(
                "waiting for the source's connection to a relay of CRIU's",
                e,
            )
        })?;
        let Ok(mut tls) = config.accept(tcp) else {
            continue;
        };
        if presents(&mut tls, token, deadline) {
            tls.tcp()
                .set_read_timeout(None)
                .map_err(|e| crate::Error::io("clearing the relay's timeout", e))?;
            return Ok(tls);
        }
    }
}

/// Whether the client of `tls` sends `token` first, before `deadline`.
fn presents(tls: &mut TlsStream, token: &str, deadline: Instant) -> bool {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .min(TOKEN_WAIT);
    if left.is_zero() || tls.tcp().set_read_timeout(Some(left)).is_err() {
        return false;
    }
    let mut got = [0u8; 2 * TOKEN_BYTES];
    if tls.read_exact(&mut got).is_err() {
        return false;
    }
    let want = token.as_bytes();
    // Every byte compared, whatever the first difference.
    want.len() == got.len() && want.iter().zip(got).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// The side channels of a [`TlsStream`]: one TLS connection of the
/// crate's per service, between the stream's two addresses, each bound
/// to the stream's peer by a one-time token sent over the stream.
pub(crate) struct TlsChannels {
    config: TlsConfig,
    /// This end's and the peer's addresses, as the stream has them.
    ends: Option<(IpAddr, IpAddr)>,
}

impl TlsChannels {
    pub(crate) fn new(config: TlsConfig, ends: Option<(IpAddr, IpAddr)>) -> TlsChannels {
        TlsChannels { config, ends }
    }

    fn ends(&self) -> crate::Result<(IpAddr, IpAddr)> {
        self.ends.ok_or_else(|| {
            crate::Error::io(
                "reading the TLS stream's addresses for CRIU's connection",
                io::Error::from(io::ErrorKind::NotConnected),
            )
        })
    }
}

/// The text of a ticket: the relay's port and its token.
fn ticket(port: u16, token: &str) -> Vec<u8> {
    format!("{port} {token}").into_bytes()
}

/// The port and token of a ticket.
fn parse_ticket(ticket: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(ticket).ok()?;
    let (port, token) = text.split_once(' ')?;
    let valid = token.len() == 2 * TOKEN_BYTES && token.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| Some((port.parse().ok()?, token.to_string())))?
}

impl SideChannels for TlsChannels {
    /// Listens on this end's address of the stream; the ticket holds the
    /// port and a fresh token.
    fn offer(&mut self, service: Service) -> crate::Result<Offer> {
        let listen = |e| crate::Error::io(format!("listening for the source's {service} relay"), e);
        let listener = TcpListener::bind((self.ends()?.0, 0)).map_err(listen)?;
        let port = listener.local_addr().map_err(listen)?.port();
        let token = new_token()?;
        let config = self.config.clone();
        Ok(Offer::new(ticket(port, &token), move |timeout| {
            let tls = accept_peer(&listener, &config, &token, timeout)?;
            Ok(CriuConnection::carried(move |plain| {
                carry(plain, tls, IDLE)
            }))
        }))
    }

    /// Connects to the port of the ticket on the stream's peer,
    /// authenticates and presents the token.
    fn open(&mut self, service: Service, ticket: &[u8]) -> crate::Result<CriuConnection> {
        let (port, token) = parse_ticket(ticket).ok_or_else(|| crate::Error::Transfer {
            kind: crate::TransferKind::Protocol,
            message: format!(
                "the destination's ticket for its {service} relay is not a port and a token"
            ),
            source: None,
        })?;
        let dest = SocketAddr::new(self.ends()?.1, port);
        let tcp =
            TcpStream::connect_timeout(&dest, self.config.handshake_limit()).map_err(|e| {
                crate::Error::io(format!("connecting to the {service} relay at {dest}"), e)
            })?;
        let mut tls = self.config.connect(tcp)?;
        present_token(&mut tls, &token)?;
        Ok(CriuConnection::carried(move |plain| {
            carry(plain, tls, IDLE)
        }))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::os::unix::net::UnixStream;

    /// A CA and one host certificate signed by it, both ends' files.
    pub(in crate::tls) fn pki(dir: &std::path::Path) -> crate::credentials::TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let host = CertificateParams::new(vec!["host".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = host.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let files = [
            ("ca.pem", ca_cert.pem()),
            ("host.pem", cert.pem()),
            ("host-key.pem", key.serialize_pem()),
        ];
        for (name, pem) in &files {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        crate::credentials::TlsFiles::new(
            dir.join("ca.pem"),
            dir.join("host.pem"),
            dir.join("host-key.pem"),
        )
    }

    /// A relay carrying one end of a socketpair through a TLS connection
    /// on the loopback, whose other end (the peer's) is returned too,
    /// with the socketpair's other end.
    fn relay(idle: Duration) -> (Carrying, TlsStream, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig::new(pki(dir.path())).unwrap();
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let client = {
            let config = config.clone();
            std::thread::spawn(move || config.connect(TcpStream::connect(addr).unwrap()))
        };
        let (tcp, _) = l.accept().unwrap();
        let ours = config.accept(tcp).unwrap();
        let peer = client.join().unwrap().unwrap();
        let (plain, criu) = UnixStream::pair().unwrap();
        (carry(plain.into(), ours, idle).unwrap(), peer, criu, dir)
    }

    #[test]
    fn a_relay_whose_peer_stays_silent_ends_after_the_idle_timeout() {
        // Before: its threads blocked on the silent peer for ever.
        let (relay, _peer, mut criu, _dir) = relay(Duration::from_millis(300));
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            relay.wait();
            let _ = done.send(());
        });
        assert!(
            ended.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the relay still waits on its silent peer"
        );
        let mut buf = [0u8; 1];
        criu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(criu.read(&mut buf).unwrap(), 0, "CRIU's side was hung up");
    }

    #[test]
    fn a_dropped_relay_hangs_up_both_sides_and_is_joined() {
        // Before: dropping the relay left its threads running, carrying.
        let (relay, mut peer, mut criu, _dir) = relay(IDLE);
        drop(relay);
        let mut buf = [0u8; 1];
        criu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(criu.read(&mut buf).unwrap(), 0, "CRIU's side was hung up");
        peer.tcp()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let got = peer.read(&mut buf);
        assert!(
            matches!(got, Ok(0))
                || got
                    .as_ref()
                    .is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock),
            "the peer's side was hung up: {got:?}"
        );
    }

    #[test]
    fn a_relay_that_carries_one_way_is_not_idle() {
        // The source hears nothing from the destination while the dump
        // streams its pages: that silence must not end the relay.
        let (relay, mut peer, mut criu, _dir) = relay(Duration::from_millis(300));
        let mut buf = [0u8; 4];
        for _ in 0..10 {
            criu.write_all(b"page").unwrap();
            peer.read_exact(&mut buf).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        criu.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let got = criu.read(&mut buf);
        assert!(
            got.as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock),
            "the relay ended while it carried: {got:?}"
        );
        drop(relay);
    }

    #[test]
    fn a_side_channel_opened_with_the_ticket_carries_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig::new(pki(dir.path())).unwrap();
        let lo = std::net::IpAddr::from(Ipv4Addr::LOCALHOST);
        let mut dest = TlsChannels::new(config.clone(), Some((lo, lo)));
        let mut source = TlsChannels::new(config, Some((lo, lo)));
        let offer = dest.offer(Service::LazyPages).unwrap();
        // A ticket with another token: the destination drops it and waits on.
        let (port, token) = parse_ticket(offer.ticket()).unwrap();
        let forged = ticket(port, &"0".repeat(token.len()));
        let ticket = offer.ticket().to_vec();
        let accepted = std::thread::spawn(move || offer.accept(Duration::from_secs(10)));
        let _forger = source.open(Service::LazyPages, &forged).unwrap();
        let opened = source.open(Service::LazyPages, &ticket).unwrap();
        let (dest_fd, dest_carrying) = accepted.join().unwrap().unwrap().for_criu().unwrap();
        let (mut criu_src, ours) = UnixStream::pair().unwrap();
        let src_carrying = opened.attach(ours.into()).unwrap();
        let mut criu_dst = UnixStream::from(dest_fd);
        criu_dst.write_all(b"get").unwrap();
        let mut got = [0u8; 3];
        criu_src.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"get");
        criu_src.write_all(b"page").unwrap();
        let mut got = [0u8; 4];
        criu_dst.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"page");
        drop((dest_carrying, src_carrying));
    }

    #[test]
    fn a_ticket_that_is_not_a_port_and_a_token_is_refused() {
        assert_eq!(parse_ticket(b"7000"), None);
        assert_eq!(parse_ticket(b"x 00"), None);
        let token = "ab".repeat(TOKEN_BYTES);
        assert_eq!(parse_ticket(&ticket(7000, &token)), Some((7000, token)));
    }
}
