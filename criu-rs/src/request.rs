//! One libcriu request, in the steps [`crate::Criu`] runs it through:
//! prepare it (validate the options, fill a fresh handle, write the
//! crate's config file), connect it to the service the client chose, call
//! libcriu with the closures installed (under the global lock, with a
//! watchdog when there is a deadline), and interpret the result.

use std::cell::Cell;
use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::deadline::Watchdog;
use crate::error::{error_lines, Context, Error, InvalidKind, Operation, Result};
use crate::images::{private_dir, read_at, read_tail_at, MAX_IMAGE_READ, MAX_LOG_TAIL};
use crate::notify::{notify_trampoline, Installed, IterFn, Outcome};
use crate::options::Options;
use crate::raw::{c_path, cvt, RawOpts};
use crate::spawn::OwnedChild;
use crate::sys;

/// Serialises libcriu calls: libcriu keeps process-global state that every
/// call writes (`saved_errno`, the orphan pts fd), so two calls at once
/// would race on it. CRIU's own work dominates each call; see the crate
/// docs on concurrency. A lazy dump does not take it: it blocks until its
/// pages are served, possibly to a lazy restore made by this same process.
static LIBCRIU: Mutex<()> = Mutex::new(());

thread_local! {
    /// Set while this thread is inside libcriu (so inside a closure).
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside libcriu for the life of the guard, so that
/// a closure cannot start a request; reset even if something unwinds.
struct InCall;

impl InCall {
    fn enter() -> InCall {
        IN_CALL.with(|c| c.set(true));
        InCall
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        IN_CALL.with(|c| c.set(false));
    }
}

/// Refuses a request started from inside a notification or iteration
/// closure (libcriu is not re-entrant, and the lock is held).
pub(crate) fn refuse_nested(op: Operation) -> Result<()> {
    if IN_CALL.with(Cell::get) {
        return Err(Error::invalid(
            Some(op),
            InvalidKind::Conflict,
            "a CRIU operation cannot be started from inside a notification or iteration closure",
        ));
    }
    Ok(())
}

/// How the request reaches CRIU, as the client chose it.
pub(crate) enum Channel {
    /// libcriu forks and execs this binary (`None`: `criu` from `PATH`).
    Binary(Option<PathBuf>),
    /// libcriu connects to a `criu service` at this socket.
    Address(PathBuf),
    /// This connected socket, which libcriu uses once and closes.
    Fd(OwnedFd),
    /// A `criu swrk` the crate started, so that a watchdog can kill it
    /// when `deadline` passes (if there is one), and so that its socket
    /// is closed as soon as libcriu returns (libcriu's own `restore_child`
    /// waits for its CRIU first, see `Criu::restore_child`); `fd` is
    /// libcriu's end of its socket.
    OwnSwrk {
        child: OwnedChild,
        fd: OwnedFd,
        deadline: Option<Duration>,
    },
}

/// The crate's own swrk and its deadline, while a request uses it.
struct Guarded {
    child: OwnedChild,
    deadline: Option<Duration>,
}

/// A prepared request: a filled libcriu handle and what it refers to.
pub(crate) struct Request<'a> {
    op: Operation,
    raw: RawOpts,
    config: Option<ConfigFile>,
    guarded: Option<Guarded>,
    report: Reporting<'a>,
}

/// What an error report needs once the call is over.
struct Reporting<'a> {
    ctx: Context,
    work_dir: Option<BorrowedFd<'a>>,
    log_name: String,
}

