//! Every strategy over a transport without IP addresses: a unix socket
//! between two network-namespace hosts (a unix socket crosses network
//! namespaces through the file system), with no addresses configured.
//! CRIU's own connections (the page server's, the lazy pages') are more
//! connections to the same listener, opened through the transport's
//! `SideChannels`, each presenting a one-time token the destination sent
//! over the stream. Real CRIU, real processes; needs root.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criu::migrate::{self, DestConfig, SourceConfig, Strategy};
use criu::transfer::{CriuConnection, Interrupter, Offer, Service, SideChannels, Transport};
use criu::Criu;
use criu_testkit::aftermath;
use criu_testkit::fixture;
use criu_testkit::hosts::TwoHosts;

const WAIT: Duration = Duration::from_secs(30);

/// The bytes of a side channel's token.
const TOKEN: usize = 16;

/// A migration stream over a unix socket, and the listener it came from:
/// the source connects to `path` again for each of CRIU's connections;
/// the destination accepts them from `listener`, and counts them in
/// `accepted`.
struct UnixTransport {
    stream: UnixStream,
    path: PathBuf,
    listener: Option<Arc<UnixListener>>,
    accepted: Arc<AtomicUsize>,
}

impl Read for UnixTransport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for UnixTransport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// No `ip_addresses`: the default, none.
impl Transport for UnixTransport {
    fn prepare(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.stream.prepare(timeout)
    }

    fn side_channels(&self) -> Option<Box<dyn SideChannels>> {
        Some(Box::new(UnixChannels {
            path: self.path.clone(),
            listener: self.listener.clone(),
            accepted: self.accepted.clone(),
        }))
    }

    fn interrupter(&self) -> Option<Interrupter> {
        self.stream.interrupter()
    }
}

struct UnixChannels {
    path: PathBuf,
    listener: Option<Arc<UnixListener>>,
    accepted: Arc<AtomicUsize>,
}

fn io_error(what: &str) -> impl FnOnce(io::Error) -> criu::Error + '_ {
    move |e| criu::Error::io(what, e)
}

impl SideChannels for UnixChannels {
    fn offer(&mut self, _service: Service) -> criu::Result<Offer> {
        let listener = self.listener.clone().ok_or_else(|| {
            criu::Error::io("offering a connection", io::ErrorKind::Unsupported.into())
        })?;
        let mut token = [0u8; TOKEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut token))
            .map_err(io_error("drawing a token"))?;
        let accepted = self.accepted.clone();
        Ok(Offer::new(token.to_vec(), move |timeout| {
            let conn = accept_with(&listener, &token, timeout)
                .map_err(io_error("accepting a side channel"))?;
            accepted.fetch_add(1, Ordering::SeqCst);
            Ok(conn)
        }))
    }

    fn open(&mut self, _service: Service, ticket: &[u8]) -> criu::Result<CriuConnection> {
        let mut s = UnixStream::connect(&self.path).map_err(io_error("connecting again"))?;
        s.write_all(ticket).map_err(io_error("sending the token"))?;
        Ok(CriuConnection::socket(s.into()))
    }
}

