//! Page server: the destination runs `criu page-server`, the dump sends the
//! memory pages straight into it over CRIU's own connection, and the
//! other images follow over the stream.
//!
//! Over TLS (feature `tls` and TLS files), CRIU's connection is carried
//! by the crate's relays inside a rustls connection of its own between the
//! hosts (see `crate::tls`): the dump connects to a loopback port of the
//! source's relay, and the destination's page server is handed a
//! socketpair to its relay (`--ps-socket`). Without the feature, CRIU's
//! own TLS (GnuTLS) secures it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DestStrategy, DumpPlan, Inbound, Received, Restored, Running, SourceStrategy};
use crate::credentials::TlsFiles;
use crate::daemon::{free_port, Daemon, DaemonConfig};
use crate::error::{Error, Result, SourceState, Step, TransferKind};
use crate::images::ImagesDir;
use crate::migrate::choice::Strategy;
use crate::migrate::config::DestConfig;
use crate::migrate::wire::{self, failed};
use crate::pidfd::Pidfd;
use crate::report::DumpReport;
use crate::transfer::{Interrupter, Transport};

/// The size of the pages CRIU counts.
const PAGE_SIZE: u64 = 4096;

/// The page-server strategy's own messages, from the destination.
#[derive(Debug, Serialize, Deserialize)]
enum Own {
    /// The destination's page server listens on this port.
    Ready { port: u16 },
    /// The destination's relay to its page server listens on this port,
    /// for one connection of the crate's TLS (see `crate::tls`), whose
    /// client must first send `token` (hex; one-time, so that only the
    /// peer of this stream, not any holder of a certificate, is relayed).
    Relay { port: u16, token: String },
}

pub(super) struct Source {
    page_server: SocketAddr,
    #[cfg(feature = "tls")]
    relay: Option<crate::tls::relay::LocalEnd>,
}

impl Source {
    /// Waits for the destination's page server, reached at `peer`; over
    /// TLS, through a relay authenticated with `tls`.
    pub(super) fn connect(
        stream: &mut dyn Transport,
        peer: IpAddr,
        tls: Option<&TlsFiles>,
    ) -> Result<Source> {
        let own = wire::recv_own(stream, |message, _, _| {
            failed(
                Step::Handshake,
                SourceState::Untouched,
                format!(
                    "the destination could not start its page server: {message}; \
                     the source was not touched"
                ),
                None,
            )
        })?;
        match own {
            Own::Ready { port } => Ok(Source {
                page_server: SocketAddr::new(peer, port),
                #[cfg(feature = "tls")]
                relay: None,
            }),
            Own::Relay { port, token } => relayed(SocketAddr::new(peer, port), tls, &token),
        }
    }
}

/// Connects to the destination's relay at `dest` and starts this side's.
#[cfg(feature = "tls")]
fn relayed(dest: SocketAddr, tls: Option<&TlsFiles>, token: &str) -> Result<Source> {
    let files = tls.ok_or_else(|| {
        failed(
            Step::Handshake,
            SourceState::Untouched,
            "the destination relays its page server through TLS, and this source has no TLS \
             files: migrate over a TlsStream (or name the files, SourceConfig::criu_tls)",
            None,
        )
    })?;
    let config = crate::tls::TlsConfig::new(files.clone())?;
    let tcp = std::net::TcpStream::connect_timeout(&dest, std::time::Duration::from_secs(10))
        .map_err(|e| Error::io(format!("connecting to the page-server relay at {dest}"), e))?;
    let mut tls = config.connect(tcp)?;
    crate::tls::relay::present_token(&mut tls, token)?;
    let relay = crate::tls::relay::LocalEnd::start(tls)?;
    Ok(Source {
        page_server: relay.addr(),
        relay: Some(relay),
    })
}

#[cfg(not(feature = "tls"))]
fn relayed(_dest: SocketAddr, _tls: Option<&TlsFiles>, _token: &str) -> Result<Source> {
    Err(failed(
        Step::Handshake,
        SourceState::Untouched,
        "the destination relays its page server through the crate's TLS, and this build of \
         the source has no feature `tls`",
        None,
    ))
}

/// The page-server strategy's source side.
pub(super) struct PageServer;

impl SourceStrategy for PageServer {
    fn name(&self) -> &str {
        Strategy::PageServer.name()
    }