impl<'a> Request<'a> {
    /// Validates `opts` and writes them into a fresh handle (and the
    /// crate's config file for CLI-only options). Nothing is started.
    pub(crate) fn prepare(op: Operation, opts: &Options<'a>) -> Result<Request<'a>> {
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
        let raw = RawOpts::new()?;
        opts.apply(&raw).map_err(with_op)?;
        let lines = opts.cli_only_lines();
        let config = if lines.is_empty() {
            None
        } else {
            let cfg = ConfigFile::write(&lines)?;
            set_config_file(&raw, op, cfg.path())?;
            Some(cfg)
        };
        if opts.notify.is_some() {
            // SAFETY: raw is live; the trampoline is a valid extern "C" fn.
            unsafe { sys::criu_local_set_notify_cb(raw.as_ptr(), Some(notify_trampoline)) };
        }
        Ok(Request {
            op,
            raw,
            config,
            guarded: None,
            report: Reporting {
                ctx: Context::new(op, opts.get_pid()),
                work_dir: opts.get_work_dir(),
                log_name: opts.log_file_name().to_string(),
            },
        })
    }

    /// Points the handle at the chosen service; the last step before the
    /// call, so that nothing that can fail comes after a descriptor has
    /// been handed to libcriu.
    pub(crate) fn connect(&mut self, channel: Channel) -> Result<()> {
        let p = self.raw.as_ptr();
        match channel {
            Channel::Binary(None) => {}
            Channel::Binary(Some(path)) => {
                let c = c_path(&path, "CRIU binary")?;
                // SAFETY: p is live; libcriu copies the string.
                let rc = unsafe { sys::criu_local_set_service_binary(p, c.as_ptr()) };
                cvt(rc, "set_service_binary")?;
            }
            Channel::Address(path) => {
                let c = c_path(&path, "CRIU service address")?;
                // SAFETY: p is live; libcriu copies the string.
                let rc = unsafe { sys::criu_local_set_service_address(p, c.as_ptr()) };
                cvt(rc, "set_service_address")?;
            }
            Channel::Fd(fd) => {
                // SAFETY: p is live; libcriu takes the descriptor and closes it.
                unsafe { sys::criu_local_set_service_fd(p, fd.into_raw_fd()) };
            }
            Channel::OwnSwrk {
                child,
                fd,
                deadline,
            } => {
                // SAFETY: as above.
                unsafe { sys::criu_local_set_service_fd(p, fd.into_raw_fd()) };
                self.guarded = Some(Guarded { child, deadline });
            }
        }
        Ok(())
    }

    /// Calls libcriu with the closures of `opts` and `iter` installed, under
    /// the global lock (unless the call blocks on a peer of this same
    /// process: a lazy dump), watched by a watchdog if there is a deadline.
    pub(crate) fn call(
        self,
        opts: &mut Options<'a>,
        iter: Option<&mut IterFn<'_>>,
        call: impl FnOnce(*mut sys::criu_opts) -> c_int,
    ) -> Finished<'a> {
        let blocks_on_peer = self.op == Operation::Dump && opts.wants_lazy_pages();
        let sibling = opts
            .get_restore_sibling()
            .then(|| opts.get_images_dir().and_then(root_pid_at))
            .flatten();
        let called = {
            let _lock =
                (!blocks_on_peer).then(|| LIBCRIU.lock().unwrap_or_else(|e| e.into_inner()));
            let _in_call = InCall::enter();
            // SAFETY: the closures live in `opts` and `iter`, which outlive
            // `installed`; it is finished on this thread before they end.
            let installed = unsafe { Installed::new(opts.notify.as_deref_mut(), iter) };
            let dog = self.guarded.as_ref().and_then(|g| {
                let pid = g.child.pid().map_or(0, |p| p as i32);
                Some(Watchdog::start(pid, sibling, g.deadline?))
            });
            let start = Instant::now();
            let rc = call(self.raw.as_ptr());
            let errno = Errno::last_raw();
            let wall = start.elapsed();
            Called {
                rc,
                errno,
                wall,
                outcome: installed.finish(),
                killed: dog.and_then(Watchdog::finish),
            }
        };
        let Request {
            raw,
            config,
            guarded,
            report,
            ..
        } = self;
        // Freeing the handle closes libcriu's end of the crate's swrk
        // socket; the swrk then exits on its own and is reaped.
        drop((config, raw));
        let deadline = guarded.and_then(|mut g| {
            g.child.reap_within(Duration::from_secs(5));
            g.deadline
        });
        Finished {
            report,
            deadline,
            called,
        }
    }
}

/// What a libcriu call left: its return, errno, time and closures' outcome.
pub(crate) struct Finished<'a> {
    report: Reporting<'a>,
    deadline: Option<Duration>,
    called: Called,
}

/// libcriu's return, its errno, the call's time, what the closures did,
/// and how many tasks the watchdog killed if it fired.
struct Called {
    rc: c_int,
    errno: i32,
    wall: Duration,
    outcome: Outcome,
    killed: Option<usize>,
}

