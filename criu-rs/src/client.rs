//! The client: which CRIU service to use, and the operations.

use std::collections::HashSet;
use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::child::RestoredChild;
use crate::deadline::{OwnSwrk, Watchdog};
use crate::error::{error_lines, Context, Error, InvalidKind, Operation, Result};
use crate::images::{exists_at, read_at};
use crate::notify::{iter_trampoline, notify_trampoline, Installed, IterFn, Iteration};
use crate::options::Options;
use crate::raw::{c_path, cvt, RawOpts};
use crate::report::{DumpReport, RestoreReport};
use crate::stats::Stats;
use crate::sys;
use crate::version::{Features, Version};

/// Serialises libcriu calls: libcriu keeps process-global state that every
/// call writes (`saved_errno`, the orphan pts fd), so two calls at once
/// would race on it. CRIU's own work dominates each call; see the crate
/// docs on concurrency. A lazy dump does not take it: it blocks until its
/// pages are served, possibly to a lazy restore made by this same process.
static LIBCRIU: Mutex<()> = Mutex::new(());

/// Pids with a dump in progress in this process.
static BUSY: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

thread_local! {
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How libcriu reaches CRIU.
#[derive(Debug)]
enum Service {
    /// Fork and exec this binary in `swrk` mode for each request (default:
    /// `criu` from `PATH`).
    Binary(Option<PathBuf>),
    /// Connect to a `criu service` listening on this unix socket.
    Address(PathBuf),
    /// Use this connected socket for the next request (libcriu closes it).
    Fd(Mutex<Option<OwnedFd>>),
}

/// A handle on CRIU. Cheap to create; holds only the service settings.
///
/// ```no_run
/// use criu::{Criu, ImagesDir, Options};
/// # fn main() -> criu::Result<()> {
/// let criu = Criu::new();
/// criu.check()?;
/// let images = ImagesDir::create("/tmp/ckpt")?;
/// let report = criu.dump(Options::new().pid(1234).images_dir(&images).shell_job(true))?;
/// println!("frozen for {:?}", report.stats.map(|s| s.stopped_time()));
/// let restored = criu.restore(Options::new().images_dir(&images).shell_job(true))?;
/// println!("running again as pid {}", restored.pid);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Criu {
    service: Service,
}

impl Default for Criu {
    fn default() -> Criu {
        Criu::new()
    }
}

/// Marks the pid busy for the life of the guard.
struct BusyGuard(i32);

impl BusyGuard {
    fn take(op: Operation, pid: i32) -> Result<BusyGuard> {
        let mut set = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        if !set.get_or_insert_with(HashSet::new).insert(pid) {
            return Err(Error::invalid(
                Some(op),
                InvalidKind::Busy,
                format!("pid {pid} is already being checkpointed by another call in this process"),
            ));
        }
        Ok(BusyGuard(pid))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut set = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = set.as_mut() {
            s.remove(&self.0);
        }
    }
}

/// The crate's own config file for CLI-only options: mode 0600 in a
/// private 0700 directory, removed on drop.
struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn write(lines: &[String]) -> Result<ConfigFile> {
        let dir = tempfile::Builder::new()
            .prefix("criu-rs-config-")
            .tempdir()
            .map_err(|e| Error::io("creating a private directory for the CRIU config file", e))?;
        // Private before anything is written into it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("making the CRIU config directory private", e))?;
        let path = dir.path().join("criu.conf");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut text = lines.join("\n");
        text.push('\n');
        f.write_all(text.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok(ConfigFile { dir, path })
    }

    fn path(&self) -> &Path {
        debug_assert!(self.path.starts_with(self.dir.path()));
        &self.path
    }
}

