//! Notifications: CRIU's action-script events delivered to a Rust closure.
//!
//! libcriu's callback takes no user-data pointer and runs synchronously on
//! the thread that made the request, so the closure of the running request
//! lives in a thread-local slot for exactly the duration of the call. A
//! panic in the closure is caught at the C boundary, fails the operation,
//! and is resumed by the caller once libcriu has returned.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CStr};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Mutex;

use crate::sys;

/// What CRIU is about to do or has done. Names follow CRIU's action scripts.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Before image streaming starts (`pre-stream`).
    PreStream,
    /// Before the tasks are frozen (`pre-dump`).
    PreDump,
    /// The tasks are dumped and still frozen (`post-dump`). Refusing it
    /// fails the dump and the tasks resume.
    PostDump,
    /// Before the restore starts (`pre-restore`).
    PreRestore,
    /// The tasks are restored, not yet resumed (`post-restore`); the pid
    /// is the restored root. Refusing it fails the restore, and CRIU kills
    /// the tasks.
    PostRestore,
    /// The network is about to be locked (`network-lock`).
    NetworkLock,
    /// The network has been unlocked (`network-unlock`).
    NetworkUnlock,
    /// Namespaces are being set up; the pid is the restored root
    /// (`setup-namespaces`).
    SetupNamespaces,
    /// Namespaces are set up (`post-setup-namespaces`).
    PostSetupNamespaces,
    /// The restored tasks are about to be resumed (`pre-resume`).
    /// Refusing it fails the restore; CRIU itself only logs the refusal
    /// and resumes the tasks, so the crate kills and reaps them.
    PreResume,
    /// The restored tasks are running (`post-resume`). Refusing it fails
    /// the restore, and the crate kills and reaps the tasks.
    PostResume,
    /// CRIU sent the master side of an orphaned pty (`orphan-pts-master`);
    /// the closure owns the descriptor.
    OrphanPtsMaster(Option<OwnedFd>),
    /// A daemon mode of CRIU is ready (`status-ready`).
    StatusReady,
    /// CRIU asks which external files exist (`query-ext-files`).
    QueryExtFiles,
    /// An event this crate does not know yet, by CRIU's name.
    Other(String),
}

impl Event {
    fn from_action(action: &str, fd: impl FnOnce() -> Option<OwnedFd>) -> Event {
        match action {
            "pre-stream" => Event::PreStream,
            "pre-dump" => Event::PreDump,
            "post-dump" => Event::PostDump,
            "pre-restore" => Event::PreRestore,
            "post-restore" => Event::PostRestore,
            "network-lock" => Event::NetworkLock,
            "network-unlock" => Event::NetworkUnlock,
            "setup-namespaces" => Event::SetupNamespaces,
            "post-setup-namespaces" => Event::PostSetupNamespaces,
            "pre-resume" => Event::PreResume,
            "post-resume" => Event::PostResume,
            "orphan-pts-master" => Event::OrphanPtsMaster(fd()),
            "status-ready" => Event::StatusReady,
            "query-ext-files" => Event::QueryExtFiles,
            other => Event::Other(other.to_string()),
        }
    }

    /// CRIU's name of the event, as in its action scripts.
    pub fn name(&self) -> &str {
        match self {
            Event::PreStream => "pre-stream",
            Event::PreDump => "pre-dump",
            Event::PostDump => "post-dump",
            Event::PreRestore => "pre-restore",
            Event::PostRestore => "post-restore",
            Event::NetworkLock => "network-lock",
            Event::NetworkUnlock => "network-unlock",
            Event::SetupNamespaces => "setup-namespaces",
            Event::PostSetupNamespaces => "post-setup-namespaces",
            Event::PreResume => "pre-resume",
            Event::PostResume => "post-resume",
            Event::OrphanPtsMaster(_) => "orphan-pts-master",
            Event::StatusReady => "status-ready",
            Event::QueryExtFiles => "query-ext-files",
            Event::Other(name) => name,
        }
    }
}

/// One notification: the event and, where CRIU gives one, the pid of the
/// root task it concerns.
#[derive(Debug)]
#[non_exhaustive]
pub struct Notification {
    /// What happened.
    pub event: Event,
    /// The root task's pid, when CRIU sent one.
    pub pid: Option<i32>,
}

