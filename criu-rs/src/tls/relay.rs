//! One plain connection of CRIU's carried through an authenticated TLS
//! connection of the crate's: what CRIU writes into its end is encrypted
//! onto the TLS connection, and what arrives there is decrypted into it.
//!
//! Why not CRIU's own TLS for the page server: under GnuTLS CRIU can no
//! longer splice pages from the dumped process to the socket and copies
//! them through user space in small pieces; the page-server migration
//! took 2.3x (256 MiB) to 3.1x (1 GiB) the downtime of plain TCP so. CRIU
//! talks plain TCP to a relay on its own host instead (the source's dump to
//! a loopback listener that accepts only sockets of this user, the
//! destination's page server over a socketpair), and the relays talk
//! rustls between the hosts, with the same certificates and checks as the
//! migration stream.
//!
//! Two threads per relay, one per direction. The rustls session is shared
//! under a lock held only to encrypt or decrypt, never across socket I/O;
//! only the outbound thread writes to the TLS socket. The inbound thread
//! never has anything to send back: the sessions have no tickets, and key
//! updates come after hundreds of GB.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{TlsConfig, TlsStream};

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

impl Plain for UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn end(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

/// How long the peer's end of a relay may stay silent, or leave what the
/// relay sends unread, before the relay gives up (both directions end,
/// and CRIU's connection with them).
pub(crate) const IDLE: Duration = Duration::from_secs(600);

/// A running relay: its two threads end when both sides have hung up
/// (or either fails, which hangs up the other, or the peer stays silent
/// for [`IDLE`]). Dropped, it hangs up both sides and joins its threads.
pub(crate) struct Relay {
    threads: Vec<JoinHandle<()>>,
    hang_up: Option<Box<dyn FnOnce() + Send>>,
}

impl Relay {
    /// Waits for both directions to end by themselves.
    pub(crate) fn join(mut self) {
        self.hang_up = None;
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(hang_up) = self.hang_up.take() {
            hang_up();
        }
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

type Session = Arc<Mutex<rustls::Connection>>;

fn lock(s: &Session) -> MutexGuard<'_, rustls::Connection> {
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

/// Starts carrying `plain` through `tls` in both directions; the relay
/// gives up when the TLS connection moved nothing either way for `idle`
/// (its reads and writes time out then).
pub(crate) fn carry<P: Plain>(plain: P, tls: TlsStream, idle: Duration) -> io::Result<Relay> {
    let (conn, socket) = tls.into_parts();
    let (tcp, early) = socket.into_parts();
    tcp.set_read_timeout(Some(idle))?;
    tcp.set_write_timeout(Some(idle))?;
    let session: Session = Arc::new(Mutex::new(conn));
    let (plain_in, tcp_out) = (plain.duplicate()?, tcp.try_clone()?);
    let hang_up: Box<dyn FnOnce() + Send> = {
        let (plain, tcp) = (plain.duplicate()?, tcp.try_clone()?);
        Box::new(move || {
            plain.end(Shutdown::Both);
            tcp.end(Shutdown::Both);
        })
    };
    let activity = Activity::new();
    let out = {
        let (session, activity) = (session.clone(), activity.clone());
        std::thread::spawn(move || outbound(plain_in, tcp_out, &session, &activity))
    };
    let inb = std::thread::spawn(move || inbound(tcp, early, plain, &session, (&activity, idle)));
    Ok(Relay {
        threads: vec![out, inb],
        hang_up: Some(hang_up),
    })
}

/// CRIU's bytes, encrypted onto the TLS connection, then `close_notify`.
fn outbound(mut plain: impl Plain, mut tcp: TcpStream, session: &Session, activity: &Activity) {
    let mut buf = vec![0u8; CHUNK];
    let mut wire = Vec::with_capacity(CHUNK + CHUNK / 64);
    loop {
        let n = match plain.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if seal(session, &buf[..n], &mut wire).is_err() || tcp.write_all(&wire).is_err() {
            // The peer is gone (or read nothing for the idle timeout):
            // so is CRIU's connection.
            plain.end(Shutdown::Both);
            tcp.end(Shutdown::Both);
            return;
        }
        activity.touch();
    }
    lock(session).send_close_notify();
    if seal(session, &[], &mut wire).is_ok() {
        let _ = tcp.write_all(&wire);
    }
    tcp.end(Shutdown::Write);
}

/// Encrypts `clear` into `wire` (replacing its contents).
fn seal(session: &Session, clear: &[u8], wire: &mut Vec<u8>) -> io::Result<()> {
    wire.clear();
    let mut c = lock(session);
    c.writer().write_all(clear)?;
    while c.wants_write() {
        c.write_tls(wire)?;
    }
    Ok(())
}

/// The peer's bytes, decrypted into CRIU's connection, until the peer's
/// `close_notify` (or hang-up).
fn inbound(
    mut tcp: TcpStream,
    early: Vec<u8>,
    mut plain: impl Plain,
    session: &Session,
    (activity, idle): (&Activity, Duration),
) {
    let mut raw = vec![0u8; CHUNK];
    let mut clear = Vec::with_capacity(CHUNK);
    let mut pending = early;
    // What the session decrypted already (after the token) goes first.
    if drain(session, &mut clear).is_err() || plain.write_all(&clear).is_err() {
        plain.end(Shutdown::Both);
        tcp.end(Shutdown::Both);
        return;
    }
    loop {
        let data = if pending.is_empty() {
            match tcp.read(&mut raw) {
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
            }
        } else {
            &pending[..]
        };
        let opened = open(session, data, &mut clear);
        pending = Vec::new();
        let closed = match opened {
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
        if closed {
            break;
        }
    }
    plain.end(Shutdown::Write);
}

/// The plaintext the session holds already, into `clear` (replacing its
/// contents).
fn drain(session: &Session, clear: &mut Vec<u8>) -> io::Result<()> {
    clear.clear();
    let mut c = lock(session);
    c.process_new_packets().map_err(io::Error::other)?;
    match c.reader().read_to_end(clear) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Decrypts `data` into `clear` (replacing its contents); true once the
/// peer has closed the session.
fn open(session: &Session, mut data: &[u8], clear: &mut Vec<u8>) -> io::Result<bool> {
    clear.clear();
    let mut c = lock(session);
    while !data.is_empty() {
        c.read_tls(&mut data)?;
        let state = c.process_new_packets().map_err(io::Error::other)?;
        match c.reader().read_to_end(clear) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if state.peer_has_closed() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Waits on `listener` (made non-blocking) for a connection while
/// `wanted` says so and until `deadline`, skipping those `accept` refuses.
fn accept_polling(
    listener: &TcpListener,
    deadline: Instant,
    wanted: impl Fn() -> bool,
    accept: impl Fn(&TcpStream) -> bool,
) -> io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    while wanted() && Instant::now() < deadline {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                if accept(&s) {
                    return Ok(s);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no connection came in time",
    ))
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
        .map_err(|e| crate::Error::io("sending the page-server relay's token", e))
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
) -> crate::Result<TlsStream> {
    let deadline = Instant::now() + config.handshake_limit();
    loop {
        let tcp = accept_polling(listener, deadline, || true, |_| true).map_err(|e| {
            crate::Error::io(
                "waiting for the source's connection to the page-server relay",
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

/// The source's relay: a loopback listener for the dump's page-server
/// connection, and a thread that carries it through `tls` once CRIU
/// connects. Only a socket of this user held by a process this one
/// started (the dump's CRIU, which libcriu or the crate forks) is taken:
/// anyone on the host can reach a loopback port, root included.
pub(crate) struct LocalEnd {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl LocalEnd {
    /// Listens on the loopback and starts carrying.
    pub(crate) fn start(tls: TlsStream) -> crate::Result<LocalEnd> {
        let bind = |e| {
            crate::Error::io(
                "listening on the loopback for CRIU's page-server connection",
                e,
            )
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let wanted = {
            let stop = stop.clone();
            move || !stop.load(Ordering::Relaxed)
        };
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(24 * 3600);
            let own = |s: &TcpStream| is_own_socket(s).unwrap_or(false);
            if let Ok(criu) = accept_polling(&listener, deadline, wanted, own) {
                drop(listener);
                if let Ok(relay) = carry(criu, tls, IDLE) {
                    relay.join();
                }
            }
        });
        Ok(LocalEnd { addr, stop })
    }

    /// Where the dump connects.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LocalEnd {
    /// A dump that never connected: stop listening (a connected relay
    /// runs on until CRIU hangs up).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether the peer of `s`, a loopback connection, is a socket owned by
/// this process's effective user and held by a descendant of this
/// process (not by this process itself), from this thread's network
/// namespace's table of TCP sockets.
fn is_own_socket(s: &TcpStream) -> io::Result<bool> {
    let Some((uid, inode)) = peer_socket(s)? else {
        return Ok(false);
    };
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    Ok(uid == me && held_by_descendant(inode))
}

/// The owner and inode of the socket at the other end of `s`, a loopback
/// connection.
fn peer_socket(s: &TcpStream) -> io::Result<Option<(u32, u64)>> {
    let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (s.peer_addr()?, s.local_addr()?) else {
        return Ok(None);
    };
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
    Ok(table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ours = f.len() > 9 && f[1] == proc_addr(&peer) && f[2] == proc_addr(&local);
        ours.then(|| Some((f[7].parse().ok()?, f[9].parse().ok()?)))
            .flatten()
    }))
}

/// Whether a process this one started (a child, or one of theirs) has
/// the socket `inode` open.
fn held_by_descendant(inode: u64) -> bool {
    crate::tree::tree(std::process::id() as i32)
        .into_iter()
        .skip(1)
        .any(|pid| crate::tree::holds_any_socket(pid, &[inode]))
}

/// An address as /proc/net/tcp writes it: the IPv4 address's bytes as
/// a native integer, and the port, in hex.
fn proc_addr(a: &SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A child of this process (as CRIU is) holding a connection to
    /// `port` on the loopback, started by `wrap` (the command line before
    /// bash's); the accepted socket.
    fn child_connected(l: &TcpListener, wrap: &[&str]) -> (std::process::Child, TcpStream) {
        let port = l.local_addr().unwrap().port();
        let mut cmd = Command::new(wrap.first().copied().unwrap_or("bash"));
        cmd.args(wrap.iter().skip(1));
        if !wrap.is_empty() {
            cmd.arg("bash");
        }
        let child = cmd
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; read -t 5 <&3"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (s, _) = l.accept().unwrap();
        (child, s)
    }

    #[test]
    fn a_loopback_socket_of_this_users_child_is_own() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (mut child, s) = child_connected(&l, &[]);
        let own = is_own_socket(&s).unwrap();
        drop(s);
        let _ = child.wait();
        assert!(own);
        assert_eq!(proc_addr(&"127.0.0.1:80".parse().unwrap()), "0100007F:0050");
    }

    #[test]
    fn a_loopback_socket_of_this_process_itself_is_not() {
        // Before: any socket of this user was taken, whoever held it.
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert!(!is_own_socket(&s).unwrap());
    }

    #[test]
    fn a_loopback_socket_of_another_user_is_not() {
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return; // Only root can connect as someone else.
        }
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let setpriv = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        let (mut nobody, s) = child_connected(&l, &setpriv);
        let own = is_own_socket(&s).unwrap();
        drop(s);
        let _ = nobody.wait();
        assert!(!own, "a socket of user 65534 was taken for ours");
    }

    /// A CA and one host certificate signed by it, both ends' files.
    fn pki(dir: &std::path::Path) -> crate::credentials::TlsFiles {
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
    fn relay(idle: Duration) -> (Relay, TlsStream, UnixStream, tempfile::TempDir) {
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
        (carry(plain, ours, idle).unwrap(), peer, criu, dir)
    }

    #[test]
    fn a_relay_whose_peer_stays_silent_ends_after_the_idle_timeout() {
        // Before: its threads blocked on the silent peer for ever.
        let (relay, _peer, mut criu, _dir) = relay(Duration::from_millis(300));
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            relay.join();
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
}
