//! The source tree while it is being moved: stopped, then either killed
//! (the destination runs it) or continued (anything failed). Every signal
//! goes through a pidfd taken when the tree was stopped: the tree may stay
//! stopped for as long as a lazy migration serves its pages, and a pid
//! could be reused by then.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::wire::migration;
use crate::error::{Error, Result};
use crate::pidfd::Pidfd;
use crate::tree::{alive, state, tree_pidfds};

/// How long the tasks may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a task that has not stopped yet is sent `SIGSTOP` again.
const RESTOP_EVERY: Duration = Duration::from_millis(20);

/// A stopped source tree: continued on drop unless killed.
pub(super) struct StoppedTree {
    tasks: Vec<Pidfd>,
    killed: bool,
}

impl StoppedTree {
    /// Stops every task of the tree rooted at `root` and waits until each
    /// is really stopped, so that nothing runs after this.
    pub(super) fn stop(root: i32) -> Result<StoppedTree> {
        let mut stopped = StoppedTree {
            tasks: Vec::new(),
            killed: false,
        };
        for task in tree_pidfds(root) {
            let p = task.pid();
            match task.signal(Signal::SIGSTOP as i32) {
                Ok(()) => stopped.tasks.push(task),
                // Exited and reaped since the listing: nothing to stop.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("stopping task {p} of the source tree"),
                        e,
                    ))
                }
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for task in &stopped.tasks {
            wait_stopped(task, deadline)?;
        }
        Ok(stopped)
    }

    /// Kills the tree: the destination runs it now.
    pub(super) fn kill(mut self) {
        self.signal_all(Signal::SIGKILL);
        self.killed = true;
    }

    /// Kills the tree and waits (up to [`STOP_TIMEOUT`]) until every task
    /// has exited, so that their sockets are closed.
    pub(super) fn kill_and_wait(self) {
        let pids: Vec<i32> = self.tasks.iter().map(Pidfd::pid).collect();
        self.kill();
        let deadline = Instant::now() + STOP_TIMEOUT;
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

impl Drop for StoppedTree {
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
        if matches!(seen, Some('T' | 't' | 'Z' | 'X') | None) {
            return Ok(());
        }
        let now = Instant::now();
        if now > deadline {
            let seen = seen.map_or("gone".to_string(), |c| format!("state {c}"));
            return Err(migration(
                format!("task {p} did not stop within {STOP_TIMEOUT:?} (last seen: {seen})"),
                None,
            ));
        }
        if now.duration_since(asked) >= RESTOP_EVERY {
            let _ = task.signal(Signal::SIGSTOP as i32);
            asked = now;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Continues every task of the tree rooted at `root` (the restored tree,
/// which CRIU restores stopped).
pub(super) fn continue_tree(root: i32) {
    for task in tree_pidfds(root) {
        let _ = task.signal(Signal::SIGCONT as i32);
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::StoppedTree;
    use crate::tree::{state, tree};

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
        let stopped = StoppedTree::stop(root);
        assert_eq!(state(root), Some('T'), "the parent is stopped");
        assert_eq!(state(zombie), Some('Z'));
        let stopped = stopped.expect("a tree with a zombie stops");
        stopped.kill();
        parent.wait().expect("reaping the parent");
    }
}