/// The outcome of the closures of one call, collected by the trampolines.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) refused: Option<(String, String)>,
    pub(crate) panic: Option<Box<dyn Any + Send + 'static>>,
    pub(crate) aborted: bool,
    pub(crate) iterations: u32,
}

/// What the `dump_iters` closure decides after each pre-dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iteration {
    /// Run another pre-dump pass.
    Again,
    /// Do the final dump now.
    Final,
    /// Stop: the tasks keep running and nothing more is dumped.
    Abort,
}

pub(crate) type IterFn<'a> = dyn FnMut(u32) -> Iteration + 'a;

/// A closure called for each notification CRIU sends (what
/// [`crate::Options::on_notify`] stores).
pub(crate) type NotifyFn<'a> = dyn FnMut(Notification) -> ControlFlow<String> + 'a;

thread_local! {
    static NOTIFY: Cell<Option<NonNull<NotifyFn<'static>>>> = const { Cell::new(None) };
    static ITER: Cell<Option<NonNull<IterFn<'static>>>> = const { Cell::new(None) };
    static OUTCOME: RefCell<Outcome> = RefCell::new(Outcome::default());
}

/// Installs the closures of one call in this thread's slots; removes them
/// (and hands back the outcome) when finished, even on unwinding.
pub(crate) struct Installed {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Installed {
    /// # Safety
    ///
    /// The closures must stay alive and unmoved until the returned guard is
    /// dropped or finished; the guard must be dropped on this thread.
    pub(crate) unsafe fn new(
        notify: Option<&mut NotifyFn<'_>>,
        iter: Option<&mut IterFn<'_>>,
    ) -> Installed {
        // Lifetimes are erased here; the guard clears the slots before the
        // borrows end.
        let n = notify.map(|f| {
            let p = NonNull::from(f);
            // SAFETY: only the lifetime changes; see the function contract.
            unsafe { std::mem::transmute::<NonNull<NotifyFn<'_>>, NonNull<NotifyFn<'static>>>(p) }
        });
        let i = iter.map(|f| {
            let p = NonNull::from(f);
            // SAFETY: as above.
            unsafe { std::mem::transmute::<NonNull<IterFn<'_>>, NonNull<IterFn<'static>>>(p) }
        });
        NOTIFY.with(|c| c.set(n));
        ITER.with(|c| c.set(i));
        OUTCOME.with(|o| *o.borrow_mut() = Outcome::default());
        Installed {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Removes the closures and returns what they did.
    pub(crate) fn finish(self) -> Outcome {
        drop(self);
        OUTCOME.with(|o| std::mem::take(&mut *o.borrow_mut()))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        NOTIFY.with(|c| c.set(None));
        ITER.with(|c| c.set(None));
    }
}

/// libcriu's notification callback.
pub(crate) unsafe extern "C" fn notify_trampoline(
    action: *mut c_char,
    na: sys::criu_notify_arg_t,
) -> c_int {
    let Some(mut f) = NOTIFY.with(Cell::get) else {
        return 0;
    };
    if action.is_null() {
        return 0;
    }
    if OUTCOME.with(|o| o.borrow().panic.is_some()) {
        return -1;
    }
    // SAFETY: libcriu passes the NUL-terminated action name of the message.
    let name = unsafe { CStr::from_ptr(action) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `na` is the notification message libcriu is handling.
    let pid = unsafe { sys::criu_notify_pid(na) };
    let event = Event::from_action(&name, || {
        // SAFETY: a plain getter of libcriu's static.
        adopt_orphan_pts(unsafe { sys::criu_get_orphan_pts_master_fd() })
    });
    let note = Notification {
        event,
        pid: (pid > 0).then_some(pid),
    };
    // SAFETY: the slot holds a live closure for the duration of the call
    // (see Installed::new), and nothing else calls it meanwhile.
    let result = catch_unwind(AssertUnwindSafe(|| unsafe { f.as_mut()(note) }));
    match result {
        Ok(ControlFlow::Continue(())) => 0,
        Ok(ControlFlow::Break(reason)) => {
            OUTCOME.with(|o| o.borrow_mut().refused = Some((name, reason)));
            -1
        }
        Err(panic) => {
            OUTCOME.with(|o| {
                let mut o = o.borrow_mut();
                o.refused = Some((name, "the handler panicked".into()));
                o.panic = Some(panic);
            });
            -1
        }
    }
}

/// The placeholder parked on the number of the last orphan-pts descriptor
/// handed out (see [`adopt_orphan_pts`]).
static PTS_PLACEHOLDER: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The descriptor that arrived with an `orphan-pts-master` notification,
/// given `raw`, libcriu's orphan-pts slot. libcriu stores a received
/// descriptor's number there and never resets it, so the slot may name a
/// descriptor handed out long ago, whose number the caller's own file may
/// have taken since. To tell a fresh arrival from a stale number, the
/// number of each adopted descriptor is kept occupied by a placeholder
/// (`/dev/null`) of the crate's: the slot then names either our
/// placeholder (nothing arrived: `None`) or a descriptor the kernel just
/// gave libcriu. The caller gets it on a new close-on-exec number (libcriu
/// receives it without `MSG_CMSG_CLOEXEC`). One placeholder is held per
/// process, once an orphan pts has been received.
pub(crate) fn adopt_orphan_pts(raw: RawFd) -> Option<OwnedFd> {
    if raw < 0 {
        return None;
    }
    let mut placeholder = PTS_PLACEHOLDER.lock().unwrap_or_else(|e| e.into_inner());
    if placeholder.as_ref().map(AsRawFd::as_raw_fd) == Some(raw) {
        return None;
    }
    // SAFETY: fcntl on a number; fails cleanly if it is not open.
    let moved = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
    if moved < 0 {
        return None;
    }
    // SAFETY: `moved` was just returned by the kernel; nobody else owns it.
    let adopted = unsafe { OwnedFd::from_raw_fd(moved) };
    let null = std::fs::File::open("/dev/null").ok()?;
    // SAFETY: dup3 atomically closes the received original at `raw` and
    // puts the placeholder there; both descriptors are open.
    if unsafe { libc::dup3(null.as_raw_fd(), raw, libc::O_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: `raw` now holds our placeholder, owned by nobody else; the
    // previous placeholder (if any) is closed as it is replaced.
    *placeholder = Some(unsafe { OwnedFd::from_raw_fd(raw) });
    Some(adopted)
}

/// libcriu's `dump_iters` callback.
pub(crate) unsafe extern "C" fn iter_trampoline(_pi: sys::criu_predump_info) -> c_int {
    let Some(mut f) = ITER.with(Cell::get) else {
        return -libc::ECANCELED;
    };
    let n = OUTCOME.with(|o| {
        let mut o = o.borrow_mut();
        o.iterations += 1;
        o.iterations
    });
    // SAFETY: as in notify_trampoline.
    let result = catch_unwind(AssertUnwindSafe(|| unsafe { f.as_mut()(n) }));
    match result {
        Ok(Iteration::Again) => 1,
        Ok(Iteration::Final) => 0,
        Ok(Iteration::Abort) => {
            OUTCOME.with(|o| o.borrow_mut().aborted = true);
            -libc::ECANCELED
        }
        Err(panic) => {
            OUTCOME.with(|o| o.borrow_mut().panic = Some(panic));
            -libc::ECANCELED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn only_a_descriptor_that_really_arrived_is_adopted() {
        // A "received" descriptor, as libcriu gets it: not close-on-exec.
        let mut ends = [0; 2];
        // SAFETY: a valid out-array of two ints.
        assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
        // SAFETY: the write end is ours alone.
        let write = unsafe { OwnedFd::from_raw_fd(ends[1]) };
        let raw = ends[0];
        let adopted = adopt_orphan_pts(raw).expect("a fresh arrival is adopted");
        assert_ne!(adopted.as_raw_fd(), raw, "handed out on a new number");
        // SAFETY: as in is_open.
        let flags = unsafe { libc::fcntl(adopted.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        drop(write);
        // The caller closes it and opens a file of its own.
        drop(adopted);
        let mine = std::fs::File::open("/dev/zero").unwrap();
        // A later notification without a descriptor: libcriu's slot still
        // says `raw`. Nothing is adopted, and the caller's file stays open
        // (before, the stale number was wrapped and closed on drop).
        assert!(adopt_orphan_pts(raw).is_none());
        assert!(is_open(mine.as_raw_fd()));
        assert!(adopt_orphan_pts(-1).is_none());
    }
}
