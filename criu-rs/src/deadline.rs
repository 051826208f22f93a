//! Deadlines: a `criu swrk` the crate starts itself (so it knows the pid),
//! and a watchdog that kills it, and everything it forked, when the
//! operation's time is up.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;

use crate::daemon::hand_over_fd;
use crate::error::{Error, Result};
use crate::tree::tree;

/// The descriptor number the service socket gets in the child.
const SERVICE_FD: i32 = 3;

/// A `criu swrk` child of this process, serving one libcriu request over
/// the socket handed to libcriu with `criu_local_set_service_fd`.
pub(crate) struct OwnSwrk {
    child: Option<Child>,
}

impl OwnSwrk {
    /// Starts `binary swrk 3`; returns it and libcriu's end of the socket.
    pub(crate) fn spawn(binary: &Path) -> Result<(OwnSwrk, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::io("creating the CRIU service socket", e.into()))?;
        let mut cmd = Command::new(binary);
        cmd.arg("swrk")
            .arg(SERVICE_FD.to_string())
            .stdin(Stdio::null());
        hand_over_fd(&mut cmd, theirs.as_raw_fd(), SERVICE_FD, None);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {} swrk", binary.display()), e))?;
        drop(theirs);
        Ok((OwnSwrk { child: Some(child) }, ours))
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Reaps the helper once libcriu has closed its socket (it exits on
    /// its own then); kills it if it has not after `grace`.
    pub(crate) fn reap(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + grace;
        // It usually exits within microseconds of the reply: poll often at
        // first, then back off to 2 ms.
        let mut pause = Duration::from_micros(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(2));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for OwnSwrk {
    fn drop(&mut self) {
        self.reap(Duration::ZERO);
    }
}

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
