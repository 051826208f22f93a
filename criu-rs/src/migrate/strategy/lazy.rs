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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    need, stop_and_copy, DestSide, Inbound, Received, Route, SourceSide, CLOSE_GRACE, OPEN_WITHIN,
};
use crate::daemon::{free_port, Daemon};
use crate::error::{Error, InvalidKind, Result, SourceState, Step, TransferKind};
use crate::migrate::choice::Strategy;
use crate::migrate::config::DestConfig;
use crate::migrate::wire::{self, failed, unexpected, Msg};
use crate::options::Options;
use crate::transfer::{Carrying, Dialer, Service, SideChannels, Transport};
use crate::tree::children_holding;

/// How long a lazy dump may take to end after the hang-up.
const HANG_UP_GRACE: Duration = Duration::from_millis(500);

/// How long the source waits for the connection to its dump's page
/// server, which it made as soon as the dump listened.
const DUMP_CONNECTED_WITHIN: Duration = Duration::from_secs(10);

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

    /// Opens the side channel the destination offers, and carries the
    /// dump's connection into it.
    fn carry(&self, c: &Carried, stream: &mut dyn Transport) -> Result<()> {
        let ticket = match wire::recv(stream)? {
            Msg::CriuChannel { ticket } => ticket,
            Msg::Failed { message, .. } => {
                return Err(failed(
                    Step::Transfer,
                    SourceState::Resumed,
                    format!("the destination could not offer its lazy-pages channel: {message}"),
                    None,
                ))
            }
            other => {
                return Err(unexpected(
                    Step::Transfer,
                    SourceState::Resumed,
                    "the lazy-pages daemon's channel through the transport",
                    &other,
                ))
            }
        };
        let conn = lock(&c.channels).open(Service::LazyPages, &ticket)?;
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

impl SourceSide for Source {
    fn dump_options(&self, o: &mut Options<'_>) {
        o.lazy_pages(true).lazy_pages_address(self.serve_at);
    }

    fn serves_after_images(&self) -> bool {
        true
    }

    fn after_images(&self, stream: &mut dyn Transport) -> Result<()> {
        match &self.carried {
            Some(c) => self.carry(c, stream),
            None => wire::send(
                stream,
                &Msg::LazySource {
                    addr: self.serve_at,
                },
            ),
        }
    }

    fn carries_criu_tls(&self) -> bool {
        self.carried.is_some()
    }

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
    fn direct(&mut self, at: &mut Inbound<'_>, received: &Received) -> Result<Daemon> {
        let addr = match wire::recv(at.stream)? {
            Msg::LazySource { addr } => addr,
            other => {
                return Err(unexpected(
                    Step::Transfer,
                    SourceState::Unknown,
                    "the lazy source's address",
                    &other,
                ))
            }
        };
        let addr = self.source_at(addr)?;
        self.cfg.daemons.lazy_pages(&received.images, addr)
    }

    /// Offers the source a side channel and starts the lazy-pages daemon
    /// on it once the source has opened it.
    fn carried(
        &mut self,
        at: &mut Inbound<'_>,
        channels: &mut dyn SideChannels,
        received: &Received,
    ) -> Result<Daemon> {
        let offer = channels.offer(Service::LazyPages)?;
        let ticket = offer.ticket().to_vec();
        wire::send(at.stream, &Msg::CriuChannel { ticket })?;
        let conn = offer.accept(self.cfg.daemon_timeout.min(OPEN_WITHIN))?;
        let (socket, carrying) = conn.for_criu()?;
        self.carrying = carrying;
        // Handed over: the daemon's copy is the only one left, so that its
        // end closes the connection.
        self.cfg.daemons.lazy_pages_on(&received.images, &socket)
    }
}

impl DestSide for Dest<'_> {
    /// Receives the images, learns where the source serves its pages (or
    /// opens the channel to it), and starts the lazy-pages daemon that
    /// will fetch them.
    fn receive(&mut self, mut at: Inbound<'_>) -> Result<Received> {
        let received = stop_and_copy::Dest.receive(Inbound {
            stream: &mut *at.stream,
            work_dir: at.work_dir,
            images: at.images,
            limits: at.limits,
            created: &mut *at.created,
        })?;
        let daemon = match self.channels.take() {
            Some(mut channels) => self.carried(&mut at, channels.as_mut(), &received)?,
            None => self.direct(&mut at, &received)?,
        };
        self.daemon = Some(daemon);
        Ok(received)
    }

    fn restore_options(&self, o: &mut Options<'_>) {
        o.lazy_pages(true);
    }

    fn after_restore(mut self: Box<Self>, timeout: Duration) -> Result<()> {
        let cfg = self.cfg;
        let cancel = &cfg.cancel;
        let waited = match self.daemon.take() {
            Some(d) => d.wait_unless(timeout, || cancel.is_cancelled()),
            None => Ok(()),
        };
        match (self.carrying.take(), waited.is_ok()) {
            (Some(c), true) => c.finish(CLOSE_GRACE),
            (c, _) => drop(c),
        }
        waited
    }
}
