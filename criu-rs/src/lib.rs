//! Safe, typed checkpoint/restore of Linux processes with
//! [CRIU](https://criu.org), over libcriu.
//!
//! ```no_run
//! use criu::{Criu, ImagesDir, Options};
//!
//! # fn main() -> criu::Result<()> {
//! let criu = Criu::new();
//! let images = ImagesDir::create("/tmp/checkpoint")?;
//!
//! // Freeze process 1234 and its children, write their state, stop them.
//! let dump = criu.dump(
//!     Options::new()
//!         .pid(1234)
//!         .images_dir(&images)
//!         .log_file("dump.log"),
//! )?;
//! if let Some(stats) = dump.stats {
//!     println!("stopped for {:?}, {} pages", stats.stopped_time(), stats.pages_written);
//! }
//!
//! // Bring them back (same pids), detached from this process.
//! let restored = criu.restore(Options::new().images_dir(&images).log_file("restore.log"))?;
//! println!("restored, root pid {}", restored.pid);
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! * [`Criu`]: the client and its operations ([`Criu::dump`],
//!   [`Criu::pre_dump`], [`Criu::dump_iters`], [`Criu::restore`],
//!   [`Criu::restore_child`], [`Criu::check`], [`Criu::version`],
//!   [`Criu::feature_check`]).
//! * [`Options`]: every libcriu setter, typed, plus CLI-only options.
//! * [`Notification`] / [`Event`]: CRIU's notifications as a closure.
//! * [`ImagesDir`]: a checkpoint's directory.
//! * [`DumpReport`], [`RestoreReport`], [`Stats`]: times and CRIU's statistics.
//! * [`Error`]: what went wrong, where, and what CRIU's log said.
//! * [`migrate`], [`transfer`], [`tls`]: moving a tree to another host,
//!   over any stream, or over mutual TLS.
//!
//! # Concurrency
//!
//! libcriu keeps process-global state that every request writes (the errno
//! it reports, the received orphan-pts fd). The crate therefore runs one
//! libcriu request at a time per process: calls from several threads are
//! safe and all complete, but they take turns. Two dumps of the same pid at
//! once are refused ([`InvalidKind::Busy`]) rather than queued, and a
//! request cannot be started from inside a notification closure.
//!
//! The one exception is a lazy dump ([`Options::lazy_pages`]): it blocks
//! until every page has been served, perhaps to a lazy restore made by the
//! same process, so it runs beside the others. While one runs, the errno in
//! another request's [`Error::Refused`] may be off (libcriu's
//! `saved_errno` is shared); CRIU's log lines in the error are per request
//! and stay right.
//!
//! # Security
//!
//! * CRIU trusts its images: restoring images from an untrusted source
//!   means running code of the source's choosing, as root.
//! * Images hold process memory in clear. [`ImagesDir::create`] makes
//!   directories 0700; keep them so.
//! * [`Options::config_file`] is read by CRIU like a command line: never
//!   build it from untrusted input. The CLI-only options the crate passes
//!   that way are validated (no spaces, quotes or comments).
//! * The image stream of [`transfer`] and [`migrate`] protects integrity
//!   against accidents (a CRC-32 over each file's header and contents,
//!   names confined to the target directory), not against an attacker.
//!   Where the network is not trusted, migrate over `tls::TlsStream`
//!   (feature `tls`): mutual authentication against a CA of your own
//!   before any byte of the migration, TLS 1.3 for the stream, and CRIU's
//!   own TLS for its page-server and lazy-pages connections, which would
//!   otherwise carry memory in clear. Over another secure stream (SSH),
//!   name the files for CRIU's connections
//!   ([`migrate::SourceConfig::criu_tls`]). An authenticated peer is still
//!   trusted with root: see docs/security.md.
//!
//! RELIABILITY.md in the repository lists the bad inputs and faults tried,
//! with their outcomes.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

// Layers, lowest first. A module uses only modules of lower layers (no
// import circles); the public API is re-exported below.
//
//  1. `criu_sys` (the raw bindings), `error` (what went wrong), `tree`
//     (process trees from /proc), `pidfd` (signals that cannot hit a
//     reused pid), `credentials` (the PEM files of a TLS migration, which
//     options, daemons and transports hand to CRIU).
//  2. `raw` (the owned `criu_opts` handle, the return-code helper),
//     `framing` (CRIU's image framing, read through `criu_image`, errors
//     naming the file), `version`.
//  3. `stats` (CRIU's statistics files).
//  4. `images` (checkpoint directories, safe reads of their files),
//     `report`, `child` (a restored child, reaped on drop).
//  5. `verify` (a checkpoint checked before a restore), `notify` (events,
//     the closure types and their C trampolines).
//  6. `options` (what a request carries; writes it into a `raw` handle).
//  7. `spawn` (CRIU processes the crate starts: an fd handed over, a
//     network namespace, reaped on drop), `deadline` (the watchdog).
//  8. `request` (one libcriu call: prepare, connect, call, interpret).
//  9. `client` (`Criu`: the service to use and the operations).
// 10. `daemon` (page server, lazy-pages daemon, `criu service`).
// 11. `transfer` (the image stream), `tls` (`TlsStream`, a transport),
//     `migrate`.
//
// One dump: `Criu::dump` checks the pid and the images directory and marks
// the pid busy (client); `Request::prepare` validates the `Options` and
// writes them into a fresh handle plus, for CLI-only options, a private
// config file (request, options, raw); `Criu::choose_service` picks libcriu's
// own `criu swrk`, a service socket, or a `criu swrk` the crate spawns so a
// deadline can kill it (client, spawn); `Request::call` installs the
// notification closure (notify), takes the global libcriu lock, starts the
// watchdog (deadline) and calls `criu_local_dump`; `Finished::interpret`
// turns the result into `Ok` or a typed `Error` quoting CRIU's log, and the
// client reads `stats-dump` into the `DumpReport` (stats, report). A restore
// takes the same path after `verify` has checked the images.

mod child;
mod client;
mod credentials;
mod daemon;
mod deadline;
mod error;
mod framing;
mod images;
#[cfg(feature = "migrate")]
#[cfg_attr(docsrs, doc(cfg(feature = "migrate")))]
pub mod migrate;
mod notify;
mod options;
mod pidfd;
mod raw;
mod report;
mod request;
mod spawn;
mod stats;
pub mod tls;
#[cfg(feature = "migrate")]
#[cfg_attr(docsrs, doc(cfg(feature = "migrate")))]
pub mod transfer;
mod tree;
mod verify;
mod version;

/// Decoding of checkpoint images (the `criu-image` crate, which this crate
/// also reads CRIU's statistics and image headers through).
pub use criu_image as image;
/// The raw bindings, for what this crate does not wrap.
pub use criu_sys as sys;

pub use child::RestoredChild;
pub use client::Criu;
pub use daemon::{Daemon, DaemonConfig, Service, ServiceClient};
pub use error::{
    Context, Error, InvalidKind, MigrationError, Operation, Result, SourceState, Step, TlsKind,
    TransferKind,
};
pub use images::ImagesDir;
pub use notify::{Event, Iteration, Notification};
pub use options::{
    CgroupMode, CpuCap, FileValidation, LogLevel, Namespace, NetworkLock, Options, PreDumpMode,
};
pub use report::{DumpReport, RestoreReport};
pub use stats::{DumpStats, RestoreStats, Stats};
pub use version::{Features, MemTrackMethod, Version};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
