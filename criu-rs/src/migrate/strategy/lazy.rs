//! Lazy (post-copy): the dump writes every image but memory, then serves
//! the pages on a port of the source host; the destination restores at once
//! and its `criu lazy-pages` daemon fetches pages as the tree touches them.

use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{stop_and_copy, DestSide, Inbound, Received, SourceSide};
use crate::daemon::{free_port, Daemon};
use crate::error::{Error, InvalidKind, Result, SourceState, Step, TransferKind};
use crate::migrate::config::DestConfig;
use crate::migrate::wire::{self, unexpected, Msg};
use crate::options::Options;
use crate::transfer::Transport;
use crate::tree::children_holding;

/// How long a lazy dump may take to end after the hang-up.
const HANG_UP_GRACE: Duration = Duration::from_millis(500);

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
}

impl SourceSide for Source {
    fn dump_options(&self, o: &mut Options<'_>) {
        o.lazy_pages(true).lazy_pages_address(self.serve_at);
    }

    fn serves_after_images(&self) -> bool {
        true
    }

    fn after_images(&self, stream: &mut dyn Transport) -> Result<()> {
        wire::send(
            stream,
            &Msg::LazySource {
                addr: self.serve_at,
            },
        )
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

impl DestSide for Dest<'_> {
    /// Receives the images, learns where the source serves its pages, and
    /// starts the lazy-pages daemon that will fetch them.
    fn receive(&mut self, at: Inbound<'_>) -> Result<Received> {
        let received = stop_and_copy::Dest.receive(Inbound {
            stream: &mut *at.stream,
            work_dir: at.work_dir,
            images: at.images,
            limits: at.limits,
            created: &mut *at.created,
        })?;
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
        self.daemon = Some(self.cfg.daemons.lazy_pages(&received.images, addr)?);
        Ok(received)
    }

    fn restore_options(&self, o: &mut Options<'_>) {
        o.lazy_pages(true);
    }

    fn after_restore(self: Box<Self>, timeout: Duration) -> Result<()> {
        let cancel = &self.cfg.cancel;
        match self.daemon {
            Some(d) => d.wait_unless(timeout, || cancel.is_cancelled()),
            None => Ok(()),
        }
    }
}
