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

use super::{DestSide, Inbound, Received, SourceSide};
use crate::credentials::TlsFiles;
use crate::daemon::{free_port, Daemon};
use crate::error::{Error, Result, SourceState, Step};
use crate::images::ImagesDir;
use crate::migrate::config::DestConfig;
use crate::migrate::wire::{self, failed, unexpected, Msg};
use crate::options::Options;
use crate::report::DumpReport;
use crate::transfer::Transport;

/// The size of the pages CRIU counts.
const PAGE_SIZE: u64 = 4096;

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
        match wire::recv(stream)? {
            Msg::PageServerReady { port } => Ok(Source {
                page_server: SocketAddr::new(peer, port),
                #[cfg(feature = "tls")]
                relay: None,
            }),
            Msg::PageServerRelay { port } => relayed(SocketAddr::new(peer, port), tls),
            Msg::Failed { message, .. } => Err(failed(
                Step::Handshake,
                SourceState::Untouched,
                format!(
                    "the destination could not start its page server: {message}; \
                     the source was not touched"
                ),
                None,
            )),
            other => Err(unexpected(
                Step::Handshake,
                SourceState::Untouched,
                "the page server's port",
                &other,
            )),
        }
    }
}

/// Connects to the destination's relay at `dest` and starts this side's.
#[cfg(feature = "tls")]
fn relayed(dest: SocketAddr, tls: Option<&TlsFiles>) -> Result<Source> {
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
    let relay = crate::tls::relay::LocalEnd::start(config.connect(tcp)?)?;
    Ok(Source {
        page_server: relay.addr(),
        relay: Some(relay),
    })
}

#[cfg(not(feature = "tls"))]
fn relayed(_dest: SocketAddr, _tls: Option<&TlsFiles>) -> Result<Source> {
    Err(failed(
        Step::Handshake,
        SourceState::Untouched,
        "the destination relays its page server through the crate's TLS, and this build of \
         the source has no feature `tls`",
        None,
    ))
}

impl SourceSide for Source {
    fn dump_options(&self, o: &mut Options<'_>) {
        o.page_server(self.page_server);
    }

    #[cfg(feature = "tls")]
    fn carries_criu_tls(&self) -> bool {
        self.relay.is_some()
    }

    /// The pages CRIU wrote into the page server: private and shared
    /// memory (`shpages_written`) alike.
    fn bytes_beside_stream(&self, dump: &DumpReport) -> u64 {
        let pages = dump
            .stats
            .as_ref()
            .map_or(0, |s| s.pages_written + s.shpages_written.unwrap_or(0));
        pages * PAGE_SIZE
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

    /// Starts the page server listening on this host's address, and tells
    /// the source.
    fn listening(&self, at: &mut Inbound<'_>) -> Result<(Daemon, ImagesDir)> {
        let images = at.create_images()?;
        let addr = free_port(self.local)?;
        let server = self.cfg.daemons.page_server(&images, addr)?;
        wire::send(at.stream, &Msg::PageServerReady { port: addr.port() })?;
        Ok((server, images))
    }

    /// Starts the page server on a socketpair to a relay, tells the source
    /// where the relay listens, and waits for it to connect and
    /// authenticate.
    #[cfg(feature = "tls")]
    fn relayed(&self, at: &mut Inbound<'_>, files: &TlsFiles) -> Result<(Daemon, ImagesDir)> {
        use std::os::fd::OwnedFd;
        let config = crate::tls::TlsConfig::new(files.clone())?;
        let listen = |e| Error::io("listening for the source's page-server relay", e);
        let listener = std::net::TcpListener::bind((self.local, 0)).map_err(listen)?;
        let port = listener.local_addr().map_err(listen)?.port();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("creating the page server's socketpair", e))?;
        let images = at.create_images()?;
        let server = self
            .cfg
            .daemons
            .page_server_on(&images, &OwnedFd::from(theirs))?;
        wire::send(at.stream, &Msg::PageServerRelay { port })?;
        let tls = crate::tls::relay::accept_peer(&listener, &config)?;
        crate::tls::relay::carry(ours, tls)
            .map_err(|e| Error::io("starting the page-server relay", e))?;
        Ok((server, images))
    }

    /// The page server, relayed through the crate's TLS where it can be.
    fn start_server(&self, at: &mut Inbound<'_>) -> Result<(Daemon, ImagesDir)> {
        #[cfg(feature = "tls")]
        if let Some(files) = self.cfg.daemons.tls_files() {
            return self.relayed(at, files);
        }
        self.listening(at)
    }
}

impl DestSide for Dest<'_> {
    /// Starts the page server into `images_path`, tells the source where it
    /// listens, then receives the other images beside the pages and moves
    /// them in once the dump is over.
    fn receive(&mut self, mut at: Inbound<'_>) -> Result<Received> {
        let (server, images) = self.start_server(&mut at)?;
        let rest = at.work_dir.join("images.rest");
        let transfer = at.receive_dir(&rest)?;
        move_into(&rest, at.images)?;
        let cancel = &self.cfg.cancel;
        server.wait_unless(self.cfg.daemon_timeout, || cancel.is_cancelled())?;
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