/// The state of a process, read from `/proc/PID/stat`.
fn check_pid(op: Operation, pid: i32) -> Result<()> {
    let invalid = |kind, msg: String| Error::invalid(Some(op), kind, msg);
    if pid <= 0 {
        return Err(invalid(
            InvalidKind::Malformed,
            format!("pid {pid} is not a process id"),
        ));
    }
    if pid == std::process::id() as i32 {
        return Err(invalid(
            InvalidKind::Malformed,
            format!(
                "pid {pid} is this process: a process cannot checkpoint itself through this API"
            ),
        ));
    }
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => {
            return Err(invalid(
                InvalidKind::NoSuchProcess,
                format!("no process with pid {pid}"),
            ))
        }
    };
    // Fields after the parenthesised command name: state is the first,
    // flags the seventh.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return Err(invalid(
            InvalidKind::NoSuchProcess,
            format!("pid {pid} is a zombie (it has exited and awaits its parent's wait)"),
        ));
    }
    const PF_KTHREAD: u64 = 0x0020_0000;
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    if flags & PF_KTHREAD != 0 {
        return Err(invalid(
            InvalidKind::Malformed,
            format!("pid {pid} is a kernel thread; only user processes can be checkpointed"),
        ));
    }
    Ok(())
}

impl Criu {
    /// Uses the `criu` binary from `PATH`, started as a child for each
    /// request (`criu swrk`).
    pub fn new() -> Criu {
        Criu {
            service: Service::Binary(None),
        }
    }

    /// Uses this `criu` binary (started as a child for each request).
    pub fn with_binary(path: impl AsRef<Path>) -> Criu {
        Criu {
            service: Service::Binary(Some(path.as_ref().to_path_buf())),
        }
    }

    /// Connects to a `criu service` listening on this unix socket path.
    /// `restore_child` and inherited fds still start a child binary, as
    /// libcriu requires.
    pub fn with_service_address(path: impl AsRef<Path>) -> Criu {
        Criu {
            service: Service::Address(path.as_ref().to_path_buf()),
        }
    }

    /// Uses a socket already connected to a CRIU service, for exactly one
    /// request (libcriu closes it afterwards).
    pub fn with_service_fd(fd: OwnedFd) -> Criu {
        Criu {
            service: Service::Fd(Mutex::new(Some(fd))),
        }
    }