    /// Waits for the destination's page server, dumps into it (the tree
    /// held), sends the other images once the dump is over, and waits for
    /// the restore.
    fn run(&mut self, source: &mut super::Source<'_>) -> Result<Restored> {
        let peer = source.criu_addresses()?.1;
        let tls = source.criu_tls();
        // The relay, if any, lives until the dump is over (to the end of
        // this function).
        let server = Source::connect(source.stream(), peer, tls)?;
        let at = server.page_server;
        let mut plan = DumpPlan::new().options(move |o| {
            o.page_server(at);
        });
        if server.carries_criu_tls() {
            plan = plan.without_criu_tls();
        }
        let dump = source.dump(plan)?;
        let mut images = source.images_ready(dump)?;
        source.send_images(&mut images)?;
        let restored = source.await_restore(images)?;
        let bytes = bytes_beside_stream(restored.dump());
        Ok(restored.carried_beside(bytes))
    }
}

impl Source {
    /// Whether the strategy carries CRIU's own connection through the
    /// crate's TLS itself (then CRIU must not add its own).
    #[cfg(feature = "tls")]
    fn carries_criu_tls(&self) -> bool {
        self.relay.is_some()
    }

    #[cfg(not(feature = "tls"))]
    fn carries_criu_tls(&self) -> bool {
        false
    }
}

/// The pages CRIU wrote into the page server: private and shared memory
/// (`shpages_written`) alike.
fn bytes_beside_stream(dump: &DumpReport) -> u64 {
    let pages = dump
        .stats
        .as_ref()
        .map_or(0, |s| s.pages_written + s.shpages_written.unwrap_or(0));
    pages * PAGE_SIZE
}

pub(super) struct Dest<'c> {
    cfg: &'c DestConfig<'c>,
    local: IpAddr,
    memory: Option<u64>,
    /// The relay to the page server, over TLS: hung up and joined when
    /// dropped, on every path out of the migration.
    #[cfg(feature = "tls")]
    relay: Option<crate::tls::relay::Relay>,
}

impl<'c> Dest<'c> {
    /// `local`: where the page server (or its relay) listens; `memory`:
    /// the source's estimate of its tree's memory.
    pub(super) fn new(cfg: &'c DestConfig<'c>, local: IpAddr, memory: Option<u64>) -> Dest<'c> {
        Dest {
            cfg,
            local,
            memory,
            #[cfg(feature = "tls")]
            relay: None,
        }
    }

    /// The bytes the page server may write (the limits' total, and the
    /// free space of the work directory's file system above the
    /// reserve); refuses a tree whose announced memory is more, before
    /// the page server starts.
    fn budget(&self, at: &Inbound<'_>) -> Result<u64> {
        let room = at
            .limits
            .room_in(at.work_dir, 0)
            .map_err(|e| Error::io("reading the free space of the work directory", e))?;
        match self.memory {
            Some(memory) if memory > room => Err(limit(format!(
                "the source's tree holds {memory} bytes of memory, and this host takes at \
                 most {room} (Limits::max_total_bytes, and the free space of the work \
                 directory's file system less Limits::keep_free)"
            ))),
            _ => Ok(room),
        }
    }

    /// Starts the page server listening on this host's address, and tells
    /// the source.
    fn listening(&self, at: &mut Inbound<'_>, budget: u64) -> Result<(Daemon, ImagesDir)> {
        let images = at.create_images()?;
        let addr = free_port(self.local)?;
        let server = bounded(&self.cfg.daemons, budget).page_server(&images, addr)?;
        wire::send_own(at.stream, &Own::Ready { port: addr.port() })?;
        Ok((server, images))
    }

    /// Starts the page server on a socketpair to a relay, tells the source
    /// where the relay listens, and waits for it to connect and
    /// authenticate.
    #[cfg(feature = "tls")]
    fn relayed(
        &mut self,
        at: &mut Inbound<'_>,
        files: &TlsFiles,
        budget: u64,
    ) -> Result<(Daemon, ImagesDir)> {
        use std::os::fd::OwnedFd;
        let config = crate::tls::TlsConfig::new(files.clone())?;
        let listen = |e| Error::io("listening for the source's page-server relay", e);
        let listener = std::net::TcpListener::bind((self.local, 0)).map_err(listen)?;
        let port = listener.local_addr().map_err(listen)?.port();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("creating the page server's socketpair", e))?;
        let images = at.create_images()?;
        let server =
            bounded(&self.cfg.daemons, budget).page_server_on(&images, &OwnedFd::from(theirs))?;
        let token = crate::tls::relay::new_token()?;
        wire::send_own(
            at.stream,
            &Own::Relay {
                port,
                token: token.clone(),
            },
        )?;
        let tls = crate::tls::relay::accept_peer(&listener, &config, &token)?;
        let idle = self.cfg.daemon_timeout.min(crate::tls::relay::IDLE);
        let relay = crate::tls::relay::carry(ours, tls, idle)
            .map_err(|e| Error::io("starting the page-server relay", e))?;
        self.relay = Some(relay);
        Ok((server, images))
    }

    /// The page server, relayed through the crate's TLS where it can be.
    fn start_server(&mut self, at: &mut Inbound<'_>, budget: u64) -> Result<(Daemon, ImagesDir)> {
        #[cfg(feature = "tls")]
        if let Some(files) = self.cfg.daemons.tls_files() {
            return self.relayed(at, &files.clone(), budget);
        }
        self.listening(at, budget)
    }
}

