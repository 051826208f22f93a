//! Page server: the destination runs `criu page-server`, the dump sends the
//! memory pages straight into it over CRIU's own connection, and the
//! other images follow over the stream.
//!
//! CRIU's connection goes where the route says: over TCP straight to the
//! page server's port on the destination's address, or through the
//! transport's side channel (`crate::transfer::SideChannels`: TLS, a unix
//! or vsock transport), which the dump reaches on a loopback port of the
//! source and the page server over a socketpair (`--ps-socket`).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    need, DestStrategy, DumpPlan, Inbound, Received, Restored, Route, Running, SourceStrategy,
    CLOSE_GRACE, OPEN_WITHIN,
};
use crate::daemon::{free_port, Daemon, DaemonConfig};
use crate::error::{Error, Result, SourceState, Step, TransferKind};
use crate::images::ImagesDir;
use crate::migrate::choice::Strategy;
use crate::migrate::config::DestConfig;
use crate::migrate::wire::{self, failed};
use crate::pidfd::Pidfd;
use crate::report::DumpReport;
use crate::transfer::{Carrying, Interrupter, LoopbackEnd, Service, SideChannels, Transport};

/// The size of the pages CRIU counts.
const PAGE_SIZE: u64 = 4096;

/// The page-server strategy's own messages, from the destination.
#[derive(Debug, Serialize, Deserialize)]
enum Own {
    /// The destination's page server listens on this port.
    Ready { port: u16 },
    /// The destination offers the page server's connection through the
    /// stream's transport: the source opens it with `ticket` (the
    /// transport's own: for TLS, a port and a one-time token, so that
    /// only the peer of this stream, not any holder of a certificate, is
    /// connected). See `crate::transfer::SideChannels`.
    Channel { ticket: Vec<u8> },
}

pub(super) struct Source {
    page_server: SocketAddr,
    /// Through the transport: the loopback end the dump connects to.
    carried: Option<LoopbackEnd>,
}

impl Source {
    /// Waits for the destination's page server: on the destination's
    /// address (`Route::Direct`), or through the side channel the
    /// destination offers.
    pub(super) fn connect(
        stream: &mut dyn Transport,
        route: Route,
        strategy: Strategy,
    ) -> Result<Source> {
        let (peer, channels) = match route {
            Route::Direct { peer, .. } => (Some(need(peer, strategy)?), None),
            Route::Carried(channels) => (None, Some(channels)),
        };
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
        match (own, peer, channels) {
            (Own::Ready { port }, Some(peer), _) => Ok(Source {
                page_server: SocketAddr::new(peer, port),
                carried: None,
            }),
            (Own::Channel { ticket }, _, Some(mut channels)) => {
                let end = LoopbackEnd::start(channels.open(Service::PageServer, &ticket)?)?;
                Ok(Source {
                    page_server: end.addr(),
                    carried: Some(end),
                })
            }
            (other, _, _) => Err(failed(
                Step::Handshake,
                SourceState::Untouched,
                format!(
                    "expected the page server's port, or its channel through the transport \
                     (both ends must carry CRIU's connections the same way), got {other:?}; \
                     the source was not touched"
                ),
                None,
            )),
        }
    }
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
        let route = Route::of_source(source)?;
        // What carries CRIU's connection, if anything, lives until the
        // dump is over (to the end of this function).
        let server = Source::connect(source.stream(), route, Strategy::PageServer)?;
        let at = server.page_server;
        let mut plan = DumpPlan::new().options(move |o| {
            o.page_server(at);
        });
        if server.carried.is_some() {
            // The transport secures the connection: no TLS of CRIU's.
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
    /// Where the page server listens (CRIU's own TCP).
    local: Option<IpAddr>,
    /// Or the transport's side channels, which carry its connection.
    channels: Option<Box<dyn SideChannels>>,
    memory: Option<u64>,
    /// What carries the page server's connection, through the transport:
    /// ended when the page server is done, on every path out of the
    /// migration.
    carrying: Option<Carrying>,
}

impl<'c> Dest<'c> {
    /// `route`: where the page server listens, or what carries its
    /// connection; `memory`: the source's estimate of its tree's memory.
    pub(super) fn new(
        cfg: &'c DestConfig<'c>,
        route: Route,
        strategy: Strategy,
        memory: Option<u64>,
    ) -> Result<Dest<'c>> {
        let (local, channels) = match route {
            Route::Direct { local, .. } => (Some(need(local, strategy)?), None),
            Route::Carried(channels) => (None, Some(channels)),
        };
        Ok(Dest {
            cfg,
            local,
            channels,
            memory,
            carrying: None,
        })
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

    /// Starts the page server listening on `local`, and tells the source.
    fn listening(
        &self,
        at: &mut Inbound<'_>,
        local: IpAddr,
        budget: u64,
    ) -> Result<(Daemon, ImagesDir)> {
        let images = at.create_images()?;
        let addr = free_port(local)?;
        let server = bounded(&self.cfg.daemons, budget).page_server(&images, addr)?;
        wire::send_own(at.stream, &Own::Ready { port: addr.port() })?;
        Ok((server, images))
    }

    /// Offers the source a side channel, starts the page server on a
    /// socketpair, tells the source the channel's ticket, and waits for
    /// the source to open it; the channel is then carried into the
    /// socketpair.
    fn carried(
        &mut self,
        at: &mut Inbound<'_>,
        channels: &mut dyn SideChannels,
        budget: u64,
    ) -> Result<(Daemon, ImagesDir)> {
        let offer = channels.offer(Service::PageServer)?;
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| Error::io("creating the page server's socketpair", e))?;
        let images = at.create_images()?;
        let server = bounded(&self.cfg.daemons, budget).page_server_on(&images, &theirs.into())?;
        let ticket = offer.ticket().to_vec();
        wire::send_own(at.stream, &Own::Channel { ticket })?;
        let conn = offer.accept(self.cfg.daemon_timeout.min(OPEN_WITHIN))?;
        let carrying = conn
            .attach(ours.into())
            .map_err(|e| Error::io("carrying the page server's connection", e))?;
        self.carrying = Some(carrying);
        Ok((server, images))
    }

    /// The page server, its connection carried by the transport where it
    /// can be.
    fn start_server(&mut self, at: &mut Inbound<'_>, budget: u64) -> Result<(Daemon, ImagesDir)> {
        match (self.channels.take(), self.local) {
            (Some(mut channels), _) => self.carried(at, channels.as_mut(), budget),
            (None, Some(local)) => self.listening(at, local, budget),
            (None, None) => Err(Error::invalid(
                None,
                crate::error::InvalidKind::Missing,
                "the page server has neither an address nor a channel",
            )),
        }
    }

    /// Ends what carries the page server's connection: at once after a
    /// failure, after what is in flight has passed after a success.
    fn end_carrying(&mut self, succeeded: bool) {
        match (self.carrying.take(), succeeded) {
            (Some(c), true) => c.finish(CLOSE_GRACE),
            (c, _) => drop(c),
        }
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
        // The page server is done (or failed): so is its connection.
        self.end_carrying(received.is_ok());
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
