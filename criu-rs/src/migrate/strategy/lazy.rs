//! Lazy (post-copy): the dump writes every image but memory, then serves
//! the pages on a port of the source host; the destination restores at once
//! and its `criu lazy-pages` daemon fetches pages as the tree touches them.

use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{DestStrategy, DumpPlan, Restored, Running, SourceStrategy};
use crate::daemon::{free_port, Daemon};
use crate::error::{Error, InvalidKind, Result, TransferKind};
use crate::migrate::choice::Strategy;
use crate::migrate::config::DestConfig;
use crate::tree::children_holding;

/// How long a lazy dump may take to end after the hang-up.
const HANG_UP_GRACE: Duration = Duration::from_millis(500);

/// The lazy strategy's own message, from the source.
#[derive(Debug, Serialize, Deserialize)]
enum Own {
    /// The lazy dump serves its pages at this address.
    Source { addr: SocketAddr },
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
    /// the pages are served, and serves them until the restored tree has
    /// them all.
    fn run(&mut self, source: &mut super::Source<'_>) -> Result<Restored> {
        let serve_at = Source::new(source.criu_addresses()?.0)?.serve_at;
        let plan = DumpPlan::new()
            .options(move |o| {
                o.lazy_pages(true).lazy_pages_address(serve_at);
            })
            .serves_pages(self.timeout, move || Source { serve_at }.unblock_dump());
        let dump = source.dump(plan)?;
        let mut images = source.images_ready(dump)?;
        source.send_images(&mut images)?;
        source.send(&Own::Source { addr: serve_at })?;
        source.await_restore(images)
    }
}

pub(super) struct Source {
    serve_at: SocketAddr,
}

impl Source {
    /// Picks a free port on `local`, this host's address for CRIU.
    pub(super) fn new(local: IpAddr) -> Result<Source> {
        Ok(Source {
            serve_at: free_port(local)?,
        })
    }

    /// A dump still waiting for a lazy-pages daemon ends when one connects
    /// and hangs up. One already serving a daemon (that stalls, say) does
    /// not: then the CRIU holding the serving socket, a child of this
    /// process, is killed.
    fn unblock_dump(&self) {
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
    peer: Option<IpAddr>,
    daemon: Option<Daemon>,
}

impl<'c> Dest<'c> {
    /// `peer`: the source host's address, the only one pages are
    /// fetched from.
    pub(super) fn new(cfg: &'c DestConfig<'c>, peer: Option<IpAddr>) -> Dest<'c> {
        Dest {
            cfg,
            peer,
            daemon: None,
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
                 TCP: name the source's address (DestConfig::criu_peer)",
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
}

impl DestStrategy for Dest<'_> {
    fn name(&self) -> &str {
        Strategy::Lazy.name()
    }

    /// Receives the images, learns where the source serves its pages,
    /// starts the lazy-pages daemon that will fetch them, restores, and
    /// waits until the daemon has every page.
    fn run(&mut self, dest: &mut super::Dest<'_>) -> Result<Running> {
        let received = dest.receive_images()?;
        let Own::Source { addr } = dest.recv()?;
        let addr = self.source_at(addr)?;
        let daemon = self.cfg.daemons.lazy_pages(received.images(), addr)?;
        self.daemon = Some(daemon);
        let running = dest.restore(received, |o| {
            o.lazy_pages(true);
        })?;
        let cancel = &self.cfg.cancel;
        if let Some(d) = self.daemon.take() {
            d.wait_unless(self.cfg.daemon_timeout, || cancel.is_cancelled())?;
        }
        Ok(running)
    }
}
