//! Moving a live process tree to another host over one connected stream.
//!
//! The source calls [`send`], the destination [`receive`], each with its
//! end of a connected byte stream (a [`Transport`]: a `TcpStream`, a
//! `UnixStream`, or a TLS stream wrapped around one), each in its own
//! network namespace or host. Three strategies ([`Strategy`]):
//!
//! * [`Strategy::StopAndCopy`]: dump to a local directory, send it, restore.
//! * [`Strategy::PageServer`]: the destination runs `criu page-server`; the
//!   dump streams memory pages straight into it, the other images follow
//!   over the stream.
//! * [`Strategy::Lazy`] (post-copy): the dump leaves memory behind and
//!   serves it; the destination restores at once and `criu lazy-pages`
//!   fetches pages as the process touches them.
//!
//! By default each side keeps its images in memory, in a private tmpfs
//! directory removed when [`send`] or [`receive`] returns
//! ([`SourceConfig::new`], [`DestConfig::new`]); `work_dir` on either
//! config keeps them in a directory of the caller's instead.
//!
//! The page-server and lazy strategies need CRIU's own TCP connections
//! between the two hosts, beside the stream: their addresses come from
//! [`SourceConfig::criu_addresses`] / [`DestConfig::criu_address`], or,
//! when the stream is TCP, from its two ends.
//!
//! # What happens to the source process
//!
//! The source tree is stopped (`SIGSTOP`, every task) when CRIU sends its
//! pre-dump notification (CRIU has started, and not yet frozen the tasks:
//! stopping earlier would add CRIU's start-up to the downtime), and dumped
//! with `leave_running`, so CRIU leaves it stopped, alive, on the source.
//! Its tasks are held by pidfds from then on, so no signal of the
//! migration can reach a process that reused one of their pids. If
//! anything fails before the destination has restored, in any strategy,
//! the source tree is sent `SIGCONT` and runs on where it was: nothing is
//! lost. The restored tree is likewise restored stopped and continued by
//! [`receive`]. (If the destination restore succeeded but the lazy page
//! transfer failed afterwards, the destination copy cannot run on; it is
//! killed, the source is resumed and the error says so. The restored copy
//! ran from its restore until then, as far as the pages it had fetched
//! let it: what it did in that time, the resumed source, which goes on
//! from the dump, does again.)
//!
//! # The end: a duplicate rather than a loss
//!
//! Once the destination has restored (and, for `Lazy`, the last page was
//! served), the source says `Done` and the destination answers `Kept`;
//! only then is the source tree killed. The destination keeps its copy
//! unless the source explicitly aborts: if `Done` is lost (a broken stream,
//! a silent source) it keeps the copy anyway and reports
//! [`DestReport::source_confirmed`] false; if `Kept` is lost the source
//! resumes its copy and says that two copies may now run. Either way the
//! tree is never lost; at worst it runs twice, and both sides say so.
//!
//! # Errors
//!
//! Every error of [`send`] and [`receive`] is an
//! [`Error::Migration`](crate::Error::Migration)
//! whose [`MigrationError`] names the [`Step`] that failed and
//! what became of the source process ([`SourceState`]; on the
//! destination mostly [`SourceState::Unknown`], unless the source said),
//! with the step's own error behind it ([`crate::Error::cause`]).
//!
//! # Limits
//!
//! The destination accepts what [`DestConfig::limits`] allows (file count,
//! sizes, free space above a reserve, the page server's pages included)
//! and, without a [`DestConfig::deadline`], gives up a
//! source that stays silent for the limits' idle timeout (120 s by
//! default) where the stream has timeouts; the whole receive is bounded by
//! [`DestConfig::time_limit`] (one hour by default).
//!
//! # Inside
//!
//! * `config`, `report`: the public settings and results; `cancel`: the
//!   [`Cancel`] token;
//! * `wire`: the control messages and their framing on the stream;
//! * `source`, `dumping`: the source side (the dump on its own thread);
//! * [`hold`]: the held source (a tree stopped through pidfds, resumed
//!   on drop, killed once the destination runs it), public for other
//!   ways of moving a tree (criu-oci's registry route uses it);
//! * `dest`: the destination side;
//! * `connections`: moving established TCP connections and their
//!   service address with the tree (a caller's hook);
//! * `link`: [`Link`], connecting the two hosts (plain TCP, mutual TLS);
//! * `workdir`: where the images live (the caller's directory, or the
//!   crate's own in memory);
//! * `steps`: the strategy seam (public as [`strategy`]): the traits
//!   [`strategy::SourceStrategy`] and [`strategy::DestStrategy`] and the
//!   steps the drivers offer them;
//! * [`strategy`]: the built-in strategies, one file each, each running
//!   its own sequence; a strategy of another crate runs with
//!   [`send_with`] and [`receive_with`] (criu-oci's registry route does).

