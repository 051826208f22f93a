//! Page server: the destination runs `criu page-server`, the dump sends the
//! memory pages straight into it over CRIU's own TCP connection, and the
//! other images follow over the stream.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::{DestSide, Inbound, Received, SourceSide};
use crate::daemon::{free_port, Daemon};
use crate::error::{Error, Result};
use crate::migrate::config::DestConfig;
use crate::migrate::wire::{self, migration, unexpected, Msg};
use crate::options::Options;
use crate::report::DumpReport;
use crate::transfer::Transport;

pub(super) struct Source {
    page_server: SocketAddr,
}

impl Source {
    /// Waits for the destination's page server, reached at `peer`.
    pub(super) fn connect(stream: &mut dyn Transport, peer: IpAddr) -> Result<Source> {
        match wire::recv(stream)? {
            Msg::PageServerReady { port } => Ok(Source {
                page_server: SocketAddr::new(peer, port),
            }),
            Msg::Failed { message } => Err(migration(
                format!(
                    "the destination could not start its page server: {message}; \
                     the source was not touched"
                ),
                None,
            )),
            other => Err(unexpected("the page server's port", &other)),
        }
    }
}

impl SourceSide for Source {
    fn dump_options(&self, o: &mut Options<'_>) {
        o.page_server(self.page_server);
    }

    fn bytes_beside_stream(&self, dump: &DumpReport) -> u64 {
        dump.stats.as_ref().map_or(0, |s| s.pages_written * 4096)
    }
}

pub(super) struct Dest<'c> {
    cfg: &'c DestConfig<'c>,
    local: IpAddr,
}

impl<'c> Dest<'c> {
    pub(super) fn new(cfg: &'c DestConfig<'c>, local: IpAddr) -> Dest<'c> {
        Dest { cfg, local }
    }
}

impl DestSide for Dest<'_> {
    /// Starts the page server into `images_path`, tells the source where it
    /// listens, then receives the other images beside the pages and moves
    /// them in once the dump is over.
    fn receive(&mut self, mut at: Inbound<'_>) -> Result<Received> {
        let images = at.create_images()?;
        let addr = free_port(self.local)?;
        let server: Daemon = self.cfg.daemons.page_server(&images, addr)?;
        wire::send(at.stream, &Msg::PageServerReady { port: addr.port() })?;
        let rest = at.work_dir.join("images.rest");
        let transfer = at.receive_dir(&rest)?;
        move_into(&rest, at.images)?;
        server.wait(self.cfg.daemon_timeout)?;
        Ok(Received { images, transfer })
    }
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
