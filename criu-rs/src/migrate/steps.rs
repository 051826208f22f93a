//! The strategy seam: the two traits a strategy implements, and the steps
//! the drivers offer it. Public as `criu::migrate::strategy`.
//!
//! A strategy's [`SourceStrategy::run`] calls the source's steps in its
//! own order, each a method of [`Source`]: its own messages
//! ([`Source::send`], [`Source::recv`]), directories
//! ([`Source::send_dir`]), the dump with the source held
//! ([`Source::dump`], a [`Dump`]), the images complete
//! ([`Source::stream_images`] while the dump writes them, or
//! [`Source::images_ready`], or [`Source::images_ready_meanwhile`] with
//! messages of the strategy's own sent while it waits: an [`Images`]), the images sent
//! ([`Source::send_images`]) and the destination's restore
//! ([`Source::await_restore`], the [`Restored`] that `run` returns). Each
//! step takes the value the one before it returned, so a strategy cannot
//! wait for a restore before it dumped, and only the driver can make a
//! [`Restored`]. [`DestStrategy::run`] likewise receives
//! ([`Dest::recv`], [`Dest::receive_dir`], [`Dest::receive_images`]) and
//! restores ([`Dest::restore`], a [`Running`]).
//!
//! What every strategy shares stays with the drivers: the hello, the held
//! source (resumed on every failure, killed only once the destination
//! keeps its copy), the end's `Done`/`Kept`, cancellation, deadlines, the
//! destination's clean-up, and the typed errors: an error a strategy
//! returns that is not a [`MigrationError`](crate::MigrationError) already
//! becomes one at the step the strategy was in ([`Source::step`],
//! [`Dest::step`]), with what became of the source, and the peer is told.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::thread::Scope;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cancel::{Cancel, Registered};
use super::config::{Customize, DestConfig};
use super::connections::{dump_failed, Connections, ServiceMove};
use super::dumping::{DumpJob, DumpOptions, Dumping};
use super::hold::{self, HeldTree, Slot};
use super::wire::{self, failed, Msg};
use crate::child::RestoredChild;
use crate::client::Criu;
use crate::credentials::TlsFiles;
use crate::daemon::DaemonConfig;
use crate::error::{Error, InvalidKind, Result, SourceState, Step};
use crate::images::ImagesDir;
use crate::options::Options;
use crate::report::{DumpReport, RestoreReport};
use crate::transfer::{self, Growing, Limits, SideChannels, TransferStats, Transport};

/// The source's part of a strategy: its sequence, from the hello to the
/// destination's restore. See the [module docs](crate::migrate::strategy).
pub trait SourceStrategy {
    /// The strategy's name, sent in the hello: the destination runs the
    /// [`DestStrategy`] of that name.
    fn name(&self) -> &str;

    /// Runs the source's steps, in the strategy's order, until the
    /// destination has restored the tree.
    fn run(&mut self, source: &mut Source<'_>) -> Result<Restored>;
}

/// The destination's part of a strategy: from the hello to the restored
/// tree. See the [module docs](crate::migrate::strategy).
pub trait DestStrategy {
    /// The strategy's name: the source's hello must name it.
    fn name(&self) -> &str;

    /// Runs the destination's steps, in the strategy's order, until the
    /// restored tree runs here (and has what it needs to run on).
    fn run(&mut self, dest: &mut Dest<'_>) -> Result<Running>;
}

/// Starts a dump on the driver's thread scope.
pub(super) trait Spawn<'s> {
    fn start(&'s self, job: DumpJob<'s>) -> Dumping<'s>;
}

impl<'s, 'e> Spawn<'s> for Scope<'s, 'e> {
    fn start(&'s self, job: DumpJob<'s>) -> Dumping<'s> {
        Dumping::start(self, job)
    }
}

/// What the strategy asks of its dump (see [`Source::dump`]).
pub struct DumpPlan<'s> {
    pub(super) options: Option<DumpOptions<'s>>,
    pub(super) serve: Option<(Duration, Box<dyn Fn() + 's>)>,
    pub(super) criu_tls: bool,
}

impl Default for DumpPlan<'_> {
    fn default() -> Self {
        DumpPlan::new()
    }
}

