//! The held source: a process tree dumped and kept stopped, alive, until
//! its new home has restored it, then killed; resumed if anything failed.
//!
//! Every way of moving a tree that must not lose it (a live migration, a
//! move through a registry, two commands on two hosts) holds the source
//! this way:
//!
//! * the tree is stopped (`SIGSTOP`, every task) at CRIU's pre-dump
//!   notification, when CRIU has started but not yet frozen it, so CRIU's
//!   start-up is not downtime; it is dumped with `leave_running`, which
//!   leaves it stopped, alive;
//! * its tasks are held through pidfds from then on: a signal of the hold
//!   can never reach a process that reused one of their pids, however long
//!   the tree stays stopped;
//! * dropping the [`HeldTree`] continues it (`SIGCONT`): a failure
//!   anywhere resumes the source. Only [`HeldTree::kill`] (or
//!   [`HeldTree::kill_and_wait`]) ends it, once the destination runs its
//!   copy.
//!
//! ```no_run
//! use criu::migrate::hold;
//! use criu::{Criu, ImagesDir, Options};
//!
//! # fn main() -> criu::Result<()> {
//! let images = ImagesDir::create("/var/tmp/move/images")?;
//! let mut o = Options::new();
//! o.pid(4242).images_dir(&images).log_file("dump.log");
//! let (dump, held) = hold::dump(&Criu::new(), &mut o)?;
//! // ... carry the images to the destination and restore them there ...
//! # let restored_there = true;
//! if restored_there {
//!     held.kill(); // the destination runs the tree now
//! } // else: dropping `held` resumes the source where it was
//! # let _ = dump; Ok(())
//! # }
//! ```

use std::fmt;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::wire::failed;
use crate::client::Criu;
use crate::error::{Error, InvalidKind, Operation, Result, SourceState, Step};
use crate::notify::{Event, Notification};
use crate::options::Options;
use crate::pidfd::Pidfd;
use crate::report::DumpReport;
use crate::tree::{alive, state, thread_states, tree, tree_pidfds};

/// How long the tasks may take to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a task that has not stopped yet is sent `SIGSTOP` again.
const RESTOP_EVERY: Duration = Duration::from_millis(20);

/// How many times the tree is listed again for tasks forked while it was
/// being stopped (a tree that forks faster than this is refused).
const MAX_LISTINGS: usize = 64;

/// A stopped process tree, held through pidfds: continued on drop unless
/// killed. See the module docs.
pub struct HeldTree {
    root: i32,
    tasks: Vec<Pidfd>,
    since: Instant,
    killed: bool,
}

impl fmt::Debug for HeldTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldTree")
            .field("root", &self.root)
            .field("pids", &self.pids())
            .field("since", &self.since)
            .finish()
    }
}

impl HeldTree {
    /// Stops every task of the tree rooted at `root` and waits (up to
    /// [`STOP_TIMEOUT`]) until each is really stopped, so that nothing of
    /// it runs after this. Tasks forked meanwhile are stopped too; tasks
    /// that exit meanwhile are skipped (a zombie counts as stopped: it
    /// stays one while its stopped parent does not reap it). On error the
    /// tasks stopped so far are continued.
    pub fn stop(root: i32) -> Result<HeldTree> {
        let mut held = HeldTree {
            root,
            tasks: Vec::new(),
            since: Instant::now(),
            killed: false,
        };
        for _ in 0..MAX_LISTINGS {
            if !held.stop_new_tasks()? {
                let deadline = Instant::now() + STOP_TIMEOUT;
                for task in &held.tasks {
                    wait_stopped(task, deadline)?;
                }
                held.since = Instant::now();
                return Ok(held);
            }
        }
        Err(not_stopped(format!(
            "the tree of {root} kept forking while it was being stopped"
        )))
    }