    fn apply_service(&self, raw: &RawOpts, op: Operation) -> Result<()> {
        let p = raw.as_ptr();
        match &self.service {
            Service::Binary(None) => {}
            Service::Binary(Some(path)) => {
                let c = c_path(path, "CRIU binary")?;
                cvt(
                    // SAFETY: p is live; libcriu copies the string.
                    unsafe { sys::criu_local_set_service_binary(p, c.as_ptr()) },
                    "set_service_binary",
                )?;
            }
            Service::Address(path) => {
                let c = c_path(path, "CRIU service address")?;
                cvt(
                    // SAFETY: p is live; libcriu copies the string.
                    unsafe { sys::criu_local_set_service_address(p, c.as_ptr()) },
                    "set_service_address",
                )?;
            }
            Service::Fd(slot) => {
                let fd = slot.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| {
                    Error::invalid(
                        Some(op),
                        InvalidKind::Missing,
                        "the service socket was used by an earlier request (libcriu closes it after one)",
                    )
                })?;
                // SAFETY: p is live; libcriu takes the descriptor and closes it.
                unsafe { sys::criu_local_set_service_fd(p, fd.into_raw_fd()) };
            }
        }
        Ok(())
    }

    /// Runs one libcriu request with everything around it: validation, a
    /// fresh handle, the config file, closures, the global lock, timing and
    /// error mapping. Returns libcriu's non-negative result and the time.
    fn run(
        &self,
        op: Operation,
        opts: Option<&mut Options<'_>>,
        iter: Option<&mut IterFn<'_>>,
        call: impl FnOnce(*mut sys::criu_opts) -> c_int,
    ) -> Result<(c_int, Duration)> {
        if IN_CALL.with(|c| c.get()) {
            return Err(Error::invalid(
                Some(op),
                InvalidKind::Conflict,
                "a CRIU operation cannot be started from inside a notification or iteration closure",
            ));
        }
        let raw = RawOpts::new()?;
        let mut empty = Options::new();
        let opts = opts.unwrap_or(&mut empty);
        let mut own_swrk = match opts.get_deadline() {
            None => {
                self.apply_service(&raw, op)?;
                None
            }
            Some(deadline) => {
                let binary = match &self.service {
                    Service::Binary(b) => b.clone().unwrap_or_else(|| PathBuf::from("criu")),
                    _ => {
                        return Err(Error::invalid(
                            Some(op),
                            InvalidKind::Conflict,
                            "a deadline needs the crate to start CRIU itself: not with a service address or fd",
                        ))
                    }
                };
                let (swrk, fd) = OwnSwrk::spawn(&binary)?;
                // SAFETY: raw is live; libcriu takes the socket and closes it.
                unsafe { sys::criu_local_set_service_fd(raw.as_ptr(), fd.into_raw_fd()) };
                Some((swrk, deadline))
            }
        };
        let with_op = |e: Error| match e {
            Error::InvalidArgument { kind, message, .. } => Error::InvalidArgument {
                operation: Some(op),
                kind,
                message,
            },
            other => other,
        };
        opts.validate().map_err(with_op)?;
        opts.validate_cli_only().map_err(with_op)?;
        opts.apply(&raw).map_err(with_op)?;
        let lines = opts.cli_only_lines();
        let config = if lines.is_empty() {
            None
        } else {
            Some(ConfigFile::write(&lines)?)
        };
        if let Some(cfg) = &config {
            self.set_config_file(&raw, op, cfg.path())?;
        }
        if opts.notify.is_some() {
            // SAFETY: raw is live; the trampoline is a valid extern "C" fn.
            unsafe { sys::criu_local_set_notify_cb(raw.as_ptr(), Some(notify_trampoline)) };
        }
        let ctx = Context::new(op, opts.get_pid());
        let blocks_on_peer = op == Operation::Dump && opts.wants_lazy_pages();
        let work_dir = opts.get_work_dir();
        let log_name = opts.log_file_name().to_string();

        let (rc, errno, wall, outcome) = {
            let _lock =
                (!blocks_on_peer).then(|| LIBCRIU.lock().unwrap_or_else(|e| e.into_inner()));
            IN_CALL.with(|c| c.set(true));
            // SAFETY: the closures live in `opts` and `iter`, which outlive
            // `installed`; it is finished on this thread before they end.
            let installed = unsafe { Installed::new(opts.notify.as_deref_mut(), iter) };
            let sibling = if opts.get_restore_sibling() {
                opts.get_images_dir().and_then(root_pid_at)
            } else {
                None
            };
            let dog = own_swrk
                .as_ref()
                .map(|(s, d)| Watchdog::start(s.pid(), sibling, *d));
            let start = Instant::now();
            let rc = call(raw.as_ptr());
            let errno = Errno::last_raw();
            let wall = start.elapsed();
            let outcome = installed.finish();
            IN_CALL.with(|c| c.set(false));
            let killed = dog.and_then(Watchdog::finish);
            (rc, errno, wall, (outcome, killed))
        };
        let (outcome, killed) = outcome;
        drop(config);
        drop(raw);
        if let Some((swrk, _)) = own_swrk.as_mut() {
            swrk.reap(Duration::from_secs(5));
        }
        if let Some(panic) = outcome.panic {
            std::panic::resume_unwind(panic);
        }
        if let (Some(n), Some((_, deadline))) = (killed, own_swrk.as_ref()) {
            let outcome = match (op, ctx.pid) {
                (Operation::Dump | Operation::PreDump | Operation::DumpIters, Some(pid)) => {
                    let state = if crate::tree::alive(pid) {
                        "is still running"
                    } else {
                        "is NOT running"
                    };
                    format!("CRIU was killed and reaped ({n} task(s)); pid {pid} {state}")
                }
                _ => format!(
                    "CRIU and what it had restored were killed and reaped ({n} task(s)); nothing restored is left"
                ),
            };
            let mut err = Error::DeadlineExceeded {
                ctx,
                deadline: *deadline,
                outcome,
            };
            if let (Some(dir), Some(c)) = (work_dir, err.context_mut()) {
                attach_log(c, dir, &log_name);
            }
            return Err(err);
        }
        if rc >= 0 {
            return Ok((rc, wall));
        }
        let mut err = if let Some((event, reason)) = outcome.refused {
            Error::NotificationRefused { ctx, event, reason }
        } else if outcome.aborted {
            Error::Aborted {
                ctx,
                iterations: outcome.iterations,
            }
        } else {
            map_rc(ctx, rc, errno)
        };
        if !matches!(err, Error::Connect { .. }) {
            if let (Some(dir), Some(c)) = (work_dir, err.context_mut()) {
                attach_log(c, dir, &log_name);
            }
        }
        Err(err)
    }

    #[cfg(criu_3_19)]
    fn set_config_file(&self, raw: &RawOpts, _op: Operation, path: &Path) -> Result<()> {
        let c = c_path(path, "config file")?;
        cvt(
            // SAFETY: raw is live; libcriu copies the string.
            unsafe { sys::criu_local_set_config_file(raw.as_ptr(), c.as_ptr()) },
            "set_config_file",
        )?;
        Ok(())
    }

    #[cfg(not(criu_3_19))]
    fn set_config_file(&self, _raw: &RawOpts, op: Operation, _path: &Path) -> Result<()> {
        Err(Error::Unsupported {
            ctx: Context::new(op, None),
            what: "this libcriu has no criu_local_set_config_file, needed for CLI-only options"
                .into(),
        })
    }

    /// Runs `criu check`: are the kernel and CRIU fit to checkpoint?
    pub fn check(&self) -> Result<()> {
        // SAFETY: p is the live handle `run` passes.
        self.run(Operation::Check, None, None, |p| unsafe {
            sys::criu_local_check(p)
        })
        .map(|_| ())
    }

    /// The version of the `criu` binary that serves requests.
    pub fn version(&self) -> Result<Version> {
        // SAFETY: as above.
        let (v, _) = self.run(Operation::Version, None, None, |p| unsafe {
            sys::criu_local_get_version(p)
        })?;
        Ok(Version::from_encoded(v as u32))
    }

    /// Whether the `criu` binary is at least `min`.
    pub fn version_at_least(&self, min: Version) -> Result<bool> {
        let min = min.encoded() as c_int;
        // SAFETY: as above.
        let (v, _) = self.run(Operation::Version, None, None, |p| unsafe {
            sys::criu_local_check_version(p, min)
        })?;
        Ok(v == 1)
    }

    /// Which optional features this kernel and CRIU support.
    pub fn feature_check(&self) -> Result<Features> {
        let mut f = sys::criu_feature_check {
            mem_track: true,
            lazy_pages: true,
            pidfd_store: true,
        };
        let size = std::mem::size_of::<sys::criu_feature_check>();
        // SAFETY: `f` is a valid criu_feature_check of `size` bytes.
        self.run(Operation::FeatureCheck, None, None, |p| unsafe {
            sys::criu_local_feature_check(p, &mut f, size)
        })?;
        Ok(Features {
            mem_track: f.mem_track,
            lazy_pages: f.lazy_pages,
            pidfd_store: f.pidfd_store,
        })
    }

    fn require_mem_track(&self, op: Operation, pid: Option<i32>) -> Result<()> {
        if self.feature_check()?.mem_track {
            return Ok(());
        }
        Err(Error::Unsupported {
            ctx: Context::new(op, pid),
            what: "memory change tracking (soft-dirty) is off in this kernel, and pre-dumps, iterative \
                   dumps and track_mem need it (CRIU 4.2 aborts with a BUG in mem.c otherwise); do a \
                   plain dump, or use lazy pages to shorten the freeze"
                .into(),
        })
    }

    /// What every dump-like operation checks before calling CRIU.
    fn prepare_dump(&self, op: Operation, opts: &Options<'_>) -> Result<BusyGuard> {
        let pid = opts.get_pid().ok_or_else(|| {
            Error::invalid(
                Some(op),
                InvalidKind::Missing,
                "no pid: set Options::pid to the tree's root",
            )
        })?;
        let dir = opts.get_images_dir().ok_or_else(|| {
            Error::invalid(
                Some(op),
                InvalidKind::Missing,
                "no images directory: set Options::images_dir",
            )
        })?;
        if !opts.get_overwrite_images()
            && (opts.images_dir_holds_images() || exists_at(dir, "inventory.img"))
        {
            return Err(Error::invalid(
                Some(op),
                InvalidKind::ImagesExist,
                "the images directory already holds a checkpoint; use a fresh one, or allow replacing it with Options::overwrite_images(true)",
            ));
        }
        check_pid(op, pid)?;
        if opts.wants_mem_track() || matches!(op, Operation::PreDump | Operation::DumpIters) {
            self.require_mem_track(op, Some(pid))?;
        }
        BusyGuard::take(op, pid)
    }

    fn dump_report(opts: &Options<'_>, wall: Duration, iterations: u32) -> DumpReport {
        let mut stats = read_stats(opts.get_work_dir(), "stats-dump").and_then(|s| s.dump);
        // CRIU (4.2.1) re-initialises its dump counters when a lazy dump
        // starts serving pages (init_stats in cr_page_server), so the file
        // it writes at the end holds zeros and a frozen_time measured from
        // nothing. Such statistics would mislead; drop them.
        if opts.wants_lazy_pages() && stats.is_some_and(|s| s.pages_scanned == 0) {
            stats = None;
        }
        DumpReport {
            pid: opts.get_pid().unwrap_or(0),
            wall_time: wall,
            iterations,
            stats,
        }
    }

    /// Checkpoints the tree rooted at [`Options::pid`] into
    /// [`Options::images_dir`]. Unless `leave_running` is set, the tree is
    /// killed once dumped; if the dump fails, it keeps running.
    pub fn dump(&self, opts: &mut Options<'_>) -> Result<DumpReport> {
        let _busy = self.prepare_dump(Operation::Dump, opts)?;
        // SAFETY: p is the live handle `run` passes.
        let (_, wall) = self.run(Operation::Dump, Some(opts), None, |p| unsafe {
            sys::criu_local_dump(p)
        })?;
        Ok(Self::dump_report(opts, wall, 0))
    }

    /// Dumps the tree's memory only, leaving it running, as the base of a
    /// later incremental dump. Needs memory tracking
    /// ([`Features::mem_track`]); without it the error is
    /// [`Error::Unsupported`].
    pub fn pre_dump(&self, opts: &mut Options<'_>) -> Result<DumpReport> {
        let _busy = self.prepare_dump(Operation::PreDump, opts)?;
        // SAFETY: as above.
        let (_, wall) = self.run(Operation::PreDump, Some(opts), None, |p| unsafe {
            sys::criu_local_pre_dump(p)
        })?;
        Ok(Self::dump_report(opts, wall, 0))
    }

    /// Pre-dumps the tree repeatedly, asking `more` after each pass
    /// (numbered from 1) whether to go on, dump for good, or abort, then
    /// does the final dump. Needs memory tracking, like
    /// [`Criu::pre_dump`]. An abort gives [`Error::Aborted`] and leaves the
    /// tree running.
    pub fn dump_iters<F>(&self, opts: &mut Options<'_>, mut more: F) -> Result<DumpReport>
    where
        F: FnMut(u32) -> Iteration,
    {
        let _busy = self.prepare_dump(Operation::DumpIters, opts)?;
        let mut iterations = 0;
        let mut counting = |n: u32| {
            iterations = n;
            more(n)
        };
        // SAFETY: as above; the trampoline calls `counting` through the slot.
        let (_, wall) = self.run(
            Operation::DumpIters,
            Some(opts),
            Some(&mut counting),
            |p| unsafe { sys::criu_local_dump_iters(p, Some(iter_trampoline)) },
        )?;
        Ok(Self::dump_report(opts, wall, iterations))
    }

    fn prepare_restore(op: Operation, opts: &Options<'_>) -> Result<()> {
        let dir = opts.get_images_dir().ok_or_else(|| {
            Error::invalid(
                Some(op),
                InvalidKind::Missing,
                "no images directory: set Options::images_dir",
            )
        })?;
        if !exists_at(dir, "inventory.img") {
            return Err(Error::invalid(
                Some(op),
                InvalidKind::NoImages,
                "the images directory holds no checkpoint (no inventory.img)",
            ));
        }
        Ok(())
    }

    fn restore_report(opts: &Options<'_>, pid: i32, wall: Duration) -> RestoreReport {
        RestoreReport {
            pid,
            wall_time: wall,
            stats: read_stats(opts.get_work_dir(), "stats-restore").and_then(|s| s.restore),
        }
    }

    /// Restores a checkpoint; the restored tree is detached from the caller
    /// (its parent is CRIU's, then init). Returns the root's pid.
    pub fn restore(&self, opts: &mut Options<'_>) -> Result<RestoreReport> {
        Self::prepare_restore(Operation::Restore, opts)?;
        // SAFETY: as above.
        let (pid, wall) = self.run(Operation::Restore, Some(opts), None, |p| unsafe {
            sys::criu_local_restore(p)
        })?;
        Ok(Self::restore_report(opts, pid, wall))
    }

    /// Restores a checkpoint so that the root task becomes this process's
    /// child, returned as an owned handle that can be waited on, signalled,
    /// and that reaps it.
    pub fn restore_child(&self, opts: &mut Options<'_>) -> Result<(RestoredChild, RestoreReport)> {
        Self::prepare_restore(Operation::RestoreChild, opts)?;
        let (pid, wall) = if opts.get_deadline().is_some() {
            // libcriu's restore_child starts CRIU itself; with a deadline the
            // crate does, and asks CRIU for the same thing (the restored root
            // becomes a sibling of CRIU, i.e. our child) through the config.
            opts.set_restore_sibling(true);
            // SAFETY: as above.
            let r = self.run(Operation::RestoreChild, Some(opts), None, |p| unsafe {
                sys::criu_local_restore(p)
            });
            opts.set_restore_sibling(false);
            r?
        } else {
            // SAFETY: as above.
            self.run(Operation::RestoreChild, Some(opts), None, |p| unsafe {
                sys::criu_local_restore_child(p)
            })?
        };
        Ok((
            RestoredChild::new(pid),
            Self::restore_report(opts, pid, wall),
        ))
    }
}