impl<'s> DumpPlan<'s> {
    /// A plain dump: the driver's options (pid, images directory, log,
    /// `leave_running`, the hold's notification handler, the caller's
    /// customization, the deadline, CRIU's TLS when the migration has
    /// TLS files), nothing of the strategy's.
    pub fn new() -> DumpPlan<'s> {
        DumpPlan {
            options: None,
            serve: None,
            criu_tls: true,
        }
    }

    /// Adds the strategy's own options (set after the driver's).
    pub fn options(mut self, f: impl Fn(&mut Options<'_>) + Send + Sync + 's) -> Self {
        self.options = Some(Box::new(f));
        self
    }

    /// The dump goes on serving memory after its images are written
    /// (lazy pages): the images are complete at CRIU's status-ready, and
    /// [`Source::await_restore`] waits up to `timeout` for the dump's end
    /// once the destination restored. `unblock` ends a dump that serves a
    /// destination which will not come (or stalls).
    pub fn serves_pages(mut self, timeout: Duration, unblock: impl Fn() + 's) -> Self {
        self.serve = Some((timeout, Box::new(unblock)));
        self
    }

    /// The strategy carries CRIU's own connection through TLS itself: the
    /// driver does not hand CRIU the migration's TLS files.
    pub fn without_criu_tls(mut self) -> Self {
        self.criu_tls = false;
        self
    }
}

/// The source's steps, handed to [`SourceStrategy::run`].
pub struct Source<'s> {
    pub(super) criu: &'s Criu,
    pub(super) pid: i32,
    pub(super) name: String,
    pub(super) stream: &'s mut dyn Transport,
    pub(super) images: &'s ImagesDir,
    pub(super) customize: Option<&'s Customize<'s>>,
    pub(super) deadline: Option<Duration>,
    pub(super) cancel: &'s Cancel,
    pub(super) criu_addresses: Option<(IpAddr, IpAddr)>,
    pub(super) criu_tls: Option<&'s TlsFiles>,
    pub(super) service: Option<(&'s Connections<'s>, &'s ServiceMove<'s>)>,
    pub(super) progress: Option<Box<dyn FnMut(u64, u64) + 's>>,
    pub(super) spawn: &'s dyn Spawn<'s>,
    pub(super) woken: Option<Registered<'s>>,
    pub(super) step: Step,
    pub(super) slot: Slot,
    /// The held tree, once the images are complete; the driver's to kill
    /// or (dropped) resume.
    pub(super) held: Option<HeldTree>,
    /// Whether the destination was told of the failure already.
    pub(super) told: bool,
    /// Whether sent pages images may be freed: the images directory is
    /// the crate's own (in memory, removed at the end), not one the
    /// caller chose and keeps.
    pub(super) free_images: bool,
}

/// The dump, running on a thread of its own (see [`Source::dump`]).
/// Dropped (a failure), it is unblocked and waited for.
pub struct Dump<'s> {
    dumping: Dumping<'s>,
    serves: bool,
}

impl<'s> Dump<'s> {
    /// The directory the dump is writing (complete only once
    /// [`Source::images_ready`] or [`Source::stream_images`] says so):
    /// for a strategy that follows the images as they are written.
    pub fn dir(&self) -> &'s ImagesDir {
        self.dumping.images()
    }
}

/// The dump's images, complete, with the source held (see
/// [`Source::stream_images`], [`Source::images_ready`]).
pub struct Images<'s> {
    dumping: Dumping<'s>,
    early: Option<DumpReport>,
    at: Instant,
    /// Sent while the dump wrote them, and how long that went on after.
    streamed: Option<(TransferStats, Duration)>,
    sent: Option<TransferStats>,
    serve_timeout: Duration,
}

impl<'s> Images<'s> {
    /// The images directory.
    pub fn dir(&self) -> &'s ImagesDir {
        self.dumping.images()
    }

    /// The dump's report, if the dump is over (a dump that serves pages
    /// is not, until [`Source::await_restore`]).
    pub fn dump(&self) -> Option<&DumpReport> {
        self.early.as_ref()
    }
}

/// The destination restored the tree: what [`SourceStrategy::run`]
/// returns (only [`Source::await_restore`] makes one).
#[derive(Debug)]
pub struct Restored {
    pub(super) dump: DumpReport,
    pub(super) pid: i32,
    pub(super) wall: Duration,
    pub(super) restore_time_us: Option<u64>,
    /// When the source heard of it.
    pub(super) at: Instant,
    pub(super) images_at: Instant,
    pub(super) transfer: TransferStats,
    /// What the transfer took after the images were complete.
    pub(super) transfer_tail: Duration,
    pub(super) beside: u64,
}

