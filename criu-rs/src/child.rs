//! The restored tree: its root task when it is the caller's own child
//! ([`RestoredChild`]), and the tree of a restore that has not handed it
//! over yet ([`Unclaimed`]), killed and reaped if the restore fails.
//!
//! CRIU kills what it restored only for failures up to its post-restore
//! notification. After that point (a refused pre-resume or post-resume
//! notification, a response that cannot be sent or read) CRIU resumes
//! the tree and only logs the failure, while libcriu reports the error:
//! nobody would own the restored copy, which runs beside its source.

use std::cell::RefCell;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::notify::{Event, Notification};
use crate::pidfd::Pidfd;
use crate::tree::{parent, start_time, tree_pidfds};

/// How long the cleanup of a restored tree waits for the tasks it killed
/// to exit (a killed task exits in microseconds; one blocked in the
/// kernel, on a lazy page say, may take a moment).
const KILL_GRACE: Duration = Duration::from_secs(10);

/// A restored process tree whose root task is a child of this process
/// (from [`crate::Criu::restore_child`]), like [`std::process::Child`].
///
/// Dropping the handle of a child that is still running kills it and
/// every task below it with `SIGKILL` (stopping them all first, so that
/// none forks away) and reaps it, waiting at most 10 s for the tasks to
/// exit, so nothing outlives its owner by accident; call
/// [`RestoredChild::detach`] to keep it running, and take over reaping.
#[derive(Debug)]
pub struct RestoredChild {
    pid: i32,
    status: Option<ExitStatus>,
    detached: bool,
}

impl RestoredChild {
    pub(crate) fn new(pid: i32) -> RestoredChild {
        debug_assert!(pid > 0, "the client rejects pid {pid} as a bad response");
        RestoredChild {
            pid,
            status: None,
            detached: false,
        }
    }

    /// The pid of the restored root task (the pid it had when dumped).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal to the root task.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the child was already reaped",
            ));
        }
        kill(Pid::from_raw(self.pid), signal).map_err(io::Error::from)
    }

    /// Kills the root task with `SIGKILL` (does not wait).
    pub fn kill(&self) -> io::Result<()> {
        self.signal(Signal::SIGKILL)
    }

    fn waitpid(&mut self, flags: i32) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut raw = 0;
        loop {
            // SAFETY: plain waitpid on our own child with a valid out-pointer.
            let rc = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
            if rc == self.pid {
                let s = ExitStatus::from_raw(raw);
                self.status = Some(s);
                return Ok(Some(s));
            }
            if rc == 0 {
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Waits for the root task to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.waitpid(0)
            .map(|s| s.expect("blocking waitpid returns a status"))
    }

    /// Reaps the root task if it has exited; `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }

    /// Gives up ownership: the process keeps running after the handle is
    /// gone, and the caller must reap it (`waitpid`) when it exits.
    pub fn detach(mut self) -> i32 {
        self.detached = true;
        self.pid
    }
}

impl Drop for RestoredChild {
    fn drop(&mut self) {
        if self.detached || self.status.is_some() {
            return;
        }
        // Our unreaped child: the pid is still its own, whether it runs
        // or is a zombie.
        let Ok(root) = Pidfd::open(self.pid) else {
            return;
        };
        match start_time(self.pid) {
            Some(start) => {
                kill_tree(&root, start, Vec::new(), KILL_GRACE);
            }
            None => {
                let _ = root.try_reap();
            }
        }
    }
}

