//! The client: which CRIU service to use, and the operations.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::c_int;
use std::ops::ControlFlow;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use crate::child::{RestoredChild, Unclaimed};
use crate::error::{Context, Error, InvalidKind, Operation, Result};
use crate::images::{exists_at, read_at, MAX_STATS_READ};
use crate::notify::{iter_trampoline, IterFn, Iteration};
use crate::options::Options;
use crate::report::{DumpReport, RestoreReport};
use crate::request::{refuse_nested, Channel, Request};
use crate::spawn::spawn_swrk;
use crate::stats::Stats;
use crate::sys;
use crate::verify::verify_images;
use crate::version::{
    kernel_has_soft_dirty, kernel_has_uffd_wp_async, Features, MemTrackMethod, Version,
};

/// Pids with a dump in progress in this process.
static BUSY: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

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
    check_stat(op, pid, &stat)
}

/// Refuses a zombie or a kernel thread, from its `/proc/PID/stat` line.
fn check_stat(op: Operation, pid: i32, stat: &str) -> Result<()> {
    let invalid = |kind, msg: String| Error::invalid(Some(op), kind, msg);
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

    /// Chooses how this request reaches CRIU. Taken last, after every
    /// check, because a one-shot service socket is spent by taking it.
    /// `inherit`: the descriptors of `--inherit-fd`, which a CRIU the
    /// crate starts gets at the same numbers.
    fn choose_service(
        &self,
        op: Operation,
        deadline: Option<Duration>,
        inherit: &[RawFd],
    ) -> Result<Channel> {
        let Some(deadline) = deadline else {
            return match &self.service {
                Service::Binary(b) => Ok(Channel::Binary(b.clone())),
                Service::Address(a) => Ok(Channel::Address(a.clone())),
                Service::Fd(slot) => Ok(Channel::Fd(Self::take_fd(slot, op)?)),
            };
        };
        let Service::Binary(_) = &self.service else {
            return Err(Error::invalid(
                Some(op),
                InvalidKind::Conflict,
                "a deadline needs the crate to start CRIU itself: not with a service address or fd",
            ));
        };
        self.own_swrk(Some(deadline), inherit)
    }

    /// A `criu swrk` the crate starts for the request: the binary of a
    /// [`Criu::with_binary`] client, else `criu` from `PATH`; it gets the
    /// descriptors `inherit` at their numbers.
    fn own_swrk(&self, deadline: Option<Duration>, inherit: &[RawFd]) -> Result<Channel> {
        let binary = match &self.service {
            Service::Binary(Some(b)) => b.clone(),
            _ => PathBuf::from("criu"),
        };
        let (child, fd) = spawn_swrk(&binary, inherit)?;
        Ok(Channel::OwnSwrk {
            child,
            fd,
            deadline,
        })
    }

    fn take_fd(slot: &Mutex<Option<OwnedFd>>, op: Operation) -> Result<OwnedFd> {
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                Error::invalid(
                    Some(op),
                    InvalidKind::Missing,
                    "the service socket was used by an earlier request (libcriu closes it after one)",
                )
            })
    }

    /// Runs one libcriu request: prepare it, choose the service, call
    /// libcriu with the closures installed, interpret the result. Returns
    /// libcriu's non-negative result and the time the call took.
    fn run(
        &self,
        op: Operation,
        opts: Option<&mut Options<'_>>,
        iter: Option<&mut IterFn<'_>>,
        call: impl FnOnce(*mut sys::criu_opts) -> c_int,
    ) -> Result<(c_int, Duration)> {
        self.run_via(op, opts, iter, false, call)
    }

    /// [`Criu::run`], through a `criu swrk` of the crate's own if
    /// `own_swrk`, else through the service the client names.
    fn run_via(
        &self,
        op: Operation,
        opts: Option<&mut Options<'_>>,
        iter: Option<&mut IterFn<'_>>,
        own_swrk: bool,
        call: impl FnOnce(*mut sys::criu_opts) -> c_int,
    ) -> Result<(c_int, Duration)> {
        refuse_nested(op)?;
        let mut empty = Options::new();
        let opts = opts.unwrap_or(&mut empty);
        let mut request = Request::prepare(op, opts)?;
        let inherit = opts.inherit_raw_fds();
        let channel = match own_swrk {
            true => self.own_swrk(opts.get_deadline(), &inherit)?,
            false => self.choose_service(op, opts.get_deadline(), &inherit)?,
        };
        request.connect(channel)?;
        request.call(opts, iter, call).interpret()
    }

    /// Runs a restore request, watching CRIU's notifications for the root
    /// of the tree it creates: if the request then fails (a notification
    /// refused after CRIU's post-restore, which CRIU only logs before
    /// resuming the tree; a late error; a closure's panic), the tree is
    /// killed and reaped rather than left running with nobody owning it.
    /// Returns the restored root's pid and the call's time.
    fn restore_watched(
        &self,
        op: Operation,
        opts: &mut Options<'_>,
        own_swrk: bool,
        call: impl FnOnce(*mut sys::criu_opts) -> c_int,
    ) -> Result<(i32, Duration)> {
        let unclaimed = Unclaimed::new();
        let observe = unclaimed.observer();
        let user = Rc::new(RefCell::new(opts.notify.take()));
        let theirs = Rc::clone(&user);
        opts.on_notify(move |n| {
            observe(&n);
            match theirs.borrow_mut().as_mut() {
                Some(f) => f(n),
                None => ControlFlow::Continue(()),
            }
        });
        let r = self.run_via(op, Some(&mut *opts), None, own_swrk, call);
        // Gives the caller's closure back (and drops the wrapper).
        opts.notify = user.borrow_mut().take();
        let (rc, wall) = r?;
        let pid = restored_pid(op, rc)?;
        unclaimed.claim();
        Ok((pid, wall))
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
        let min = c_int::try_from(min.encoded()).unwrap_or(c_int::MAX);
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
        // CRIU says whether it can track memory, not how: soft-dirty bits
        // when the kernel keeps them (CRIU prefers them), else its
        // userfaultfd write-protection.
        let mem_track_method = f.mem_track.then(|| {
            if kernel_has_soft_dirty() {
                MemTrackMethod::SoftDirty
            } else {
                MemTrackMethod::UffdWriteProtect
            }
        });
        Ok(Features {
            mem_track: f.mem_track,
            mem_track_method,
            lazy_pages: f.lazy_pages,
            pidfd_store: f.pidfd_store,
        })
    }

    fn require_mem_track(&self, op: Operation, pid: Option<i32>) -> Result<()> {
        let features = match &self.service {
            // A one-shot socket is kept for the request itself: ask a
            // `criu` started for the check instead, and if there is none,
            // leave the answer to the service.
            Service::Fd(_) => match Criu::new().feature_check() {
                Err(e) if e.is_connect() => return Ok(()),
                other => other?,
            },
            _ => self.feature_check()?,
        };
        if features.mem_track {
            return Ok(());
        }
        Err(Error::Unsupported {
            ctx: Context::new(op, pid),
            what: format!(
                "pre-dumps, iterative dumps and track_mem need memory change tracking, and the CRIU \
                 in use cannot track memory here: {} (CRIU 4.2 aborts with a BUG in mem.c \
                 otherwise); do a plain dump, or use lazy pages to shorten the freeze",
                tracking_available()
            ),
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
        let dir = required_images_dir(op, opts)?;
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
        self.dump_once(Operation::Dump, opts, sys::criu_local_dump)
    }

    /// Dumps the tree's memory only, leaving it running, as the base of a
    /// later incremental dump. Needs memory tracking
    /// ([`Features::mem_track`]); without it the error is
    /// [`Error::Unsupported`].
    pub fn pre_dump(&self, opts: &mut Options<'_>) -> Result<DumpReport> {
        self.dump_once(Operation::PreDump, opts, sys::criu_local_pre_dump)
    }

    /// A dump or a pre-dump: one libcriu call, `call`, that takes only the
    /// options.
    fn dump_once(
        &self,
        op: Operation,
        opts: &mut Options<'_>,
        call: unsafe extern "C" fn(*mut sys::criu_opts) -> c_int,
    ) -> Result<DumpReport> {
        let _busy = self.prepare_dump(op, opts)?;
        // SAFETY: p is the live handle `run` passes, all `call` needs.
        let (_, wall) = self.run(op, Some(opts), None, |p| unsafe { call(p) })?;
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
        let dir = required_images_dir(op, opts)?;
        if !exists_at(dir, "inventory.img") {
            return Err(Error::invalid(
                Some(op),
                InvalidKind::NoImages,
                "the images directory holds no checkpoint (no inventory.img)",
            ));
        }
        if opts.wants_image_check() {
            verify_images(dir)?;
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
    ///
    /// If the restore fails after CRIU created the tree (a notification
    /// refused at pre-resume or post-resume, which CRIU itself only logs
    /// before resuming the tree, or any later error), the tree is killed
    /// before the error is returned: a failed restore leaves nothing
    /// running. (Not through a CRIU service of another PID namespace,
    /// whose pids the crate cannot tell.)
    pub fn restore(&self, opts: &mut Options<'_>) -> Result<RestoreReport> {
        Self::prepare_restore(Operation::Restore, opts)?;
        // SAFETY: as above.
        let (pid, wall) = self.restore_watched(Operation::Restore, opts, false, |p| unsafe {
            sys::criu_local_restore(p)
        })?;
        Ok(Self::restore_report(opts, pid, wall))
    }

    /// Restores a checkpoint so that the root task becomes this process's
    /// child, returned as an owned handle that can be waited on, signalled,
    /// and that reaps it.
    ///
    /// If the restore fails after CRIU created the tree (a notification
    /// refused at pre-resume or post-resume, which CRIU itself only logs
    /// before resuming the tree, or any later error), the tree is killed
    /// and its root reaped before the error is returned.
    pub fn restore_child(&self, opts: &mut Options<'_>) -> Result<(RestoredChild, RestoreReport)> {
        if matches!(self.service, Service::Fd(_)) {
            // libcriu's restore_child ignores a service socket and starts
            // `criu` from PATH; refuse rather than leave the socket unused.
            return Err(Error::invalid(
                Some(Operation::RestoreChild),
                InvalidKind::Conflict,
                "restore_child needs a CRIU this process starts (its root becomes our child), not a service socket: use Criu::new() or Criu::with_binary; the socket is kept for another request",
            ));
        }
        Self::prepare_restore(Operation::RestoreChild, opts)?;
        // libcriu's restore_child starts CRIU itself and, after a refused
        // notification, waits for that CRIU to exit before closing its
        // socket, while CRIU (which goes on after a refused pre-resume)
        // waits on that socket for the answer to its post-resume
        // notification: both wait forever. The crate starts the CRIU
        // itself, so that libcriu closes the socket at once, and asks it
        // for the same thing (the restored root becomes a sibling of
        // CRIU, i.e. our child) through the config.
        #[cfg(criu_3_19)]
        let (pid, wall) = {
            opts.set_restore_sibling(true);
            // SAFETY: as above.
            let r = self.restore_watched(Operation::RestoreChild, opts, true, |p| unsafe {
                sys::criu_local_restore(p)
            });
            opts.set_restore_sibling(false);
            r?
        };
        // Without a config file to ask for a sibling, libcriu's own
        // restore_child (whose wait above a refused pre-resume cannot end).
        #[cfg(not(criu_3_19))]
        // SAFETY: as above.
        let (pid, wall) =
            self.restore_watched(Operation::RestoreChild, opts, false, |p| unsafe {
                sys::criu_local_restore_child(p)
            })?;
        Ok((
            RestoredChild::new(pid),
            Self::restore_report(opts, pid, wall),
        ))
    }
}

/// The images directory every dump and restore needs.
fn required_images_dir<'a>(op: Operation, opts: &Options<'a>) -> Result<BorrowedFd<'a>> {
    opts.get_images_dir().ok_or_else(|| {
        Error::invalid(
            Some(op),
            InvalidKind::Missing,
            "no images directory: set Options::images_dir",
        )
    })
}

/// The restored root's pid, which CRIU must have answered: a pid <= 0
/// would make `kill` hit the caller's process group (0) or every process
/// (-1), and `waitpid` wait for any child.
fn restored_pid(op: Operation, pid: c_int) -> Result<i32> {
    if pid > 0 {
        Ok(pid)
    } else {
        Err(Error::BadResponse {
            ctx: Context::new(op, None),
        })
    }
}

fn read_stats(dir: Option<BorrowedFd<'_>>, name: &str) -> Option<Stats> {
    let bytes = read_at(dir?, name, MAX_STATS_READ).ok()?;
    Stats::decode(name, &bytes).ok()
}

/// What this kernel offers for memory tracking, for an `Unsupported` error
/// when CRIU says it can track nothing.
fn tracking_available() -> &'static str {
    if kernel_has_soft_dirty() {
        "this kernel keeps soft-dirty bits, yet CRIU does not use them (is /proc/PID/clear_refs \
         writable?)"
    } else if kernel_has_uffd_wp_async() {
        "this kernel has no soft-dirty bits; it offers userfaultfd write-protection, which only a \
         CRIU built with the project's patches/criu-uffd-wp-track.patch uses (`make setup` builds \
         one; see docs/precopy-uffd.md)"
    } else {
        "this kernel has neither soft-dirty bits nor userfaultfd write-protection (Linux 6.7+)"
    }
}

