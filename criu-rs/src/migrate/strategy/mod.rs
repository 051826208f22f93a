//! Strategies: how a tree gets to the destination. Each one is a pair of
//! types implementing [`SourceStrategy`] and [`DestStrategy`], whose `run`
//! calls the steps the drivers offer ([`Source`], [`Dest`]) in the
//! strategy's own order, exchanging messages of its own over the stream.
//! The built-in four live in this directory, one file each, and are
//! registered as [`Strategy`] (which
//! [`send`](super::send) and [`receive`](super::receive) run); a strategy
//! of another crate is run with [`send_with`](super::send_with) and
//! [`receive_with`](super::receive_with).
//!
//! # A strategy of your own
//!
//! Stop-and-copy, written outside the crate, with a message of its own
//! telling the destination how many bytes to expect:
//!
//! ```no_run
//! use criu::migrate::strategy::{
//!     Dest, DestStrategy, DumpPlan, Restored, Running, Source, SourceStrategy,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Expect {
//!     bytes: u64,
//! }
//!
//! struct Plain;
//!
//! impl SourceStrategy for Plain {
//!     fn name(&self) -> &str {
//!         "plain"
//!     }
//!
//!     fn run(&mut self, source: &mut Source<'_>) -> criu::Result<Restored> {
//!         // The tree is held from the dump's pre-dump notification on,
//!         // and resumed if anything below fails.
//!         let dump = source.dump(DumpPlan::new())?;
//!         let mut images = source.images_ready(dump)?;
//!         let bytes = images.dump().and_then(|d| d.stats.as_ref()).map_or(0, |s| s.pages_written * 4096);
//!         source.send(&Expect { bytes })?;
//!         source.send_images(&mut images)?;
//!         source.await_restore(images)
//!     }
//! }
//!
//! impl DestStrategy for Plain {
//!     fn name(&self) -> &str {
//!         "plain"
//!     }
//!
//!     fn run(&mut self, dest: &mut Dest<'_>) -> criu::Result<Running> {
//!         let Expect { bytes } = dest.recv()?;
//!         eprintln!("about {bytes} bytes of memory to come");
//!         let received = dest.receive_images()?;
//!         dest.restore(received, |_options| {})
//!     }
//! }
//!
//! # fn main() -> criu::Result<()> {
//! use criu::migrate::{send_with, SourceConfig, Strategy};
//! let mut stream = std::net::TcpStream::connect("10.0.0.2:7000").unwrap();
//! let cfg = SourceConfig::new(Strategy::StopAndCopy); // its strategy is not used
//! let report = send_with(&criu::Criu::new(), 4242, &mut stream, cfg, &mut Plain)?;
//! println!("restored as pid {} there", report.restored_pid);
//! // The destination: criu::migrate::receive_with(&criu, &mut stream, DestConfig::new(), &mut Plain)
//! # Ok(()) }
//! ```

mod lazy;
mod page_server;
mod pre_copy;
mod stop_and_copy;

pub use super::steps::{
    Dest, DestStrategy, Dump, DumpPlan, Images, Received, Restored, Running, Source, SourceStrategy,
};

use std::net::IpAddr;
use std::time::Duration;

use super::choice::Strategy;
use super::config::SourceConfig;
use super::steps::Inbound;
use super::wire;
use crate::error::{Error, InvalidKind, Result, SourceState, Step};
use crate::transfer::SideChannels;

/// Makes a built-in strategy's source side, with its settings from the
/// caller's config.
type MakeSource = fn(&SourceConfig<'_>) -> Box<dyn SourceStrategy>;

/// Runs a built-in strategy's destination side.
type RunDest = fn(&mut Dest<'_>) -> Result<Running>;

/// The registration of the built-in strategies, one arm each: how the
/// source side is made (its settings taken from the caller's config, the
/// driver reads none of them), and how the destination side runs.
fn registered(strategy: Strategy) -> (MakeSource, RunDest) {
    match strategy {
        Strategy::StopAndCopy => (
            |_| Box::new(stop_and_copy::Source),
            |d| stop_and_copy::Dest.run(d),
        ),
        Strategy::PreCopy => (
            |c| Box::new(pre_copy::Source::new(c.pre_copy)),
            |d| pre_copy::Dest.run(d),
        ),
        Strategy::PageServer => (
            |_| Box::new(page_server::PageServer),
            |d| {
                let route = Route::of_dest(d);
                page_server::Dest::new(d.config(), route, Strategy::PageServer, d.memory())?.run(d)
            },
        ),
        Strategy::Lazy => (
            |c| Box::new(lazy::Lazy::new(c.lazy_timeout)),
            |d| lazy::Dest::new(d.config(), Route::of_dest(d)).run(d),
        ),
    }
}

/// The built-in strategy `cfg` names, source side.
pub(super) fn source(cfg: &SourceConfig<'_>) -> Box<dyn SourceStrategy> {
    (registered(cfg.strategy).0)(cfg)
}

/// The built-in strategy named `name` in the source's hello, destination
/// side.
pub(super) fn dest(name: &str) -> Result<Box<dyn DestStrategy>> {
    let strategy: Strategy = name.parse().map_err(|e: String| {
        wire::failed(
            Step::Handshake,
            SourceState::Unknown,
            format!("{e}: receive it with criu::migrate::receive_with and its own strategy"),
            None,
        )
    })?;
    Ok(Box::new(BuiltIn(strategy)))
}

/// A built-in strategy's destination side.
struct BuiltIn(Strategy);

impl DestStrategy for BuiltIn {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn run(&mut self, dest: &mut Dest<'_>) -> Result<Running> {
        (registered(self.0).1)(dest)
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
enum Route {
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
    /// The source's route: the stream's side channels if it carries
    /// CRIU's connections itself, else CRIU's own TCP between the named
    /// addresses, or the stream's where none are named.
    fn of_source(source: &mut Source<'_>) -> Result<Route> {
        Ok(match source.side_channels() {
            Some(channels) => Route::Carried(channels),
            None => {
                let (local, peer) = source.criu_addresses()?;
                Route::Direct {
                    local: Some(local),
                    peer: Some(peer),
                }
            }
        })
    }

    /// The destination's route, likewise.
    fn of_dest(dest: &Dest<'_>) -> Route {
        match dest.side_channels() {
            Some(channels) => Route::Carried(channels),
            None => Route::Direct {
                local: dest.criu_address(),
                peer: dest.criu_peer(),
            },
        }
    }
}

/// The address a strategy with connections of CRIU's own cannot do
/// without: a failure of the handshake.
fn need<T>(addr: Option<T>, strategy: Strategy) -> Result<T> {
    addr.ok_or_else(|| {
        let e = Error::invalid(
            None,
            InvalidKind::Missing,
            format!(
                "the {strategy} strategy needs CRIU's own connections between the hosts, and \
                 the stream is not TCP and carries none itself (Transport::side_channels): \
                 name the addresses (SourceConfig::criu_addresses, DestConfig::criu_address)"
            ),
        );
        wire::at_step(e, Step::Handshake, SourceState::Unknown, || {
            "the source's hello failed; nothing was received".into()
        })
    })
}
