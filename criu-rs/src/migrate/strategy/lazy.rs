//! Lazy (post-copy): the dump writes every image but memory, then serves
//! the pages on a port of the source host; the destination restores at once
//! and its `criu lazy-pages` daemon fetches pages as the tree touches them.

use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{stop_and_copy, DestSide, Inbound, Received, SourceSide};
use crate::daemon::{free_port, Daemon};
use crate::error::{Result, SourceState, Step};
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
    daemon: Option<Daemon>,
}

impl<'c> Dest<'c> {
    pub(super) fn new(cfg: &'c DestConfig<'c>) -> Dest<'c> {
        Dest { cfg, daemon: None }
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