    /// Stops the tasks of the tree not held yet; false when there were
    /// none. A pid is taken only if it is still in the tree once its pidfd
    /// is open, so the pidfd is of a task of the tree, not of a process
    /// that took the pid of one that exited after the listing.
    fn stop_new_tasks(&mut self) -> Result<bool> {
        let fresh = tree_pidfds(self.root, &self.pids());
        if fresh.is_empty() {
            return Ok(false);
        }
        let confirmed = tree(self.root);
        for task in fresh {
            if !confirmed.contains(&task.pid()) {
                continue;
            }
            match task.signal(Signal::SIGSTOP as i32) {
                Ok(()) => self.tasks.push(task),
                // Exited and reaped since the listing: nothing to stop.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    let p = task.pid();
                    return Err(Error::io(
                        format!("stopping task {p} of the source tree"),
                        e,
                    ));
                }
            }
        }
        Ok(true)
    }

    /// The root's pid.
    pub fn root(&self) -> i32 {
        self.root
    }

    /// When every task was seen stopped.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The pids of the held tasks (as they were when stopped).
    pub fn pids(&self) -> Vec<i32> {
        self.tasks.iter().map(Pidfd::pid).collect()
    }

    /// Continues the tree now (what dropping it does).
    pub fn resume(self) {}

    /// Kills the tree (`SIGKILL`, every held task): its copy runs
    /// elsewhere now. A process that reused a pid of the tree is never
    /// signalled.
    pub fn kill(mut self) {
        self.signal_all(Signal::SIGKILL);
        self.killed = true;
    }

    /// Kills the tree and waits up to `timeout` until every task has
    /// exited (so that their sockets are closed, say).
    pub fn kill_and_wait(self, timeout: Duration) {
        let pids = self.pids();
        self.kill();
        let deadline = Instant::now() + timeout;
        for p in pids {
            while alive(p) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn signal_all(&self, signal: Signal) {
        for task in &self.tasks {
            let _ = task.signal(signal as i32);
        }
    }
}

impl Drop for HeldTree {
    fn drop(&mut self) {
        if !self.killed {
            self.signal_all(Signal::SIGCONT);
        }
    }
}

/// Waits until `task` is stopped (or gone) by `deadline`. The stop is
/// asked again every [`RESTOP_EVERY`]: a `SIGCONT` sent by anything else
/// between our `SIGSTOP` and the stop taking effect would otherwise leave
/// the task running, and a task that never stops is named with the state
/// it was last seen in.
fn wait_stopped(task: &Pidfd, deadline: Instant) -> Result<()> {
    let p = task.pid();
    let mut asked = Instant::now();
    loop {
        let seen = state(p);
        // A task that exited between the listing and the signal is a
        // zombie until its (now stopped) parent reaps it, which will not
        // happen before the parent runs again: it counts as stopped
        // (CRIU dumps zombies as such).
        if matches!(seen, Some('Z' | 'X') | None) {
            return Ok(());
        }
        // Stopped only once every thread is: the group stop reaches the
        // threads one by one, and CRIU, seizing a task whose leader
        // stopped but some thread not yet, fails with "Individually
        // stopped threads not supported" (seen with redis-server's
        // threads under load).
        if matches!(seen, Some('T' | 't')) && every_thread_stopped(p) {
            return Ok(());
        }
        let now = Instant::now();
        if now > deadline {
            let seen = seen.map_or("gone".to_string(), |c| format!("state {c}"));
            return Err(not_stopped(format!(
                "task {p} did not stop within {STOP_TIMEOUT:?} (last seen: {seen})"
            )));
        }
        if now.duration_since(asked) >= RESTOP_EVERY {
            let _ = task.signal(Signal::SIGSTOP as i32);
            asked = now;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Whether every thread of `pid` is stopped (or gone): a thread still
/// running has not reached the group stop yet.
fn every_thread_stopped(pid: i32) -> bool {
    // No threads to read: the task is gone, nothing of it runs.
    thread_states(pid).is_none_or(|threads| {
        threads
            .into_iter()
            .all(|seen| matches!(seen, Some('T' | 't' | 'Z' | 'X') | None))
    })
}

/// Continues every task of the tree rooted at `root`: a tree restored from
/// a held dump comes back stopped (CRIU restores the state it dumped).
pub fn continue_tree(root: i32) {
    for task in tree_pidfds(root, &[]) {
        let _ = task.signal(Signal::SIGCONT as i32);
    }
}

/// Dumps the tree of `options`' pid with `leave_running`, stopping it at
/// CRIU's pre-dump notification, and returns it held. A notification
/// handler already set on `options` sees every event first and may
/// refuse any (the dump then fails with the tree running). On failure the
/// tree runs on.
pub fn dump(criu: &Criu, options: &mut Options<'_>) -> Result<(DumpReport, HeldTree)> {
    let Some(pid) = options.get_pid() else {
        return Err(Error::invalid(
            Some(Operation::Dump),
            InvalidKind::Missing,
            "hold::dump needs the pid of the tree to hold (Options::pid)",
        ));
    };
    let slot = Slot::default();
    let user = options.notify.take();
    options
        .leave_running(true)
        .on_notify(at_pre_dump(pid, user, slot.clone(), || {
            ControlFlow::Continue(())
        }));
    let report = criu.dump(options);
    let held = slot.take();
    let report = report?;
    let held = held.ok_or_else(never_stopped)?;
    Ok((report, held))
}

/// The error of a dump that never sent its pre-dump notification.
pub(super) fn never_stopped() -> Error {
    failed(
        Step::Dump,
        SourceState::Untouched,
        "CRIU sent no pre-dump notification, so the source was never stopped and ran on \
         after the dump; the images are stale",
        None,
    )
}

/// The error of a tree that could not be stopped (the tasks stopped so far
/// were continued).
fn not_stopped(message: String) -> Error {
    failed(Step::Stop, SourceState::Resumed, message, None)
}

/// Where a dump's notification handler leaves the tree it stopped, and
/// when.
#[derive(Clone, Default)]
pub(super) struct Slot(Arc<Mutex<Option<HeldTree>>>);

impl Slot {
    /// Whether the dump stopped the tree (and it is held here).
    pub(super) fn is_held(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn put(&self, tree: HeldTree) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(tree);
    }

    /// The held tree, if the dump stopped it.
    pub(super) fn take(&self) -> Option<HeldTree> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A dump's notification handler: the caller's own handler (`user`)
/// first, then, at pre-dump, `before_stop` (which may refuse) and stopping
/// the tree of `pid` into `slot`.
pub(super) fn at_pre_dump<'a>(
    pid: i32,
    mut user: Option<Box<crate::options::NotifyFn<'a>>>,
    slot: Slot,
    mut before_stop: impl FnMut() -> ControlFlow<String> + 'a,
) -> impl FnMut(Notification) -> ControlFlow<String> + 'a {
    move |n| {
        let pre_dump = matches!(n.event, Event::PreDump);
        if let Some(user) = user.as_mut() {
            user(n)?;
        }
        if pre_dump {
            before_stop()?;
            match HeldTree::stop(pid) {
                Ok(t) => slot.put(t),
                Err(e) => return ControlFlow::Break(format!("stopping the source tree: {e}")),
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::HeldTree;
    use crate::tree::{state, thread_states, tree};

    /// A tree holding a child that exited but was not reaped (its parent
    /// execs `sleep`, which never waits) stops at once: the zombie counts
    /// as stopped.
    #[test]
    fn a_zombie_in_the_tree_counts_as_stopped() {
        let mut parent = Command::new("sh")
            .args(["-c", "true & exec sleep 30"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning sh");
        let root = parent.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let zombie = loop {
            let dead = tree(root).into_iter().find(|&p| state(p) == Some('Z'));
            if let Some(p) = dead {
                break p;
            }
            assert!(Instant::now() < deadline, "no zombie child appeared");
            std::thread::sleep(Duration::from_millis(5));
        };
        let held = HeldTree::stop(root);
        assert_eq!(state(root), Some('T'), "the parent is stopped");
        assert_eq!(state(zombie), Some('Z'));
        let held = held.expect("a tree with a zombie stops");
        held.kill();
        parent.wait().expect("reaping the parent");
    }

    /// A task counts as stopped only once every one of its threads is:
    /// CRIU refuses to seize a task whose leader stopped while a thread
    /// had not yet ("Individually stopped threads not supported").
    #[test]
    fn a_task_is_held_only_once_every_thread_is_stopped() {
        use std::io::BufRead;
        // Sixteen threads busy on the CPU (hashing releases Python's
        // lock), more than there are cores: the group stop reaches the
        // last of them a while after the leader.
        let script = "import hashlib, threading, time\n\
                      data = bytes(1 << 20)\n\
                      def spin():\n    while True: hashlib.sha256(data).digest()\n\
                      for _ in range(16): threading.Thread(target=spin, daemon=True).start()\n\
                      print('ready', flush=True)\ntime.sleep(60)";
        let mut py = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning python3");
        let pid = py.id() as i32;
        let mut line = String::new();
        let out = py.stdout.take().expect("its stdout");
        std::io::BufReader::new(out).read_line(&mut line).ok();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let held = HeldTree::stop(pid).expect("stops");
            seen.push(thread_states(pid).unwrap_or_default());
            drop(held);
        }
        let _ = py.kill();
        let _ = py.wait();
        assert_eq!(line.trim(), "ready");
        for states in seen {
            assert!(states.len() > 16, "the leader and its threads: {states:?}");
            assert!(
                states.iter().all(|s| matches!(s, Some('T' | 't'))),
                "held while a thread ran: {states:?}"
            );
        }
    }

    /// Dropped, a held tree runs on; `kill` ends it.
    #[test]
    fn a_held_tree_resumes_on_drop_and_dies_on_kill() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning sleep");
        let pid = child.id() as i32;
        let held = HeldTree::stop(pid).expect("stops");
        assert_eq!(state(pid), Some('T'));
        assert_eq!(held.pids(), vec![pid]);
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while state(pid) == Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(matches!(state(pid), Some('S' | 'R')), "continued");
        HeldTree::stop(pid).expect("stops again").kill();
        let status = child.wait().expect("reaping");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}
