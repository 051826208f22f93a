//! CRIU's own connections of a migration, carried by the transport.
//!
//! Two strategies need a connection of CRIU's beside the image stream:
//! the page server (the source's dump sends its pages into the
//! destination's `criu page-server`) and the lazy pages (the
//! destination's `criu lazy-pages` fetches pages from the source's
//! dump). A transport that can open more connections to its peer (one
//! per [`Service`], as a git transport opens one stream per service)
//! implements [`SideChannels`]: the destination *offers* a connection
//! ([`SideChannels::offer`]; the migration sends the [`Offer`]'s ticket
//! over the stream), the source *opens* it with that ticket
//! ([`SideChannels::open`]), and the destination accepts it
//! ([`Offer::accept`]). Either end gets a [`CriuConnection`]: a
//! connected socket CRIU reads and writes itself (a unix or vsock
//! stream), or a connection the transport carries itself (TLS), to which
//! the crate hands a plain socket of CRIU's.
//!
//! What CRIU is handed: on the destination, the daemons take the socket
//! as it is (`--ps-socket`); on the source, the dump talks TCP on the
//! loopback to the crate (a listener that takes only a socket of the
//! dump's own CRIU, or the lazy dump's listener, reached at once and
//! checked to be the dump's own), which carries it into the connection.
//! A transport without side channels (plain TCP) leaves CRIU to connect
//! by itself between the hosts' IP addresses.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Which of CRIU's own connections of a migration a side channel is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Service {
    /// The page server: the source's dump sends the memory pages into the
    /// destination's `criu page-server`.
    PageServer,
    /// Lazy pages: the destination's `criu lazy-pages` fetches the pages
    /// the restored tree touches from the source's dump.
    LazyPages,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::PageServer => "page server",
            Service::LazyPages => "lazy pages",
        })
    }
}

/// Opens CRIU's own connections of a migration to the peer of a
/// transport's stream (see [`crate::transfer::Transport::side_channels`]
/// and the module docs). One value serves one migration, on one side.
pub trait SideChannels: Send {
    /// The destination's part: readies one connection for `service` and
    /// says how the source opens it (the [`Offer`]'s ticket, which the
    /// migration sends over its stream).
    fn offer(&mut self, service: Service) -> Result<Offer>;

    /// The source's part: opens the connection for `service` that the
    /// destination offered with `ticket`.
    fn open(&mut self, service: Service, ticket: &[u8]) -> Result<CriuConnection>;
}

/// What accepts an offered connection, within the time it is given.
type Accept = Box<dyn FnOnce(Duration) -> Result<CriuConnection> + Send>;

/// A connection the destination offers for one of CRIU's services: the
/// ticket the source needs to open it (an address, a port, a one-time
/// token: whatever the transport needs, a few bytes), and the accepting.
pub struct Offer {
    ticket: Vec<u8>,
    accept: Accept,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer").finish_non_exhaustive()
    }
}

impl Offer {
    /// An offer of `ticket`, accepted by `accept` (given the time it may
    /// take). Keep a token in the ticket that only the stream's peer
    /// learns, and have `accept` refuse a connection without it, unless
    /// the transport authenticates its connections otherwise.
    pub fn new(
        ticket: Vec<u8>,
        accept: impl FnOnce(Duration) -> Result<CriuConnection> + Send + 'static,
    ) -> Offer {
        Offer {
            ticket,
            accept: Box::new(accept),
        }
    }

    /// What the source needs to open the connection.
    pub fn ticket(&self) -> &[u8] {
        &self.ticket
    }

    /// Waits at most `timeout` for the source to open the connection.
    pub fn accept(self, timeout: Duration) -> Result<CriuConnection> {
        (self.accept)(timeout)
    }
}

/// What carries a [`CriuConnection`] of a transport that carries its
/// connections itself, given the plain socket CRIU uses.
type Carry = Box<dyn FnOnce(OwnedFd) -> io::Result<Carrying> + Send>;

/// One of CRIU's connections as a transport opened or accepted it.
pub struct CriuConnection(Kind);

enum Kind {
    Socket(OwnedFd),
    Carried(Carry),
}

impl std::fmt::Debug for CriuConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Socket(fd) => f.debug_tuple("Socket").field(fd).finish(),
            Kind::Carried(_) => f.debug_tuple("Carried").finish_non_exhaustive(),
        }
    }
}

impl CriuConnection {
    /// A connected stream socket (unix, TCP, vsock) that CRIU reads and
    /// writes itself: the destination's daemons are handed it as it is.
    pub fn socket(fd: OwnedFd) -> CriuConnection {
        CriuConnection(Kind::Socket(fd))
    }

    /// A connection the transport carries itself (it encrypts, say):
    /// `carry` is given the plain socket CRIU reads and writes (a stream
    /// socket), and carries its bytes both ways, on threads of its own,
    /// until either side hangs up; the [`Carrying`] it returns stops it.
    pub fn carried(
        carry: impl FnOnce(OwnedFd) -> io::Result<Carrying> + Send + 'static,
    ) -> CriuConnection {
        CriuConnection(Kind::Carried(Box::new(carry)))
    }

