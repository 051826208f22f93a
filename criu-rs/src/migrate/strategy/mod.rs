//! How memory gets to the destination: behind the public `Strategy`
//! (named in `choice`), one module per strategy implementing the two
//! sides' steps ([`SourceSide`], [`DestSide`]). The source and destination drivers run
//! the steps every strategy shares (stop, dump, send the images, restore,
//! confirm) and ask the strategy only for what differs.

mod lazy;
mod page_server;
mod pre_copy;
mod stop_and_copy;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cancel::Cancel;
use super::choice::{PreCopyPolicy, Strategy};
use super::config::{Customize, DestConfig};
use crate::client::Criu;
use crate::error::{Error, InvalidKind, Result};
use crate::images::ImagesDir;
use crate::options::Options;
use crate::report::DumpReport;
use crate::transfer::{Limits, SideChannels, TransferStats, Transport};

/// The source's part of a strategy, for one migration.
pub(super) trait SourceSide: Sync {
    /// Adds the strategy's own options to the dump.
    fn dump_options(&self, o: &mut Options<'_>);

    /// Runs before the tree is stopped, while it runs (pre-copy: its
    /// passes).
    fn before_dump(&mut self, _at: Before<'_>) -> Result<()> {
        Ok(())
    }

    /// Whether the dump keeps serving memory after its images are written
    /// (lazy): the images are complete at CRIU's status-ready, and the dump
    /// ends only when the destination has every page.
    fn serves_after_images(&self) -> bool {
        false
    }

    /// Whether the images are sent while the dump writes them (the pages
    /// as they grow, the rest when the dump ends) rather than after it.
    fn streams_while_dumping(&self) -> bool {
        false
    }

    /// After the images were sent: what the destination needs before it
    /// restores.
    fn after_images(&self, _stream: &mut dyn Transport) -> Result<()> {
        Ok(())
    }

    /// Unblocks a dump that serves pages to a destination which will not
    /// come, so that it ends.
    fn unblock_dump(&self) {}

    /// Whether the strategy carries CRIU's own connection through the
    /// crate's TLS itself (then CRIU must not add its own).
    fn carries_criu_tls(&self) -> bool {
        false
    }

    /// Bytes of memory that went to the destination beside the stream.
    fn bytes_beside_stream(&self, _dump: &DumpReport) -> u64 {
        0
    }
}

/// What a source step before the dump may use: the tree's root `pid`,
/// the stream (after the hello), the source's work directory (the
/// images directory's parent), the caller's dump options, the deadline
/// of each dump, and the migration's cancel token.
pub(super) struct Before<'b> {
    pub(super) criu: &'b Criu,
    pub(super) pid: i32,
    pub(super) stream: &'b mut dyn Transport,
    pub(super) work_dir: &'b Path,
    pub(super) customize: Option<&'b Customize<'b>>,
    pub(super) deadline: Option<Duration>,
    pub(super) cancel: &'b Cancel,
}

/// Where the destination receives: the stream, its work directory, the
/// path the images must end up at, what the sender may send, and the record of what this
/// receive created.
pub(super) struct Inbound<'s> {
    pub(super) stream: &'s mut dyn Transport,
    pub(super) work_dir: &'s Path,
    pub(super) images: &'s Path,
    pub(super) limits: &'s Limits,
    pub(super) created: &'s mut Created,
}

impl Inbound<'_> {
    /// Receives a directory sent with `transfer::send_dir` into `target`
    /// (which must not exist), and records it as created here.
    pub(super) fn receive_dir(&mut self, target: &Path) -> Result<TransferStats> {
        let t = super::wire::receive_images(self.stream, target, self.limits)?;
        self.created.add(target);
        Ok(t)
    }

    /// Creates the images directory, recorded as created here.
    pub(super) fn create_images(&mut self) -> Result<ImagesDir> {
        let images = ImagesDir::create(self.images)?;
        self.created.add(self.images);
        Ok(images)
    }
}

/// The directories one receive created: on failure, these and nothing
/// else are removed (a directory that was there before belongs to someone
/// else).
#[derive(Default)]
pub(super) struct Created(Vec<PathBuf>);

impl Created {
    fn add(&mut self, path: &Path) {
        self.0.push(path.to_path_buf());
    }

