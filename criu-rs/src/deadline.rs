//! Deadlines: a watchdog that kills the `criu swrk` the crate started
//! itself for the call (see `spawn.rs`), and everything it forked, when
//! the operation's time is up.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::tree::tree;

/// Kills the helper's whole tree when the deadline passes, unless stopped
/// first. Returns how many tasks it killed.
pub(crate) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<Option<usize>>>,
}

impl Watchdog {
    /// `sibling`: the pid a restored root will have if CRIU creates it as
    /// its sibling (our child) rather than its child (`restore_child`).
    pub(crate) fn start(helper: i32, sibling: Option<i32>, deadline: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || match rx.recv_timeout(deadline) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Stop the helper first, so it cannot react to its children dying.
                let _ = kill(Pid::from_raw(helper), Signal::SIGSTOP);
                let mut victims = tree(helper);
                for root in restored_siblings(helper, sibling) {
                    victims.extend(tree(root));
                }
                for &p in victims.iter().rev() {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                Some(victims.len())
            }
            _ => None,
        });
        Watchdog {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops the watchdog; `Some(n)` if it fired and killed `n` tasks.
    pub(crate) fn finish(mut self) -> Option<usize> {
        drop(self.stop.take());
        self.handle.take().and_then(|h| h.join().ok()).flatten()
    }
}

/// Our children that CRIU restored as its siblings: the expected root pid,
/// or (for a tree that is the init of its own PID namespace, whose pid is
/// new) a child of ours in another PID namespace. The helper is excluded.
fn restored_siblings(helper: i32, expected: Option<i32>) -> Vec<i32> {
    if expected.is_none() {
        return Vec::new();
    }
    let me = std::process::id();
    let our_pidns = std::fs::metadata("/proc/self/ns/pid").ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for kid in kids
            .split_whitespace()
            .filter_map(|k| k.parse::<i32>().ok())
        {
            if kid == helper || kid as u32 == me {
                continue;
            }
            let ns = std::fs::metadata(format!("/proc/{kid}/ns/pid"))
                .ok()
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                });
            if Some(kid) == expected || (ns.is_some() && ns != our_pidns) {
                out.push(kid);
            }
        }
    }
    out
}