/// Stops every task of the tree rooted at `root` (which started at
/// `start`), listing it again until no new task appears so that none
/// forks away, then kills them all, with `known` (tasks of the tree seen
/// earlier); waits up to `grace` for them to exit and reaps those that
/// are this process's children. Every signal goes through a pidfd of the
/// task that was listed. Returns how many tasks were killed.
///
/// Best effort, as a cleanup must be: signals that fail are passed over
/// and a tree that keeps forking is killed as far as it was found. The
/// held source (`migrate::hold::HeldTree::stop`) stops a tree with other
/// rules (a task that left the tree meanwhile is not stopped, a failed
/// signal fails the hold, every thread must be seen stopped); the two
/// share the listing, [`tree_pidfds`], not the loop.
pub(crate) fn kill_tree(root: &Pidfd, start: u64, known: Vec<Pidfd>, grace: Duration) -> usize {
    let mut tasks = known;
    let _ = root.signal(libc::SIGSTOP);
    for t in &tasks {
        let _ = t.signal(libc::SIGSTOP);
    }
    // Bounded: each round stops what the previous one found, and stopped
    // tasks do not fork.
    for _ in 0..64 {
        // Listed by pid only while the root is the task that started at
        // `start` (held by the pidfd, but its pid may have been reaped and
        // reused if it is not our child).
        if root.signal(0).is_err() || start_time(root.pid()) != Some(start) {
            break;
        }
        let held: Vec<i32> = std::iter::once(root)
            .chain(&tasks)
            .map(Pidfd::pid)
            .collect();
        let new = tree_pidfds(root.pid(), &held);
        if new.is_empty() {
            break;
        }
        for t in &new {
            let _ = t.signal(libc::SIGSTOP);
        }
        tasks.extend(new);
    }
    let everyone = || std::iter::once(root).chain(tasks.iter());
    let killed = everyone()
        .filter(|t| t.signal(libc::SIGKILL).is_ok())
        .count();
    let end = Instant::now() + grace;
    for t in everyone() {
        if t.wait_exit(end.saturating_duration_since(Instant::now())) {
            let _ = t.try_reap();
        }
    }
    killed
}

/// The tree a restore is creating, from the moment CRIU names its root
/// (the pid of the `setup-namespaces` and `post-restore` notifications)
/// until the restore hands it over with [`Unclaimed::claim`]. Dropped
/// unclaimed (the restore failed, or a closure panicked), it kills the
/// tree and reaps what is this process's child.
///
/// A pid from a notification is taken only if it names a task that
/// started after the restore did, whose parent is this process or one of
/// its children (the `criu` it started, or libcriu did): a CRIU service
/// elsewhere reports pids of its own namespace, which are never taken.
pub(crate) struct Unclaimed {
    found: Rc<RefCell<Found>>,
    claimed: bool,
}

#[derive(Default)]
struct Found {
    /// The root, and when it started.
    root: Option<(Pidfd, u64)>,
    /// Every task of the tree at post-restore, while CRIU holds them.
    tasks: Vec<Pidfd>,
}

impl Unclaimed {
    /// Starts watching, before the restore's request starts.
    pub(crate) fn new() -> Unclaimed {
        Unclaimed {
            found: Rc::new(RefCell::new(Found::default())),
            claimed: false,
        }
    }

    /// What the restore's notification closure calls first, for every
    /// notification.
    pub(crate) fn observer(&self) -> impl Fn(&Notification) + 'static {
        let found = Rc::clone(&self.found);
        let since = boot_ticks();
        move |n| {
            let (Some(pid), true) = (
                n.pid,
                matches!(n.event, Event::SetupNamespaces | Event::PostRestore),
            ) else {
                return;
            };
            let mut found = found.borrow_mut();
            if found.root.is_none() {
                found.root = restored_by_this_call(pid, since);
            }
            if let (Event::PostRestore, Some((root, _))) = (&n.event, &found.root) {
                // Every task exists now and none runs yet.
                found.tasks = tree_pidfds(root.pid(), &[root.pid()]);
            }
        }
    }

    /// The restore succeeded: the tree is the caller's now.
    pub(crate) fn claim(mut self) {
        self.claimed = true;
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if self.claimed {
            return;
        }
        let Found { root, tasks } = std::mem::take(&mut *self.found.borrow_mut());
        if let Some((root, start)) = root {
            kill_tree(&root, start, tasks, KILL_GRACE);
        }
    }
}

/// A pidfd of `pid` (and its start time) if it is a task this restore
/// created: started at or after `since`, a child of this process or of
/// one of its children.
fn restored_by_this_call(pid: i32, since: u64) -> Option<(Pidfd, u64)> {
    let fd = Pidfd::open(pid).ok()?;
    let start = start_time(pid).filter(|&s| s >= since)?;
    let me = std::process::id() as i32;
    let dad = parent(pid)?;
    // Still the task the pidfd holds once read: its pid was not reused.
    let ours = (dad == me || parent(dad) == Some(me)) && fd.signal(0).is_ok();
    ours.then_some((fd, start))
}

/// Now, in the clock ticks since boot that `/proc/PID/stat` counts a
/// task's start in (rounded down, as the kernel rounds).
fn boot_ticks() -> u64 {
    // SAFETY: sysconf and clock_gettime with a valid out-pointer.
    let (hz, now) = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
        (libc::sysconf(libc::_SC_CLK_TCK).max(1) as u64, ts)
    };
    now.tv_sec as u64 * hz + now.tv_nsec as u64 / (1_000_000_000 / hz)
}