impl Restored {
    /// The dump's report.
    pub fn dump(&self) -> &DumpReport {
        &self.dump
    }

    /// The restored root's pid on the destination.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Records the bytes of memory the strategy carried beside the stream
    /// (a page server's pages, a registry's layer), reported as
    /// [`SourceReport::page_server_bytes`](crate::migrate::SourceReport::page_server_bytes).
    pub fn carried_beside(mut self, bytes: u64) -> Restored {
        self.beside = bytes;
        self
    }
}

/// The error of a strategy that needs CRIU's own connections over a stream
/// without IP addresses.
fn no_criu_addresses(strategy: &str) -> Error {
    Error::invalid(
        None,
        InvalidKind::Missing,
        format!(
            "the {strategy} strategy needs CRIU's own connections between the hosts, and the \
             stream is not TCP and carries none itself (Transport::side_channels): name the \
             addresses (SourceConfig::criu_addresses, DestConfig::criu_address)"
        ),
    )
}

/// How long to wait before looking at the images directory again while
/// the dump writes it and nothing new was there.
const STREAM_POLL: Duration = Duration::from_millis(1);

/// CRIU's memory pages images, the only ones that grow while the dump
/// runs (`pages-<n>.img`, written front to back).
fn is_pages_image(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

fn images_not_sent(e: Error) -> Error {
    failed(
        Step::Transfer,
        SourceState::Resumed,
        "sending the images failed; the source process was resumed",
        Some(e),
    )
}

impl<'s> Source<'s> {
    /// The CRIU this migration uses.
    pub fn criu(&self) -> &'s Criu {
        self.criu
    }

    /// The source tree's root pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The source's work directory (the images directory's parent): a
    /// strategy's own directories go here.
    pub fn work_dir(&self) -> &'s Path {
        let p = self.images.path();
        p.parent().unwrap_or(p)
    }

    /// The deadline of each wait and each CRIU call, if the caller set one.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The migration's cancel token.
    pub fn cancel(&self) -> &'s Cancel {
        self.cancel
    }

    /// Adds the caller's own dump options ([`SourceConfig::customize`](
    /// crate::migrate::SourceConfig::customize)) to `o`, for a CRIU call
    /// of the strategy's own (a pre-dump, say).
    pub fn caller_options(&self, o: &mut Options<'_>) {
        if let Some(c) = self.customize {
            c(o);
        }
    }

    /// This host's and the destination's addresses for CRIU's own
    /// connections: the caller's, or the stream's two ends.
    pub fn criu_addresses(&mut self) -> Result<(IpAddr, IpAddr)> {
        if let Some(a) = self.criu_addresses {
            return Ok(a);
        }
        match self.stream.ip_addresses().map_err(wire::no_addresses)? {
            Some(a) => {
                self.criu_addresses = Some(a);
                Ok(a)
            }
            None => Err(no_criu_addresses(&self.name)),
        }
    }

    /// The TLS files that secure CRIU's own connections, if the migration
    /// has some.
    pub fn criu_tls(&self) -> Option<&'s TlsFiles> {
        self.criu_tls
    }

    /// Declares the step the strategy is in: an error it returns that is
    /// not typed yet is reported at that step.
    pub fn step(&mut self, step: Step) {
        self.step = step;
    }

    /// What became of the source so far, as an error now would leave it.
    fn state(&self) -> SourceState {
        match (self.step, self.held.is_some() || self.slot.is_held()) {
            (_, true) => SourceState::Resumed,
            (Step::Handshake, false) => SourceState::Untouched,
            _ => SourceState::Resumed,
        }
    }

    /// Types `e` at the current step, tells the destination (once), and
    /// returns it.
    pub(super) fn fail(&mut self, e: Error) -> Error {
        let (step, state) = (self.step, self.state());
        let e = wire::at_step(e, step, state, || match state {
            SourceState::Untouched => {
                format!(
                    "the migration failed at its {step} step; the source process was not touched"
                )
            }
            _ => format!("the migration failed at its {step} step; the source process was resumed"),
        });
        if !self.told {
            wire::tell_failure(self.stream, &e);
            self.told = true;
        }
        e
    }

    /// The stream, for the crate's own strategies.
    pub(crate) fn stream(&mut self) -> &mut dyn Transport {
        self.stream
    }

    /// The stream's side channels, if it carries CRIU's own connections
    /// itself (see [`Transport::side_channels`]).
    pub(crate) fn side_channels(&self) -> Option<Box<dyn SideChannels>> {
        self.stream.side_channels()
    }

    /// Sends a message of the strategy's own (framed on the stream, opaque
    /// to the driver).
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        wire::send_own(self.stream, msg).map_err(|e| self.fail(e))
    }

    /// Receives a message of the strategy's own. The destination's
    /// failure, if it sent one instead, is the error (at the current
    /// step).
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        let (step, state) = (self.step, self.state());
        let mut theirs = false;
        let r = wire::recv_own(self.stream, |message, _, _| {
            theirs = true;
            failed(
                step,
                state,
                format!("the destination failed: {message}"),
                None,
            )
        });
        r.map_err(|e| {
            // The destination's own failure: it knows already.
            self.told |= theirs;
            self.fail(e)
        })
    }

    /// Sends the directory `dir` (its regular files) over the stream; the
    /// destination receives it with [`Dest::receive_dir`].
    pub fn send_dir(&mut self, dir: &Path) -> Result<TransferStats> {
        transfer::send_files(&mut &mut *self.stream, dir, None).map_err(|e| self.fail(e))
    }

    /// Sends `dir` as [`Source::send_dir`] does, then frees its pages
    /// images (punched out, their sizes kept) unless the images live in a
    /// directory the caller chose and keeps. For a pre-dump's pass: it
    /// went as copies, so the stream holds none of its pages, and the
    /// dumps that take it as parent read its pagemap, never its pages
    /// (CRIU's own `--auto-dedup` punches parents' pages likewise).
    pub(super) fn send_dir_then_free_pages(&mut self, dir: &Path) -> Result<TransferStats> {
        let sent = self.send_dir(dir)?;
        if self.free_images {
            let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
            for entry in entries {
                if entry.file_name().to_str().is_some_and(is_pages_image) {
                    transfer::free_file(&entry.path());
                }
            }
        }
        Ok(sent)
    }

    /// Starts the dump of the tree into the images directory, on a thread
    /// of its own, as `plan` says. The tree is stopped when CRIU is about
    /// to freeze it and held from then on: resumed if anything fails.
    pub fn dump(&mut self, plan: DumpPlan<'s>) -> Result<Dump<'s>> {
        self.step = Step::Dump;
        if let Err(e) = wire::check(self.cancel, Step::Dump, SourceState::Untouched) {
            return Err(self.fail(e));
        }
        let serves = plan.serve.is_some();
        let (timeout, unblock) = match plan.serve {
            Some((t, u)) => (t, Some(u)),
            None => (Duration::ZERO, None),
        };
        let job = DumpJob {
            criu: self.criu,
            pid: self.pid,
            images: self.images,
            customize: self.customize,
            deadline: self.deadline,
            options: plan.options,
            serves,
            slot: self.slot.clone(),
            criu_tls: self.criu_tls.filter(|_| plan.criu_tls),
            service: self.service,
            cancel: self.cancel.clone(),
        };
        let mut dumping = self.spawn.start(job);
        dumping.set_serving(unblock, timeout);
        Ok(Dump { dumping, serves })
    }

    /// The error of a dump that failed: told, and typed with whether the
    /// tree had been stopped.
    fn dump_failed(&mut self, e: Error) -> Error {
        let state = match self.slot.is_held() {
            true => SourceState::Resumed,
            false => SourceState::Untouched,
        };
        let e = match self.service {
            Some((_, s)) => s.dump_failed(e, state),
            None => dump_failed(e, state),
        };
        self.fail(e)
    }

    /// Sends the images while the dump writes them (the pages as they
    /// grow, the rest when the dump ends), until they are complete. In
    /// the crate's own images directory (no
    /// [`SourceConfig::work_dir`](crate::migrate::SourceConfig::work_dir))
    /// the pages images are freed as they go: from then on
    /// [`Images::dir`] holds them at their sizes but without their
    /// bytes, and the source has no copy of the tree's memory but the
    /// held tree's own.
    pub fn stream_images(&mut self, dump: Dump<'s>) -> Result<Images<'s>> {
        let mut dumping = dump.dumping;
        let mut progress = self.progress.take();
        // Once streamed, the source's pages images are gone (punched out,
        // their sizes kept): nothing here reads them again. The end check
        // (`Growing::finish`) compares inodes and sizes, not bytes; the
        // dump's report comes from `stats-dump`, not a pages image; a
        // failure resumes the held tree, which never needed its images.
        // Without this their memory stays in use beside the process until
        // the migration ends, and the destination's restore, allocating
        // as much again, runs several times slower (BENCHMARKS.md, "Where
        // stop-and-copy's restore time goes"). A directory the caller
        // chose (`SourceConfig::work_dir`) is left whole, as promised.
        let mut growing = Growing::new(
            &mut *self.stream,
            dumping.images().path(),
            is_pages_image,
            progress.as_deref_mut().map(|p| p as _),
        )
        .free_sent(self.free_images);
        let mut ended = None;
        let cancel = self.cancel;
        let followed = growing.follow(
            || {
                ended = dumping.try_images_ready();
                ended.is_some() || cancel.is_cancelled()
            },
            STREAM_POLL,
        );
        let early = match (followed, ended) {
            (Ok(()), Some(Ok(early))) => early,
            (Ok(()), Some(Err(e))) => {
                drop(growing);
                return Err(self.dump_failed(e));
            }
            (Err(e), _) => {
                drop(growing);
                self.step = Step::Transfer;
                return Err(self.fail(images_not_sent(e)));
            }
            // Cancelled: the dump is refused at its next notification.
            (Ok(()), None) => {
                drop(growing);
                self.step = Step::Transfer;
                let e = wire::cancelled(Step::Transfer, SourceState::Resumed);
                return Err(self.fail(images_not_sent(e)));
            }
        };
        // The dump has ended and the tree is stopped: the service address
        // moves now, before the stream's end lets the destination restore
        // (a restore of established connections binds that address), as
        // it moves before `send_images` for a strategy that waits.
        if let Some((_, s)) = self.service {
            if let Err(e) = s.move_to_dest() {
                drop(growing);
                return Err(self.fail(address_move_failed(e)));
            }
        }
        let at = Instant::now();
        let sent = growing.finish();
        let sent = match sent {
            Ok(s) => s,
            Err(e) => {
                self.step = Step::Transfer;
                return Err(self.fail(images_not_sent(e)));
            }
        };
        let streamed = Some((sent, at.elapsed()));
        self.complete(dumping, early, at, streamed, dump.serves)
    }

    /// Waits until the dump's images are complete (the dump's end, or
    /// CRIU's status-ready for a dump that serves pages).
    pub fn images_ready(&mut self, dump: Dump<'s>) -> Result<Images<'s>> {
        let mut dumping = dump.dumping;
        let early = match dumping.images_ready() {
            Ok(early) => early,
            Err(e) => return Err(self.dump_failed(e)),
        };
        self.complete(dumping, early, Instant::now(), None, dump.serves)
    }

    /// Waits as [`Source::images_ready`] does, calling `meanwhile` with
    /// this source at least every `every` while the dump runs: for a
    /// strategy that tells the destination of its own progress (its
    /// messages, [`Source::send`]) while CRIU still writes, such as the
    /// parts of the images it has put somewhere already. An error of
    /// `meanwhile` fails the migration: the dump is abandoned and the
    /// tree resumed.
    pub fn images_ready_meanwhile(
        &mut self,
        dump: Dump<'s>,
        every: Duration,
        mut meanwhile: impl FnMut(&mut Source<'s>) -> Result<()>,
    ) -> Result<Images<'s>> {
        let serves = dump.serves;
        let mut dumping = dump.dumping;
        let early = loop {
            if let Some(ready) = dumping.images_ready_within(every) {
                break ready;
            }
            if let Err(e) = meanwhile(self) {
                // Dropped, the dump is unblocked and waited for.
                drop(dumping);
                return Err(self.fail(e));
            }
        };
        let early = match early {
            Ok(early) => early,
            Err(e) => return Err(self.dump_failed(e)),
        };
        self.complete(dumping, early, Instant::now(), None, serves)
    }

    /// The images are complete: the tree is held here from now on, and
    /// the service address (if any) moves to the destination.
    fn complete(
        &mut self,
        dumping: Dumping<'s>,
        early: Option<DumpReport>,
        at: Instant,
        streamed: Option<(TransferStats, Duration)>,
        serves: bool,
    ) -> Result<Images<'s>> {
        let Some(held) = self.slot.take() else {
            return Err(self.fail(hold::never_stopped()));
        };
        self.held = Some(held);
        self.step = Step::Transfer;
        // A streamed dump's address moved before the stream's end.
        if let (Some((_, s)), None) = (self.service, &streamed) {
            if let Err(e) = s.move_to_dest() {
                return Err(self.fail(address_move_failed(e)));
            }
        }
        let serve_timeout = match serves {
            true => dumping.serve_timeout(),
            false => Duration::ZERO,
        };
        Ok(Images {
            dumping,
            early,
            at,
            streamed,
            sent: None,
            serve_timeout,
        })
    }

    /// Sends the complete images over the stream (unless
    /// [`Source::stream_images`] sent them already); the destination
    /// receives them with [`Dest::receive_images`].
    pub fn send_images(&mut self, images: &mut Images<'s>) -> Result<()> {
        if images.streamed.is_some() || images.sent.is_some() {
            return Ok(());
        }
        self.step = Step::Transfer;
        if let Err(e) = wire::check(self.cancel, Step::Transfer, SourceState::Resumed) {
            return Err(self.fail(images_not_sent(e)));
        }
        let mut progress = self.progress.take();
        let sent = transfer::send_files(
            &mut &mut *self.stream,
            images.dir().path(),
            progress.as_deref_mut().map(|p| p as _),
        );
        match sent {
            Ok(s) => {
                images.sent = Some(s);
                Ok(())
            }
            Err(e) => Err(self.fail(images_not_sent(e))),
        }
    }

    /// Waits for the destination's restore; then, for a dump that serves
    /// pages, for the dump's end (the destination has every page).
    pub fn await_restore(&mut self, images: Images<'s>) -> Result<Restored> {
        self.step = Step::Restore;
        let Images {
            dumping,
            early,
            at: images_at,
            streamed,
            sent,
            serve_timeout,
        } = images;
        let (transfer, transfer_tail) = match (streamed, sent) {
            (Some((s, tail)), _) => (s, tail),
            (None, Some(s)) => (s, s.elapsed),
            (None, None) => (TransferStats::default(), Duration::ZERO),
        };
        let (pid, wall, restore_time_us) = match wire::await_restore(self.stream) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e)),
        };
        let at = Instant::now();
        if early.is_some() {
            self.woken = None;
        }
        self.step = Step::Connections;
        if let Some((_, s)) = self.service {
            if let Err(e) = s.announce() {
                let e = wire::at_step(e, Step::Connections, SourceState::Resumed, || {
                    "announcing the service address on the destination failed; the address was \
                     moved back and the source process was resumed"
                        .into()
                });
                return Err(self.fail(e));
            }
        }
        self.step = Step::LazyPages;
        let dump = match dumping.finish(early, serve_timeout, self.cancel) {
            Ok(d) => d,
            Err(e) => return Err(self.fail(e)),
        };
        self.woken = None;
        self.step = Step::Confirm;
        Ok(Restored {
            dump,
            pid,
            wall,
            restore_time_us,
            at,
            images_at,
            transfer,
            transfer_tail,
            beside: 0,
        })
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