mod cancel;
mod choice;
mod config;
pub mod connections;
mod dest;
mod dumping;
pub mod hold;
#[cfg(test)]
mod layout;
mod link;
mod report;
mod source;
mod steps;
pub mod strategy;
mod wire;
mod workdir;

pub use crate::error::{MigrationError, SourceState, Step};
pub use crate::transfer::Transport;
pub use cancel::Cancel;
pub use choice::{PreCopyPolicy, Strategy};
pub use config::{DestConfig, SourceConfig, DEFAULT_TIME_LIMIT};
pub use connections::{AddressMove, Connections};
pub use link::{Link, Stream};
pub use report::{DestReport, Phases, SourceReport};

use crate::client::Criu;
use crate::error::Result;

/// Migrates the tree rooted at `pid` to the peer of `stream`, which runs
/// [`receive`], with the built-in strategy `cfg` names. See the module
/// docs for what happens to the source.
pub fn send<S: Transport + ?Sized>(
    criu: &Criu,
    pid: i32,
    stream: &mut S,
    cfg: SourceConfig<'_>,
) -> Result<SourceReport> {
    let mut built_in = strategy::source(&cfg);
    send_with(criu, pid, stream, cfg, built_in.as_mut())
}

/// Migrates the tree rooted at `pid` to the peer of `stream`, which runs
/// [`receive_with`] with the destination side of the same strategy, with
/// `strategy`'s own sequence (see [`strategy`]): the held source, the
/// end and the errors are as with [`send`]. `cfg`'s strategy and the
/// built-in strategies' settings ([`SourceConfig::lazy_timeout`],
/// [`SourceConfig::pre_copy`]) are not used.
pub fn send_with<S: Transport + ?Sized>(
    criu: &Criu,
    pid: i32,
    stream: &mut S,
    cfg: SourceConfig<'_>,
    strategy: &mut dyn strategy::SourceStrategy,
) -> Result<SourceReport> {
    let mut stream = stream;
    source::send(criu, pid, &mut stream, cfg, strategy)
}

/// Receives a tree migrated by [`send`] (with the built-in strategy its
/// hello names) and restores it as a child of this process. On failure,
/// the received images are removed and the source is told, so that it
/// resumes its copy.
pub fn receive<S: Transport + ?Sized>(
    criu: &Criu,
    stream: &mut S,
    cfg: DestConfig<'_>,
) -> Result<DestReport> {
    let mut stream = stream;
    dest::receive(criu, &mut stream, cfg, dest::Choose::BuiltIn)
}

/// Receives a tree migrated by [`send_with`] with `strategy`'s own
/// sequence (the source's hello must name it), as [`receive`] does.
pub fn receive_with<S: Transport + ?Sized>(
    criu: &Criu,
    stream: &mut S,
    cfg: DestConfig<'_>,
    strategy: &mut dyn strategy::DestStrategy,
) -> Result<DestReport> {
    let mut stream = stream;
    dest::receive(criu, &mut stream, cfg, dest::Choose::Given(strategy))
}