    /// The descriptor to hand a CRIU daemon (`--ps-socket`), and what
    /// carries it, to keep while CRIU uses it.
    pub(crate) fn for_criu(self) -> Result<(OwnedFd, Option<Carrying>)> {
        match self.0 {
            Kind::Socket(fd) => Ok((fd, None)),
            Kind::Carried(carry) => {
                let (ours, theirs) = UnixStream::pair()
                    .map_err(|e| Error::io("creating a socketpair for CRIU's connection", e))?;
                let carrying = carry(ours.into())
                    .map_err(|e| Error::io("starting to carry CRIU's connection", e))?;
                Ok((theirs.into(), Some(carrying)))
            }
        }
    }

    /// Carries this connection into `criu`, a connected socket of CRIU's.
    pub(crate) fn attach(self, criu: OwnedFd) -> io::Result<Carrying> {
        match self.0 {
            Kind::Socket(fd) => copy_both(criu, fd),
            Kind::Carried(carry) => carry(criu),
        }
    }
}

/// A running carrier of one of CRIU's connections: threads that move its
/// bytes both ways. Dropped, it hangs both sides up and joins its
/// threads; [`Carrying::wait`] lets them end by themselves.
pub struct Carrying {
    threads: Vec<JoinHandle<()>>,
    hang_up: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Carrying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carrying")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Carrying {
    /// The carrier running on `threads`, which `hang_up` ends (by shutting
    /// both sides' sockets down, say) without blocking.
    pub fn new(threads: Vec<JoinHandle<()>>, hang_up: impl FnOnce() + Send + 'static) -> Carrying {
        Carrying {
            threads,
            hang_up: Some(Box::new(hang_up)),
        }
    }

    /// Waits for every thread to end by itself.
    pub fn wait(mut self) {
        self.hang_up = None;
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }

    /// Waits at most `grace` for the threads to end by themselves (what
    /// the last writer sent still reaches the peer), then hangs up.
    pub(crate) fn finish(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.threads.iter().all(JoinHandle::is_finished) {
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(self);
    }
}

impl Drop for Carrying {
    fn drop(&mut self) {
        if let Some(hang_up) = self.hang_up.take() {
            hang_up();
        }
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

/// How much is moved at once between two plain sockets.
const CHUNK: usize = 256 << 10;

/// Carries `a` into `b` and back, two plain stream sockets, on two
/// threads: each direction's end is passed on (`shutdown(SHUT_WR)`), a
/// failure hangs both up.
fn copy_both(a: OwnedFd, b: OwnedFd) -> io::Result<Carrying> {
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let (a3, b3) = (a.try_clone()?, b.try_clone()?);
    let one = std::thread::spawn(move || copy_one(a, b));
    let other = std::thread::spawn(move || copy_one(b2, a2));
    Ok(Carrying::new(vec![one, other], move || {
        shut(&a3, Shutdown::Both);
        shut(&b3, Shutdown::Both);
    }))
}

/// What `from` says, into `to`, until its end.
fn copy_one(from: OwnedFd, to: OwnedFd) {
    let (mut r, mut w) = (File::from(from), File::from(to));
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if w.write_all(&buf[..n]).is_err() {
                    shut(r.as_fd(), Shutdown::Both);
                    shut(w.as_fd(), Shutdown::Both);
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                shut(r.as_fd(), Shutdown::Both);
                shut(w.as_fd(), Shutdown::Both);
                return;
            }
        }
    }
    shut(w.as_fd(), Shutdown::Write);
}

/// Shuts `fd`, a socket, down (`how`), whatever kind of socket it is.
pub(crate) fn shut(fd: impl AsFd, how: Shutdown) {
    let how = match how {
        Shutdown::Read => libc::SHUT_RD,
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown(2) on a descriptor we borrow; no memory involved.
    unsafe { libc::shutdown(fd.as_fd().as_raw_fd(), how) };
}

/// The source's end for a dump that connects (the page server's): a
/// loopback listener the dump is pointed at, and a thread that carries
/// the dump's connection into the side channel once CRIU connects. Only
/// a socket of this user held by a process this one started (the dump's
/// CRIU, which libcriu or the crate forks) is taken: anyone on the host
/// can reach a loopback port, root included.
pub(crate) struct LoopbackEnd {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl LoopbackEnd {
    /// Listens on the loopback and starts waiting for the dump.
    pub(crate) fn start(conn: CriuConnection) -> Result<LoopbackEnd> {
        let bind = |e| Error::io("listening on the loopback for CRIU's connection", e);
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
                // What comes back to the dump (the page server's one-byte
                // answer to each image it opens) goes at once, not after
                // CRIU's delayed ACK.
                let _ = criu.set_nodelay(true);
                if let Ok(carrying) = conn.attach(criu.into()) {
                    carrying.wait();
                }
            }
        });
        Ok(LoopbackEnd { addr, stop })
    }