/// The first connection to `listener` within `timeout` that presents
/// `token`; others are dropped.
fn accept_with(
    listener: &UnixListener,
    token: &[u8],
    timeout: Duration,
) -> io::Result<CriuConnection> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true)?;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut got = vec![0u8; token.len()];
                if s.read_exact(&mut got).is_ok() && got == token {
                    s.set_read_timeout(None)?;
                    return Ok(CriuConnection::socket(s.into()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::ErrorKind::TimedOut.into())
}

/// Moves a live 8 MiB workload (the init of its own PID namespace) from
/// host a to host b with `strategy` over a [`UnixTransport`], with no
/// addresses configured on either side, and checks that it moved whole
/// and runs once, on host b, and that nothing is left.
fn moves_over_a_unix_socket(strategy: Strategy) {
    aftermath::isolated(|| {
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let out = dir.path().join("out.log");
        let mut w = fixture::counter_on(&hosts.a, &out, 8);
        let sum = w.memory_checksum().unwrap();
        w.wait_for_seq(20, WAIT).unwrap();
        let path = dir.path().join("migrate.sock");
        let listener = Arc::new(hosts.b.run(|| UnixListener::bind(&path)).unwrap().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (src, dst) = std::thread::scope(|s| {
            let dst = s.spawn(|| {
                hosts
                    .b
                    .run(|| {
                        let (stream, _) = listener.accept().unwrap();
                        let mut t = UnixTransport {
                            stream,
                            path: path.clone(),
                            listener: Some(listener.clone()),
                            accepted: accepted.clone(),
                        };
                        migrate::receive(&Criu::new(), &mut t, DestConfig::new())
                    })
                    .unwrap()
            });
            let src = hosts
                .a
                .run(|| {
                    let mut t = UnixTransport {
                        stream: UnixStream::connect(&path).unwrap(),
                        path: path.clone(),
                        listener: None,
                        accepted: Arc::new(AtomicUsize::new(0)),
                    };
                    assert!(t.ip_addresses().unwrap().is_none(), "no IP addresses");
                    migrate::send(&Criu::new(), w.pid(), &mut t, SourceConfig::new(strategy))
                })
                .unwrap();
            (src, dst.join().unwrap())
        });
        let src = src.unwrap_or_else(|e| panic!("{strategy}: source: {e}"));
        let dst = dst.unwrap_or_else(|e| panic!("{strategy}: destination: {e}"));
        w.reap(WAIT).unwrap();
        let seq_at_stop = w.last_seq();
        let pid = dst.child.pid();
        assert_eq!(src.restored_pid, pid);
        assert!(dst.source_confirmed, "{strategy}: the source confirmed");
        assert_eq!(
            criu_testkit::hosts::netns_of(pid).unwrap(),
            hosts.b.netns_inode().unwrap(),
            "{strategy}: now on host b"
        );
        w.wait_for_seq(seq_at_stop + 50, WAIT).unwrap();
        let (after, ok) = w.verify_memory(pid, WAIT).unwrap();
        assert!(ok && after == sum, "{strategy}: memory pattern intact");
        assert_eq!(
            aftermath::copies(&criu_testkit::existing_workload_bin().unwrap(), &out),
            vec![pid],
            "{strategy}: exactly one copy runs, the restored one"
        );
        aftermath::consecutive(&w.ticks()).unwrap_or_else(|e| panic!("{strategy}: {e}"));
        let channels = match strategy {
            Strategy::PageServer | Strategy::Lazy => 1,
            _ => 0,
        };
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            channels,
            "{strategy}: CRIU's connections went through the transport's side channels"
        );
        if strategy == Strategy::PageServer {
            assert!(
                src.page_server_bytes >= 8 << 20,
                "{strategy}: the pages went through the page server"
            );
        }
        drop(dst);
        assert!(criu_testkit::wait_gone(pid, WAIT));
        assert_eq!(aftermath::shm_entries(), Vec::<PathBuf>::new());
        assert_eq!(aftermath::no_own_processes(dir.path(), WAIT), Ok(()));
    });
}

#[test]
fn stop_and_copy_moves_a_tree_over_a_unix_socket_without_addresses() {
    moves_over_a_unix_socket(Strategy::StopAndCopy);
}

#[test]
fn pre_copy_moves_a_tree_over_a_unix_socket_without_addresses() {
    moves_over_a_unix_socket(Strategy::PreCopy);
}

#[test]
fn page_server_moves_a_tree_over_a_unix_socket_without_addresses() {
    moves_over_a_unix_socket(Strategy::PageServer);
}

#[test]
fn lazy_moves_a_tree_over_a_unix_socket_without_addresses() {
    moves_over_a_unix_socket(Strategy::Lazy);
}