impl Finished<'_> {
    /// libcriu's non-negative result and the call's time, or the error:
    /// a closure's panic resumed, the deadline, a refusal by a closure, an
    /// abort, or libcriu's code, with the log's error lines attached.
    pub(crate) fn interpret(self) -> Result<(c_int, Duration)> {
        let Finished {
            report,
            deadline,
            called,
        } = self;
        let Called {
            rc,
            errno,
            wall,
            outcome,
            killed,
        } = called;
        if let Some(panic) = outcome.panic {
            std::panic::resume_unwind(panic);
        }
        if let (Some(n), Some(deadline)) = (killed, deadline) {
            return Err(report.with_log(deadline_error(report.ctx.clone(), deadline, n)));
        }
        if rc >= 0 {
            return Ok((rc, wall));
        }
        let ctx = report.ctx.clone();
        let err = if let Some((event, reason)) = outcome.refused {
            Error::NotificationRefused { ctx, event, reason }
        } else if outcome.aborted {
            Error::Aborted {
                ctx,
                iterations: outcome.iterations,
            }
        } else {
            map_rc(ctx, rc, errno)
        };
        Err(report.with_log(err))
    }
}

impl Reporting<'_> {
    /// Adds the error lines of CRIU's log, when CRIU ran at all.
    fn with_log(&self, mut err: Error) -> Error {
        if matches!(err, Error::Connect { .. }) {
            return err;
        }
        if let (Some(dir), Some(c)) = (self.work_dir, err.context_mut()) {
            if let Ok(bytes) = read_tail_at(dir, &self.log_name, MAX_LOG_TAIL) {
                c.log_errors = error_lines(&String::from_utf8_lossy(&bytes));
                c.log_file = Some(self.log_name.clone());
            }
        }
        err
    }
}

/// The error of a call whose deadline passed and whose tasks were killed.
fn deadline_error(ctx: Context, deadline: Duration, killed: usize) -> Error {
    let outcome = match (ctx.operation, ctx.pid) {
        (Some(Operation::Dump | Operation::PreDump | Operation::DumpIters), Some(pid)) => {
            let state = if crate::tree::alive(pid) {
                "is still running"
            } else {
                "is NOT running"
            };
            format!("CRIU was killed and reaped ({killed} task(s)); pid {pid} {state}")
        }
        _ => format!(
            "CRIU and what it had restored were killed ({killed} task(s)), and those that were this process's children reaped; nothing restored is left"
        ),
    };
    Error::DeadlineExceeded {
        ctx,
        deadline,
        outcome,
    }
}

/// The root pid recorded in the images (see [`crate::ImagesDir::root_pid`]).
fn root_pid_at(dir: BorrowedFd<'_>) -> Option<i32> {
    crate::images::root_pid_of(&read_at(dir, "pstree.img", MAX_IMAGE_READ).ok()?).ok()
}

#[cfg(criu_3_19)]
fn set_config_file(raw: &RawOpts, _op: Operation, path: &Path) -> Result<()> {
    let c = c_path(path, "config file")?;
    // SAFETY: raw is live; libcriu copies the string.
    let rc = unsafe { sys::criu_local_set_config_file(raw.as_ptr(), c.as_ptr()) };
    cvt(rc, "set_config_file")?;
    Ok(())
}

#[cfg(not(criu_3_19))]
fn set_config_file(_raw: &RawOpts, op: Operation, _path: &Path) -> Result<()> {
    Err(Error::Unsupported {
        ctx: Context::new(op, None),
        what: "this libcriu has no criu_local_set_config_file, needed for CLI-only options".into(),
    })
}

/// The crate's own config file for CLI-only options: mode 0600 in a
/// private 0700 directory, removed on drop.
struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn write(lines: &[String]) -> Result<ConfigFile> {
        // Private before anything is written into it.
        let dir = private_dir("criu-rs-config-")
            .map_err(|e| Error::io("creating a private directory for the CRIU config file", e))?;
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

/// Maps a negative libcriu return (see the table in criu.h) to an error.
fn map_rc(ctx: Context, rc: c_int, errno: i32) -> Error {
    let os = |fallback: Errno| {
        if errno > 0 {
            std::io::Error::from_raw_os_error(errno)
        } else {
            std::io::Error::from(fallback)
        }
    };
    // saturating: -i32::MIN does not fit (libcriu never returns it, but a
    // bad peer's answer must not panic).
    match rc.saturating_neg() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
        assert!(matches!(
            map_rc(ctx(), c_int::MIN, 0),
            Error::Refused { .. }
        ));
    }
}