/// The root pid recorded in the images (see [`ImagesDir::root_pid`]).
fn root_pid_at(dir: BorrowedFd<'_>) -> Option<i32> {
    crate::images::root_pid_of(&read_at(dir, "pstree.img").ok()?).ok()
}

fn read_stats(dir: Option<BorrowedFd<'_>>, name: &str) -> Option<Stats> {
    let bytes = read_at(dir?, name).ok()?;
    Stats::decode(name, &bytes).ok()
}

/// Maps a negative libcriu return (see the table in criu.h) to an error.
fn map_rc(ctx: Context, rc: c_int, errno: i32) -> Error {
    let os = |fallback: Errno| {
        if errno > 0 {
            std::io::Error::from_raw_os_error(errno)
        } else {
            std::io::Error::from(fallback)
        }
    };
    match -rc {
        libc::ECONNREFUSED | 1 => Error::Connect {
            ctx,
            source: os(Errno::ECONNREFUSED),
        },
        libc::ECOMM => Error::Communication { ctx },
        libc::EINVAL => Error::Unsupported {
            ctx,
            what: "this CRIU does not know the request (update CRIU)".into(),
        },
        libc::EBADMSG => Error::BadResponse { ctx },
        libc::EBADE => Error::Refused {
            ctx,
            errno: (errno > 0).then(|| Errno::from_raw(errno)),
        },
        other => Error::Refused {
            ctx,
            errno: Some(Errno::from_raw(other)),
        },
    }
}