impl DestStrategy for Dest<'_> {
    fn name(&self) -> &str {
        Strategy::PageServer.name()
    }

    fn run(&mut self, dest: &mut super::Dest<'_>) -> Result<Running> {
        let received = self.receive(dest.inbound())?;
        dest.restore(received, |_| {})
    }
}

impl Dest<'_> {
    /// Starts the page server into `images_path`, tells the source where it
    /// listens, then receives the other images beside the pages and moves
    /// them in once the dump is over.
    /// The page server is bounded by [`Dest::budget`] while it runs: no
    /// file of its may pass it (`RLIMIT_FSIZE`), and once its images
    /// together pass it, it is killed and the stream woken.
    fn receive(&mut self, mut at: Inbound<'_>) -> Result<Received> {
        let budget = self.budget(&at)?;
        let (server, images) = self.start_server(&mut at, budget)?;
        let watch = Watch::start(images.path(), budget, &server, at.stream.interrupter());
        let rest = at.work_dir.join("images.rest");
        let received = at.receive_dir(&rest).and_then(|transfer| {
            move_into(&rest, at.images)?;
            let cancel = &self.cfg.cancel;
            server.wait_unless(self.cfg.daemon_timeout, || cancel.is_cancelled())?;
            Ok(transfer)
        });
        // The page server is done (or failed): so is its relay.
        #[cfg(feature = "tls")]
        drop(self.relay.take());
        match watch.finish() {
            Some(written) => Err(limit(format!(
                "the page server had written {written} bytes, the {budget} this host \
                 takes (Limits::max_total_bytes, and the free space of the work directory's \
                 file system less Limits::keep_free); it was killed"
            ))),
            None => received.map(|transfer| Received::new(images, transfer)),
        }
    }
}

/// `daemons`, with no file larger than `budget` (a page server that
/// writes past it dies of `SIGXFSZ` at once; the watcher bounds the
/// files together).
fn bounded(daemons: &DaemonConfig, budget: u64) -> DaemonConfig {
    let mut d = daemons.clone();
    d.max_file_bytes(budget.max(1));
    d
}

/// A refusal by the destination's limits.
fn limit(message: String) -> Error {
    Error::Transfer {
        kind: TransferKind::Limit,
        message,
        source: None,
    }
}

/// How often the page server's images are measured.
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// A thread that measures the page server's images directory and kills
/// the page server (through a pidfd, so never another process) once they
/// pass the budget, then wakes the stream's blocked read.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Option<u64>>,
}

impl Watch {
    fn start(dir: &Path, budget: u64, server: &Daemon, wake: Option<Interrupter>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let pidfd = server.pid().and_then(|p| Pidfd::open(p as i32).ok());
        let (dir, stopped) = (dir.to_path_buf(), stop.clone());
        // Measured once more after the stop: what the page server wrote
        // last counts too. A page server stopped by its file size limit
        // leaves a file of exactly the budget.
        let thread = std::thread::spawn(move || loop {
            let last = stopped.load(Ordering::SeqCst);
            let written = dir_bytes(&dir);
            if written >= budget {
                if let Some(p) = &pidfd {
                    let _ = p.signal(libc::SIGKILL);
                }
                if let Some(wake) = wake {
                    wake();
                }
                return Some(written);
            }
            if last {
                return None;
            }
            std::thread::sleep(WATCH_EVERY);
        });
        Watch { stop, thread }
    }

    /// Stops watching; the bytes written if the budget was passed.
    fn finish(self) -> Option<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().ok().flatten()
    }
}

/// The bytes the files of `dir` hold (allocated: a sparse file counts
/// what it takes).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len().max(m.blocks() * 512))
                .sum()
        })
        .unwrap_or(0)
}
/// Moves every file of `from` into `to`, then removes `from`.
fn move_into(from: &Path, to: &Path) -> Result<()> {
    let list = |e| Error::io("listing received images", e);
    for entry in std::fs::read_dir(from).map_err(list)? {
        let entry = entry.map_err(list)?;
        std::fs::rename(entry.path(), to.join(entry.file_name()))
            .map_err(|e| Error::io("moving received images", e))?;
    }
    let _ = std::fs::remove_dir(from);
    Ok(())
}