/// Where a crate's own strategy receives: the stream, the destination's
/// work directory, the path the images must end up at, what the sender
/// may send, and the record of what this receive created.
pub(crate) struct Inbound<'a> {
    pub(crate) stream: &'a mut dyn Transport,
    pub(crate) work_dir: &'a Path,
    pub(crate) images: &'a Path,
    pub(crate) limits: &'a Limits,
    created: &'a mut Created,
}

impl Inbound<'_> {
    /// Receives a directory sent with `transfer::send_dir` into `target`
    /// (which must not exist), and records it as created here.
    pub(crate) fn receive_dir(&mut self, target: &Path) -> Result<TransferStats> {
        let t = wire::receive_images(self.stream, target, self.limits)?;
        self.created.add(target);
        Ok(t)
    }

    /// Creates the images directory, recorded as created here.
    pub(crate) fn create_images(&mut self) -> Result<ImagesDir> {
        let images = ImagesDir::create(self.images)?;
        self.created.add(self.images);
        Ok(images)
    }
}

/// Images that arrived on the destination, ready to restore.
#[derive(Debug)]
pub struct Received {
    pub(crate) images: ImagesDir,
    pub(crate) transfer: TransferStats,
    pub(crate) criu_work: Option<ImagesDir>,
}

impl Received {
    /// `images`, which arrived as `transfer` says.
    pub fn new(images: ImagesDir, transfer: TransferStats) -> Received {
        Received {
            images,
            transfer,
            criu_work: None,
        }
    }

