//! Lazy (post-copy): the dump writes every image but memory, then serves
//! the pages; the destination restores at once and its `criu lazy-pages`
//! daemon fetches pages as the tree touches them.
//!
//! CRIU's connection goes where the route says: over TCP from the
//! daemon straight to the port the dump serves on the source's address
//! (which the destination checks is the source's host), or through the
//! transport's side channel (`crate::transfer::SideChannels`): the dump
//! then serves on a loopback port of the source, which the crate
//! connects to as soon as it listens, and the daemon is handed its end
//! as a socket (`--ps-socket`).

use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    need, DestStrategy, DumpPlan, Received, Restored, Route, Running, SourceStrategy, CLOSE_GRACE,
    OPEN_WITHIN,
};
use crate::daemon::{free_port, Daemon};
use crate::error::{Error, InvalidKind, Result, TransferKind};
use crate::migrate::choice::Strategy;
use crate::migrate::config::DestConfig;
use crate::transfer::{Carrying, Dialer, Service, SideChannels};
use crate::tree::children_holding;

/// How long a lazy dump may take to end after the hang-up.
const HANG_UP_GRACE: Duration = Duration::from_millis(500);

/// How long the source waits for the connection to its dump's page
/// server, which it made as soon as the dump listened.
const DUMP_CONNECTED_WITHIN: Duration = Duration::from_secs(10);

/// The lazy strategy's own messages.
#[derive(Debug, Serialize, Deserialize)]
enum Own {
    /// From the source: the lazy dump serves its pages at this address
    /// (CRIU's own TCP).
    Source { addr: SocketAddr },
    /// From the destination: it offers the lazy-pages daemon's connection
    /// through the stream's transport; the source opens it with `ticket`
    /// (see `crate::transfer::SideChannels`).
    Channel { ticket: Vec<u8> },
}

/// A message of the strategy's own that came where another was due.
fn unexpected(expected: &str, got: &Own) -> Error {
    Error::Transfer {
        kind: TransferKind::Protocol,
        message: format!(
            "expected {expected} (both ends must carry CRIU's connections the same way), \
             got {got:?}"
        ),
        source: None,
    }
}

/// The lazy strategy's source side: how long the dump may serve the pages
/// once the destination restored ([`SourceConfig::lazy_timeout`](
/// crate::migrate::SourceConfig::lazy_timeout)).
pub(super) struct Lazy {
    timeout: Duration,
}

impl Lazy {
    pub(super) fn new(timeout: Duration) -> Lazy {
        Lazy { timeout }
    }
}

impl SourceStrategy for Lazy {
    fn name(&self) -> &str {
        Strategy::Lazy.name()
    }

    /// Dumps every image but memory (the tree held), sends them and where
    /// the pages are served (or opens the channel the destination offers
    /// for them), and serves them until the restored tree has them all.
    fn run(&mut self, source: &mut super::Source<'_>) -> Result<Restored> {
        let route = Route::of_source(source)?;
        let served = Arc::new(Source::new(route, Strategy::Lazy)?);
        let serve_at = served.serve_at;
        let unblocking = served.clone();
        let mut plan = DumpPlan::new()
            .options(move |o| {
                o.lazy_pages(true).lazy_pages_address(serve_at);
            })
            .serves_pages(self.timeout, move || unblocking.unblock_dump());
        if served.carried.is_some() {
            // The transport secures the connection: no TLS of CRIU's.
            plan = plan.without_criu_tls();
        }
        let dump = source.dump(plan)?;
        let mut images = source.images_ready(dump)?;
        source.send_images(&mut images)?;
        match &served.carried {
            Some(c) => match source.recv()? {
                Own::Channel { ticket } => served.carry(c, &ticket)?,
                other => return Err(unexpected("the lazy-pages daemon's channel", &other)),
            },
            None => source.send(&Own::Source { addr: serve_at })?,
        }
        source.await_restore(images)
    }
}

pub(super) struct Source {
    serve_at: SocketAddr,
    /// Through the transport: the channels, the dump's connection, and
    /// what carries it once the destination has opened its end.
    carried: Option<Carried>,
}

struct Carried {
    channels: Mutex<Box<dyn SideChannels>>,
    dialer: Dialer,
    carrying: Mutex<Option<Carrying>>,
}

impl Source {
    /// Picks where the dump serves: a free port on this host's address
    /// for CRIU (`Route::Direct`), or on the loopback, connected to at
    /// once, for the transport to carry.
    pub(super) fn new(route: Route, strategy: Strategy) -> Result<Source> {
        match route {
            Route::Direct { local, .. } => Ok(Source {
                serve_at: free_port(need(local, strategy)?)?,
                carried: None,
            }),
            Route::Carried(channels) => {
                let serve_at = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
                Ok(Source {
                    serve_at,
                    carried: Some(Carried {
                        channels: Mutex::new(channels),
                        dialer: Dialer::start(serve_at),
                        carrying: Mutex::new(None),
                    }),
                })
            }
        }
    }