    /// Where the dump connects.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LoopbackEnd {
    /// A dump that never connected: stop listening (a connected carrier
    /// runs on until CRIU hangs up).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The source's end for a dump that listens (the lazy dump's page
/// server, at `addr` on the loopback): a thread that connects as soon as
/// the dump listens, before anyone else can learn the port from the
/// stream, and keeps the connection once the dump's own CRIU has
/// accepted it.
pub(crate) struct Dialer {
    stop: Arc<AtomicBool>,
    got: std::sync::Mutex<std::sync::mpsc::Receiver<io::Result<TcpStream>>>,
}

/// How often the dialer tries the dump's port while it does not listen.
const DIAL_EVERY: Duration = Duration::from_millis(1);

/// How long the dump's CRIU may take to accept a connection that was
/// queued on its listener.
const ACCEPT_WAIT: Duration = Duration::from_secs(10);

impl Dialer {
    /// Starts trying `addr` (a loopback address).
    pub(crate) fn start(addr: SocketAddr) -> Dialer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let got = dial(addr, &stopped);
            let _ = tx.send(got);
        });
        Dialer {
            stop,
            got: std::sync::Mutex::new(rx),
        }
    }

    /// The dump's connection, waited for at most `timeout`.
    pub(crate) fn take(&self, timeout: Duration) -> Result<TcpStream> {
        let got = self.got.lock().unwrap_or_else(|e| e.into_inner());
        match got.recv_timeout(timeout) {
            Ok(r) => r.map_err(|e| Error::io("connecting to the lazy dump's page server", e)),
            Err(_) => Err(Error::io(
                "connecting to the lazy dump's page server",
                io::Error::new(io::ErrorKind::TimedOut, "it did not listen in time"),
            )),
        }
    }

    /// Stops trying (a connection made meanwhile is dropped, which ends
    /// the dump's serving).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let got = self.got.lock().unwrap_or_else(|e| e.into_inner());
        while let Ok(conn) = got.try_recv() {
            drop(conn);
        }
    }
}

impl Drop for Dialer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Connects to `addr` once something listens there, and waits for a
/// process this one started to accept the connection.
fn dial(addr: SocketAddr, stop: &AtomicBool) -> io::Result<TcpStream> {
    let s = loop {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(DIAL_EVERY)
            }
            Err(e) => return Err(e),
        }
    };
    let deadline = Instant::now() + ACCEPT_WAIT;
    loop {
        if is_own_socket(&s)? {
            // The lazy-pages daemon's requests reach the dump at once
            // (a speed-up only: its failure fails nothing).
            let _ = s.set_nodelay(true);
            return Ok(s);
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the lazy dump's page server was not accepted by the dump's own CRIU (another \
                 process connected first, or it never accepted)",
            ));
        }
        std::thread::sleep(DIAL_EVERY);
    }
}

/// Waits on `listener` (made non-blocking) for a connection while
/// `wanted` says so and until `deadline`, skipping those `accept` refuses.
pub(crate) fn accept_polling(
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
    Ok(uid == me && inode != 0 && held_by_descendant(inode))
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

    #[test]
    fn a_socket_connection_is_carried_both_ways_and_ends_with_its_sides() {
        let (criu, ours) = UnixStream::pair().unwrap();
        let (peer, theirs) = UnixStream::pair().unwrap();
        let carrying = CriuConnection::socket(theirs.into())
            .attach(ours.into())
            .unwrap();
        let (mut criu, mut peer) = (criu, peer);
        criu.write_all(b"pages").unwrap();
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pages");
        peer.write_all(b"get").unwrap();
        let mut got = [0u8; 3];
        criu.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"get");
        // CRIU hangs up: the peer hears the end, and when it hangs up
        // too, the carrier ends by itself.
        criu.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        drop(peer);
        carrying.wait();
    }

    #[test]
    fn a_dropped_carrier_hangs_up_both_sides() {
        let (mut criu, ours) = UnixStream::pair().unwrap();
        let (mut peer, theirs) = UnixStream::pair().unwrap();
        let carrying = CriuConnection::socket(theirs.into())
            .attach(ours.into())
            .unwrap();
        drop(carrying);
        criu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(criu.read(&mut buf).unwrap(), 0, "CRIU's side was hung up");
        assert_eq!(
            peer.read(&mut buf).unwrap(),
            0,
            "the peer's side was hung up"
        );
    }

    #[test]
    fn a_carried_connection_gets_a_socketpair_for_criu() {
        let (tx, rx) = std::sync::mpsc::channel();
        let conn = CriuConnection::carried(move |plain| {
            let _ = tx.send(plain);
            Ok(Carrying::new(Vec::new(), || {}))
        });
        let (theirs, carrying) = conn.for_criu().unwrap();
        assert!(carrying.is_some());
        let mut ours = UnixStream::from(rx.recv().unwrap());
        let mut theirs = UnixStream::from(theirs);
        theirs.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        ours.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}