    /// CRIU's log and statistics of the restore go to `dir` rather than
    /// into the images directory (images from elsewhere may hold a file
    /// under the log's name).
    pub fn criu_work_dir(mut self, dir: ImagesDir) -> Received {
        self.criu_work = Some(dir);
        self
    }

    /// The images.
    pub fn images(&self) -> &ImagesDir {
        &self.images
    }
}

/// The tree restored here, running: what [`DestStrategy::run`] returns
/// (only [`Dest::restore`] makes one).
#[derive(Debug)]
pub struct Running {
    pub(super) child: RestoredChild,
    pub(super) restore: RestoreReport,
    pub(super) transfer: TransferStats,
}

impl Running {
    /// The restored root's pid.
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }
}

/// The destination's steps, handed to [`DestStrategy::run`].
pub struct Dest<'s> {
    pub(super) criu: &'s Criu,
    pub(super) stream: &'s mut dyn Transport,
    pub(super) cfg: &'s DestConfig<'s>,
    pub(super) work_dir: &'s Path,
    pub(super) images: PathBuf,
    pub(super) created: &'s mut Created,
    pub(super) step: &'s mut Step,
    pub(super) memory: Option<u64>,
    pub(super) local: Option<IpAddr>,
    pub(super) peer: Option<IpAddr>,
    /// The driver's restore.
    pub(super) restore: RestoreFn,
}

