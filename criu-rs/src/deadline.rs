//! Deadlines: a watchdog that kills the `criu swrk` the crate started
//! itself for the call (see `spawn.rs`), and everything it forked, when
//! the operation's time is up.
//!
//! It acts only on what the call created: the helper's tree and, for a
//! restore whose root CRIU creates as its sibling (the caller's child),
//! the caller's children that appeared during the call with the images'
//! root pid. Every signal goes through a pidfd opened while the task was
//! known to be the right one, and the caller's children it kills are
//! reaped.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::pidfd::Pidfd;
use crate::tree::{listed, open_listed, tree};

/// Kills the helper's whole tree when the deadline passes, unless stopped
/// first. Returns how many tasks it killed.
pub(crate) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<Option<usize>>>,
}

impl Watchdog {
    /// `sibling`: the pid (as seen in its own PID namespace) a restored
    /// root will have if CRIU creates it as its sibling, i.e. our child,
    /// rather than its child (`restore_child`).
    pub(crate) fn start(helper: i32, sibling: Option<i32>, deadline: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        // Recorded before the call: the children this call did not create.
        let before = if sibling.is_some() {
            our_children()
                .into_iter()
                .filter_map(|p| Pidfd::open(p).ok())
                .collect()
        } else {
            Vec::new()
        };
        let helper = Pidfd::open(helper).ok();
        let handle = std::thread::spawn(move || match rx.recv_timeout(deadline) {
            Err(mpsc::RecvTimeoutError::Timeout) => Some(expire(helper, sibling, &before)),
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

/// Kills the helper's tree and what it restored as our children; reaps
/// the latter (the helper is reaped by its owner). Returns how many tasks
/// it killed.
fn expire(helper: Option<Pidfd>, sibling: Option<i32>, before: &[Pidfd]) -> usize {
    let Some(helper) = helper else {
        return 0;
    };
    // Stop the helper first, so it cannot react to its children dying.
    let _ = helper.signal(libc::SIGSTOP);
    let siblings = restored_siblings(helper.pid(), sibling, before);
    let mut victims = tree_of(helper);
    for root in &siblings {
        victims.extend(tree_of_descendants(root));
    }
    let killed = victims
        .iter()
        .chain(&siblings)
        .rev()
        .filter(|p| p.signal(libc::SIGKILL).is_ok())
        .count();
    for root in &siblings {
        let _ = root.reap();
    }
    killed
}

/// `root` and every task below it, each as a pidfd opened as soon as it
/// was seen.
fn tree_of(root: Pidfd) -> Vec<Pidfd> {
    let mut out = tree_of_descendants(&root);
    out.insert(0, root);
    out
}

fn tree_of_descendants(root: &Pidfd) -> Vec<Pidfd> {
    let below = tree(root.pid()).split_off(1);
    open_listed(&listed(&below))
}

/// This process's children now.
fn our_children() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|t| {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            kids.split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A task's pid in its own (innermost) PID namespace.
fn innermost_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Our children that CRIU restored as its siblings during this call: not
/// the helper, not a child that existed before the call (still the same
/// process, per its pidfd), and with the images' root pid in its own PID
/// namespace (the root keeps its pid, or is the init of a new namespace
/// with the pid it had in the old one).
fn restored_siblings(helper: i32, expected: Option<i32>, before: &[Pidfd]) -> Vec<Pidfd> {
    let Some(expected) = expected else {
        return Vec::new();
    };
    let existed = |kid: i32| before.iter().any(|b| b.pid() == kid && b.signal(0).is_ok());
    our_children()
        .into_iter()
        .filter(|&kid| kid != helper && !existed(kid))
        .filter(|&kid| innermost_pid(kid) == Some(expected))
        .filter_map(|kid| Pidfd::open(kid).ok())
        .collect()
}