#[cfg(test)]
mod tests {
    use super::{check_stat, Operation};
    use crate::InvalidKind;

    /// kthreadd's line as Linux 6.18 prints it: flags 2129984 hold
    /// PF_KTHREAD (0x00200000).
    const KTHREADD: &str = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 31 0 0 \
                            18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn a_kernel_thread_is_refused_from_its_stat_line() {
        let e = check_stat(Operation::Dump, 2, KTHREADD).unwrap_err();
        assert_eq!(e.invalid_kind(), Some(InvalidKind::Malformed), "{e}");
        assert_eq!(e.operation(), Some(Operation::Dump), "{e}");
        assert!(e.to_string().contains("pid 2 is a kernel thread"), "{e}");
        // A command name with ") " and digits in it does not shift the
        // fields: the flags are read after the last ')'.
        let tricky = KTHREADD.replace("(kthreadd)", "(a) S 1 1 1 1 -1 0 (b)");
        assert!(check_stat(Operation::Dump, 2, &tricky).is_err());
    }

    #[test]
    fn a_user_process_passes_and_a_zombie_is_refused() {
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        check_stat(Operation::Dump, 1234, &me).unwrap();
        // The same flags without PF_KTHREAD pass.
        let user = KTHREADD.replace(" 2129984 ", &format!(" {} ", 2129984 & !0x0020_0000));
        check_stat(Operation::Dump, 2, &user).unwrap();
        let zombie = KTHREADD.replace(") S ", ") Z ");
        let e = check_stat(Operation::Restore, 2, &zombie).unwrap_err();
        assert_eq!(e.invalid_kind(), Some(InvalidKind::NoSuchProcess), "{e}");
        assert!(e.to_string().contains("zombie"), "{e}");
    }
}
