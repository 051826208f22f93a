//! The source tree while it is being moved: stopped, then either killed
//! (the destination runs it) or continued (anything failed).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::wire::migration;
use crate::error::{Error, Result};
use crate::tree::{state, tree};

/// How long the tasks may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A stopped source tree: continued on drop unless killed.
pub(super) struct StoppedTree {
    pids: Vec<i32>,
    killed: bool,
}

impl StoppedTree {
    /// Stops every task of the tree rooted at `root` and waits until each
    /// is really stopped, so that nothing runs after this.
    pub(super) fn stop(root: i32) -> Result<StoppedTree> {
        let pids = tree(root);
        let mut stopped = StoppedTree {
            pids: Vec::new(),
            killed: false,
        };
        for &p in &pids {
            kill(Pid::from_raw(p), Signal::SIGSTOP).map_err(|e| {
                Error::io(format!("stopping task {p} of the source tree"), e.into())
            })?;
            stopped.pids.push(p);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for &p in &pids {
            while !matches!(state(p), Some('T' | 't') | None) {
                if Instant::now() > deadline {
                    return Err(migration(
                        format!("task {p} did not stop within {STOP_TIMEOUT:?}"),
                        None,
                    ));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(stopped)
    }

    /// Kills the tree: the destination runs it now.
    pub(super) fn kill(mut self) {
        self.signal_all(Signal::SIGKILL);
        self.killed = true;
    }

    fn signal_all(&self, signal: Signal) {
        for &p in &self.pids {
            let _ = kill(Pid::from_raw(p), signal);
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

/// Continues every task of the tree rooted at `root` (the restored tree,
/// which CRIU restores stopped).
pub(super) fn continue_tree(root: i32) {
    for p in tree(root) {
        let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
    }
}