fn attach_log(ctx: &mut Context, dir: BorrowedFd<'_>, name: &str) {
    if let Ok(bytes) = read_at(dir, name) {
        ctx.log_errors = error_lines(&String::from_utf8_lossy(&bytes));
        ctx.log_file = Some(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_is_private_and_removed() {
        let cfg = ConfigFile::write(&["lazy-pages".into(), "port 1234".into()]).unwrap();
        let path = cfg.path().to_path_buf();
        let dir = path.parent().unwrap().to_path_buf();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "lazy-pages\nport 1234\n"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(cfg);
        assert!(!path.exists() && !dir.exists());
    }

    #[test]
    fn libcriu_return_codes_map_to_error_kinds() {
        let ctx = || Context::new(Operation::Dump, Some(7));
        assert!(matches!(
            map_rc(ctx(), -libc::ECONNREFUSED, libc::ENOENT),
            Error::Connect { .. }
        ));
        assert!(matches!(
            map_rc(ctx(), -libc::ECOMM, 0),
            Error::Communication { .. }
        ));
        assert!(matches!(
            map_rc(ctx(), -libc::EINVAL, 0),
            Error::Unsupported { .. }
        ));
        assert!(matches!(
            map_rc(ctx(), -libc::EBADMSG, 0),
            Error::BadResponse { .. }
        ));
        let e = map_rc(ctx(), -libc::EBADE, libc::ESRCH);
        assert_eq!(e.errno(), Some(Errno::ESRCH));
        assert!(e.is_not_found());
        assert!(e
            .to_string()
            .starts_with("dump of pid 7: CRIU refused the request (errno 3"));
    }
}
