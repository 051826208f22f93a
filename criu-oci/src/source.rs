//! The source side of a move through a registry: dump the tree and keep it
//! stopped (alive, `SIGSTOP`ped) until the destination has restored it;
//! then kill it, or, if anything failed, continue it where it was.
//!
//! As in `criu::migrate`, the tree is stopped at CRIU's pre-dump
//! notification (CRIU has started and not yet frozen it, so CRIU's
//! start-up is not downtime) and dumped with `leave_running`.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A stopped source tree: continued on drop unless [`StoppedTree::kill`]ed.
#[derive(Debug)]
pub struct StoppedTree {
    pids: Vec<i32>,
    /// When it was stopped.
    pub since: Instant,
    killed: bool,
}

impl StoppedTree {
    /// Stops every task of the tree rooted at `root` and waits until each
    /// is really stopped.
    pub fn stop(root: i32) -> std::io::Result<StoppedTree> {
        let mut t = StoppedTree {
            pids: Vec::new(),
            since: Instant::now(),
            killed: false,
        };
        for p in tree(root) {
            signal(p, libc::SIGSTOP)?;
            t.pids.push(p);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for &p in &t.pids {
            while !matches!(state(p), Some('T' | 't') | None) {
                if Instant::now() > deadline {
                    return Err(std::io::Error::other(format!(
                        "task {p} did not stop within 5 s"
                    )));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(t)
    }

    /// The destination has restored the tree: the source copy goes.
    pub fn kill(mut self) {
        for &p in &self.pids {
            let _ = signal(p, libc::SIGKILL);
        }
        self.killed = true;
    }
}

impl Drop for StoppedTree {
    fn drop(&mut self) {
        if !self.killed {
            for &p in &self.pids {
                let _ = signal(p, libc::SIGCONT);
            }
        }
    }
}

/// Dumps the tree rooted at `pid` into `images`, leaving it stopped.
/// `customize` adds the caller's options (shell job, namespaces...).
/// On failure the tree runs on.
pub fn dump_stopped(
    criu: &criu::Criu,
    pid: i32,
    images: &criu::ImagesDir,
    customize: impl Fn(&mut criu::Options<'_>),
) -> Result<(criu::DumpReport, StoppedTree)> {
    let slot: Arc<Mutex<Option<StoppedTree>>> = Arc::default();
    let stop_slot = slot.clone();
    let mut o = criu::Options::new();
    customize(&mut o);
    o.pid(pid)
        .images_dir(images)
        .log_file("dump.log")
        .leave_running(true)
        .on_notify(move |n| {
            if matches!(n.event, criu::Event::PreDump) {
                match StoppedTree::stop(pid) {
                    Ok(t) => *stop_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(t),
                    Err(e) => return ControlFlow::Break(format!("stopping the source: {e}")),
                }
            }
            ControlFlow::Continue(())
        });
    let report = criu.dump(&mut o);
    let stopped = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    let report = report?;
    let stopped = stopped.ok_or_else(|| Error::Malformed(
        "CRIU sent no pre-dump notification, so the source was never stopped and ran on; the images are stale".into(),
    ))?;
    Ok((report, stopped))
}

/// Sends `SIGCONT` to every task of the tree rooted at `root` (a tree
/// restored from a dump of stopped tasks comes back stopped).
pub fn continue_tree(root: i32) {
    for p in tree(root) {
        let _ = signal(p, libc::SIGCONT);
    }
}

fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a pid we were given and a valid signal.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Every task of the tree rooted at `root`, root first.
fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", out[i])) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<i32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}