    /// Opens the side channel the destination offers with `ticket`, and
    /// carries the dump's connection into it.
    fn carry(&self, c: &Carried, ticket: &[u8]) -> Result<()> {
        let conn = lock(&c.channels).open(Service::LazyPages, ticket)?;
        let dump = c.dialer.take(DUMP_CONNECTED_WITHIN)?;
        let carrying = conn
            .attach(dump.into())
            .map_err(|e| Error::io("carrying the lazy dump's connection", e))?;
        *lock(&c.carrying) = Some(carrying);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Source {
    /// A dump still waiting for a lazy-pages daemon ends when one connects
    /// and hangs up. One already serving a daemon (that stalls, say) does
    /// not: then the CRIU holding the serving socket, a child of this
    /// process, is killed. Through the transport, the dump's connection is
    /// hung up first.
    fn unblock_dump(&self) {
        if let Some(c) = &self.carried {
            c.dialer.stop();
            drop(lock(&c.carrying).take());
        }
        if let Ok(s) = TcpStream::connect_timeout(&self.serve_at, Duration::from_secs(2)) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + HANG_UP_GRACE;
        let mut serving = children_holding(self.serve_at);
        while !serving.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            serving = children_holding(self.serve_at);
        }
        for criu in serving {
            let _ = criu.signal(libc::SIGKILL);
        }
    }
}

pub(super) struct Dest<'c> {
    cfg: &'c DestConfig<'c>,
    /// The source's host, the only one pages are fetched from (CRIU's own
    /// TCP).
    peer: Option<IpAddr>,
    /// Or the transport's side channels, which carry the connection.
    channels: Option<Box<dyn SideChannels>>,
    daemon: Option<Daemon>,
    /// What carries the daemon's connection, through the transport.
    carrying: Option<Carrying>,
}

impl<'c> Dest<'c> {
    /// `route`: the source host's address, or what carries the daemon's
    /// connection.
    pub(super) fn new(cfg: &'c DestConfig<'c>, route: Route) -> Dest<'c> {
        let (peer, channels) = match route {
            Route::Direct { peer, .. } => (peer, None),
            Route::Carried(channels) => (None, Some(channels)),
        };
        Dest {
            cfg,
            peer,
            channels,
            daemon: None,
            carrying: None,
        }
    }

    /// Where the pages are fetched: the port the source named, on the
    /// source's own host; an address on another host is refused.
    fn source_at(&self, named: SocketAddr) -> Result<SocketAddr> {
        let Some(peer) = self.peer else {
            return Err(Error::invalid(
                None,
                InvalidKind::Missing,
                "the lazy strategy fetches pages from the source's host, and the stream is not \
                 TCP and carries no connection of CRIU's itself (Transport::side_channels): name \
                 the source's address (DestConfig::criu_peer)",
            ));
        };
        if named.ip().to_canonical() != peer.to_canonical() {
            return Err(Error::Transfer {
                kind: TransferKind::Protocol,
                message: format!(
                    "the source asks for its pages to be fetched from {named}, which is not its \
                     host {peer}: refused (only the source's own host is connected to)"
                ),
                source: None,
            });
        }
        Ok(SocketAddr::new(peer, named.port()))
    }

    /// Starts the lazy-pages daemon fetching from where the source serves
    /// (told over the stream).
    fn direct(&mut self, dest: &mut super::Dest<'_>, received: &Received) -> Result<Daemon> {
        let addr = match dest.recv()? {
            Own::Source { addr } => addr,
            other => return Err(unexpected("the lazy source's address", &other)),
        };
        let addr = self.source_at(addr)?;
        self.cfg.daemons.lazy_pages(received.images(), addr)
    }

    /// Offers the source a side channel and starts the lazy-pages daemon
    /// on it once the source has opened it.
    fn carried(
        &mut self,
        dest: &mut super::Dest<'_>,
        channels: &mut dyn SideChannels,
        received: &Received,
    ) -> Result<Daemon> {
        let offer = channels.offer(Service::LazyPages)?;
        let ticket = offer.ticket().to_vec();
        dest.send(&Own::Channel { ticket })?;
        let conn = offer.accept(self.cfg.daemon_timeout.min(OPEN_WITHIN))?;
        let (socket, carrying) = conn.for_criu()?;
        self.carrying = carrying;
        // Handed over: the daemon's copy is the only one left, so that its
        // end closes the connection.
        self.cfg.daemons.lazy_pages_on(received.images(), &socket)
    }
}

impl DestStrategy for Dest<'_> {
    fn name(&self) -> &str {
        Strategy::Lazy.name()
    }

    /// Receives the images, learns where the source serves its pages (or
    /// opens the channel to it), starts the lazy-pages daemon that will
    /// fetch them, restores, and waits until the daemon has every page.
    fn run(&mut self, dest: &mut super::Dest<'_>) -> Result<Running> {
        let received = dest.receive_images()?;
        let daemon = match self.channels.take() {
            Some(mut channels) => self.carried(dest, channels.as_mut(), &received)?,
            None => self.direct(dest, &received)?,
        };
        self.daemon = Some(daemon);
        let running = dest.restore(received, |o| {
            o.lazy_pages(true);
        })?;
        let cfg = self.cfg;
        let cancel = &cfg.cancel;
        let waited = match self.daemon.take() {
            Some(d) => d.wait_unless(cfg.daemon_timeout, || cancel.is_cancelled()),
            None => Ok(()),
        };
        match (self.carrying.take(), waited.is_ok()) {
            (Some(c), true) => c.finish(CLOSE_GRACE),
            (c, _) => drop(c),
        }
        waited.map(|()| running)
    }
}