    /// Removes what was recorded (whatever is gone already is skipped).
    pub(super) fn remove_all(&self) {
        for path in self.0.iter().rev() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// The images as they arrived.
pub(super) struct Received {
    pub(super) images: ImagesDir,
    pub(super) transfer: TransferStats,
}

/// The destination's part of a strategy, for one migration.
pub(super) trait DestSide {
    /// Receives the images, starting whatever the strategy's restore needs
    /// beside the stream.
    fn receive(&mut self, at: Inbound<'_>) -> Result<Received>;

    /// Adds the strategy's own options to the restore.
    fn restore_options(&self, _o: &mut Options<'_>) {}

    /// After the restore, until the restored tree has all it needs (lazy:
    /// every page), for at most `timeout`.
    fn after_restore(self: Box<Self>, _timeout: Duration) -> Result<()> {
        Ok(())
    }
}

/// How long the destination waits for the source to open a side channel
/// it offered (the source opens it as soon as it hears of it).
const OPEN_WITHIN: Duration = Duration::from_secs(30);

/// How long a side channel whose daemon is done may take to pass on what
/// is still in flight before it is hung up.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How CRIU's own connections of a migration (page server, lazy pages)
/// reach the other host.
pub(super) enum Route {
    /// CRIU connects by itself over TCP: `local` is this host's address,
    /// `peer` the other host's, either unknown if `None`.
    Direct {
        local: Option<IpAddr>,
        peer: Option<IpAddr>,
    },
    /// Through the side channels of the stream's transport.
    Carried(Box<dyn SideChannels>),
}

impl Route {
    /// The route of `stream`: its side channels if it carries CRIU's
    /// connections itself, else CRIU's own TCP between the `named`
    /// addresses (this host's, the peer's), or the stream's where none is
    /// named.
    pub(super) fn of(
        stream: &dyn Transport,
        (local, peer): (Option<IpAddr>, Option<IpAddr>),
    ) -> Result<Route> {
        let ends = stream.ip_addresses().map_err(super::wire::no_addresses)?;
        Ok(match stream.side_channels() {
            Some(channels) => Route::Carried(channels),
            None => Route::Direct {
                local: local.or(ends.map(|e| e.0)),
                peer: peer.or(ends.map(|e| e.1)),
            },
        })
    }
}

/// Starts the source's part of `strategy`: agrees with the destination on
/// what the strategy needs before the dump. `route` is how CRIU's own
/// connections reach the destination, `policy` when pre-copy stops its
/// passes.
pub(super) fn source_side(
    strategy: Strategy,
    stream: &mut dyn Transport,
    route: Route,
    policy: PreCopyPolicy,
) -> Result<Box<dyn SourceSide>> {
    Ok(match strategy {
        Strategy::StopAndCopy => Box::new(stop_and_copy::Source),
        Strategy::PreCopy => Box::new(pre_copy::Source::new(policy)),
        Strategy::PageServer => Box::new(page_server::Source::connect(stream, route, strategy)?),
        Strategy::Lazy => Box::new(lazy::Source::new(route, strategy)?),
    })
}

/// The destination's part of `strategy`; `route` is how CRIU's own
/// connections reach the source; `memory` the source's estimate of the
/// tree's memory, when it sent one.
pub(super) fn dest_side<'c>(
    strategy: Strategy,
    cfg: &'c DestConfig<'_>,
    route: Route,
    memory: Option<u64>,
) -> Result<Box<dyn DestSide + 'c>> {
    Ok(match strategy {
        Strategy::StopAndCopy => Box::new(stop_and_copy::Dest),
        Strategy::PreCopy => Box::new(pre_copy::Dest),
        Strategy::PageServer => Box::new(page_server::Dest::new(cfg, route, strategy, memory)?),
        Strategy::Lazy => Box::new(lazy::Dest::new(cfg, route)),
    })
}

/// The address a strategy whose CRIU connects by itself cannot do
/// without.
fn need<T>(addr: Option<T>, strategy: Strategy) -> Result<T> {
    addr.ok_or_else(|| {
        Error::invalid(
            None,
            InvalidKind::Missing,
            format!(
                "the {strategy} strategy needs CRIU's own connections between the hosts, and \
                 the stream is not TCP and carries none itself (Transport::side_channels): \
                 name the addresses (SourceConfig::criu_addresses, DestConfig::criu_address)"
            ),
        )
    })
}