/// The destination driver's restore: the tree from the images, with the
/// caller's options and then the strategy's, continued.
pub(super) type RestoreFn = fn(
    &Criu,
    &ImagesDir,
    Option<&ImagesDir>,
    &DestConfig<'_>,
    &dyn Fn(&mut Options<'_>),
) -> Result<(RestoredChild, RestoreReport)>;

impl<'s> Dest<'s> {
    /// The destination's work directory.
    pub fn work_dir(&self) -> &'s Path {
        self.work_dir
    }

    /// Where the images to restore belong (`work_dir/images`; it does not
    /// exist yet).
    pub fn images_path(&self) -> &Path {
        &self.images
    }

    /// What the source may send.
    pub fn limits(&self) -> &'s Limits {
        &self.cfg.limits
    }

    /// The source's estimate of its tree's memory, if it sent one.
    pub fn memory(&self) -> Option<u64> {
        self.memory
    }

    /// The migration's cancel token (cancelled too when the receive's
    /// time limit passes).
    pub fn cancel(&self) -> &'s Cancel {
        &self.cfg.cancel
    }

    /// How the strategy's CRIU daemons (page server, lazy pages) are
    /// started.
    pub fn daemons(&self) -> &'s DaemonConfig {
        &self.cfg.daemons
    }

    /// How long the strategy's daemons may take.
    pub fn daemon_timeout(&self) -> Duration {
        self.cfg.daemon_timeout
    }

    /// This host's address for CRIU's own connections, if known.
    pub fn criu_address(&self) -> Option<IpAddr> {
        self.local
    }

    /// The source host's address for CRIU's own connections, if known.
    pub fn criu_peer(&self) -> Option<IpAddr> {
        self.peer
    }

    /// The stream's side channels, if it carries CRIU's own connections
    /// itself (see [`Transport::side_channels`]).
    pub(crate) fn side_channels(&self) -> Option<Box<dyn SideChannels>> {
        self.stream.side_channels()
    }

    /// Where the crate's own strategies receive.
    pub(crate) fn inbound(&mut self) -> Inbound<'_> {
        Inbound {
            stream: &mut *self.stream,
            work_dir: self.work_dir,
            images: &self.images,
            limits: &self.cfg.limits,
            created: &mut *self.created,
        }
    }

    /// The CRIU this migration uses.
    pub fn criu(&self) -> &'s Criu {
        self.criu
    }

    /// The settings, for the crate's own strategies.
    pub(crate) fn config(&self) -> &'s DestConfig<'s> {
        self.cfg
    }

    /// Declares the step the strategy is in: an error it returns that is
    /// not typed yet is reported at that step.
    pub fn step(&mut self, step: Step) {
        *self.step = step;
    }

    /// Sends a message of the strategy's own.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        wire::send_own(self.stream, msg)
    }

    /// Receives a message of the strategy's own. The source's failure, if
    /// it sent one instead, is the error (at the source's step, with the
    /// source's state).
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        let step = *self.step;
        wire::recv_own(self.stream, |message, their_step, state| {
            failed(
                their_step.unwrap_or(step),
                state.unwrap_or(SourceState::Unknown),
                format!("the source failed: {message}"),
                None,
            )
        })
    }

    /// Records `path` as made by this receive: removed if it fails.
    pub fn created(&mut self, path: &Path) {
        self.created.add(path);
    }

    /// Receives a directory sent with [`Source::send_dir`] or
    /// [`Source::send_images`] into `target` (which must not exist),
    /// recorded as made by this receive.
    pub fn receive_dir(&mut self, target: &Path) -> Result<TransferStats> {
        let t = wire::receive_images(self.stream, target, &self.cfg.limits)?;
        self.created.add(target);
        Ok(t)
    }

    /// Receives the images ([`Source::send_images`],
    /// [`Source::stream_images`]) into [`Dest::images_path`].
    pub fn receive_images(&mut self) -> Result<Received> {
        let target = self.images.clone();
        let transfer = self.receive_dir(&target)?;
        let images = ImagesDir::open(&target)?;
        Ok(Received::new(images, transfer))
    }

    /// Creates the images directory ([`Dest::images_path`]), recorded as
    /// made by this receive.
    pub fn create_images(&mut self) -> Result<ImagesDir> {
        let images = ImagesDir::create(&self.images)?;
        self.created.add(&self.images);
        Ok(images)
    }

    /// Whether the restore should leave the memory to a local lazy-pages
    /// daemon ([`Dest::restore_lazily`]): as
    /// [`DestConfig::restore_lazily`] says, else `default`, and only
    /// where this host's CRIU restores lazily. Asks CRIU (a check that
    /// takes a while): call it before the images arrive.
    pub fn lazy_restore_wanted(&self, default: bool) -> bool {
        self.cfg.restore_lazily.unwrap_or(default)
            && self
                .criu
                .feature_check()
                .is_ok_and(|features| features.lazy_pages)
    }

    /// Restores as [`Dest::restore`] does, with the tree's memory left to
    /// a lazy-pages daemon of this host's reading `received` (its pages,
    /// and its parents' that CRIU marked lazy), and returns only once the
    /// daemon has delivered every page: the source, told of the copy only
    /// then, stays whole until the copy has all its memory. A daemon that
    /// fails, or is still at work at the daemon timeout, fails the
    /// migration (the copy killed, the source resumed).
    pub fn restore_lazily(&mut self, received: Received) -> Result<Running> {
        let cfg = self.cfg;
        let daemon = cfg.daemons.lazy_pages_local(received.images())?;
        let running = self.restore(received, |o| {
            o.lazy_pages(true);
        })?;
        let cancel = &cfg.cancel;
        daemon.wait_unless(cfg.daemon_timeout, || cancel.is_cancelled())?;
        Ok(running)
    }

    /// Restores the tree from `received` as a child of this process (with
    /// the caller's options, the deadline, then the strategy's `options`),
    /// continues it, and tells the source.
    pub fn restore(
        &mut self,
        received: Received,
        options: impl Fn(&mut Options<'_>),
    ) -> Result<Running> {
        *self.step = Step::Restore;
        let work = received.criu_work.as_ref();
        let (child, restore) =
            (self.restore)(self.criu, &received.images, work, self.cfg, &options)?;
        wire::check(&self.cfg.cancel, Step::Restore, SourceState::Unknown)?;
        wire::send(
            self.stream,
            &Msg::Restored {
                pid: child.pid(),
                wall_us: restore.wall_time.as_micros() as u64,
                restore_time_us: restore.stats.map(|s| s.restore_time.as_micros() as u64),
            },
        )?;
        *self.step = Step::LazyPages;
        Ok(Running {
            child,
            restore,
            transfer: received.transfer,
        })
    }
}

/// The service address could not move to the destination: the hook's
/// error, at the connections step (the move is undone when the
/// migration's `ServiceMove` drops, and the held source resumes).
fn address_move_failed(e: Error) -> Error {
    wire::at_step(e, Step::Connections, SourceState::Resumed, || {
        "moving the service address to the destination failed; it was moved back and the \
         source process was resumed"
            .into()
    })
}
