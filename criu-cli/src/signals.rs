//! SIGINT, SIGTERM and SIGHUP during `send` and `receive`: the first one
//! breaks off the migration's connection (or the wait for one), which
//! fails the migration through its ordinary error path: the source
//! resumes its tree, the destination removes what it received. The
//! command then says so and exits with status 5.
//!
//! When criu-rs's cancellation API (migration core, #22) lands, the
//! handler calls it instead of shutting the socket down.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// What the handler breaks off when a signal arrives.
#[derive(Default)]
struct Targets {
    sockets: Vec<OwnedFd>,
}

/// Catches the three signals while alive.
pub struct Interrupts {
    caught: Arc<AtomicI32>,
    targets: Arc<Mutex<Targets>>,
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
    armed: Arc<AtomicBool>,
    /// Once set (`exit_leaving`), a signal ends the process at once,
    /// leaving this restored pid running.
    leave: Arc<AtomicI32>,
}

impl Interrupts {
    /// Starts catching SIGINT, SIGTERM and SIGHUP.
    pub fn catch() -> std::io::Result<Interrupts> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let caught = Arc::new(AtomicI32::new(0));
        let targets = Arc::new(Mutex::new(Targets::default()));
        let armed = Arc::new(AtomicBool::new(true));
        let leave = Arc::new(AtomicI32::new(0));
        let (c, t, a, l) = (
            caught.clone(),
            targets.clone(),
            armed.clone(),
            leave.clone(),
        );
        let thread = std::thread::spawn(move || {
            for sig in signals.forever() {
                let pid = l.load(Ordering::SeqCst);
                if pid > 0 {
                    eprintln!("interrupted: the restored tree (pid {pid}) keeps running");
                    std::process::exit(crate::error::Exit::Interrupted as i32);
                }
                if !a.load(Ordering::SeqCst) {
                    continue;
                }
                if c.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    if let Ok(t) = t.lock() {
                        for s in &t.sockets {
                            break_off(s);
                        }
                    }
                }
            }
        });
        Ok(Interrupts {
            caught,
            targets,
            handle,
            thread: Some(thread),
            armed,
            leave,
        })
    }

    /// Breaks `socket` (a connection or a listener, duplicated) off when
    /// a signal comes, at once if one came: a connection's reads and
    /// writes fail, a listener's `accept` returns.
    pub fn watch(&self, socket: impl Into<OwnedFd>) {
        let socket = socket.into();
        if self.caught().is_some() {
            break_off(&socket);
        }
        if let Ok(mut t) = self.targets.lock() {
            t.sockets.push(socket);
        }
    }

    /// Signals after this are ignored (past the point of no return: the
    /// destination restored the tree).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// From now on a signal ends this process at once, saying that the
    /// restored tree `pid` keeps running (it is detached then: the waiting
    /// `receive` goes, the tree stays).
    pub fn exit_leaving(&self, pid: i32) {
        self.leave.store(pid, Ordering::SeqCst);
    }

    /// The name of the signal caught, if any.
    pub fn caught(&self) -> Option<&'static str> {
        match self.caught.load(Ordering::SeqCst) {
            0 => None,
            SIGINT => Some("SIGINT"),
            SIGTERM => Some("SIGTERM"),
            SIGHUP => Some("SIGHUP"),
            _ => Some("a signal"),
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Shuts a socket down both ways (errors ignored: it may be closed).
fn break_off(socket: &OwnedFd) {
    // SAFETY: shutdown(2) on a descriptor we own; no memory is passed.
    unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
}
